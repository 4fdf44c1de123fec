// The bridge of queue_invoke and its variants: one heap context per item carries the
// user's callables, the stored arguments and the item's outcome through
// pysched_item.user_data, together with what resolves the future (a std::promise for
// queue_invoke, the shared state of a pyscheduler::Future for queue_invoke_future);
// static noexcept trampolines run them on the core's worker threads. No C++ exception
// ever unwinds into Rust: each trampoline catches everything and parks it in the
// context's outcome, which `drop` hands to the future.
#ifndef PYSCHEDULER_DETAIL_QUEUED_CALL_HPP
#define PYSCHEDULER_DETAIL_QUEUED_CALL_HPP

#include <pybind11/pybind11.h>

#include <pyscheduler.h>
#include <pyscheduler/detail/core_alloc.hpp>
#include <pyscheduler/detail/future_state.hpp>
#include <pyscheduler/detail/invoke_traits.hpp>
#include <pyscheduler/detail/python_error.hpp>
#include <pyscheduler/detail/tsan.hpp>
#include <pyscheduler/error.hpp>

#include <cassert>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <future>
#include <optional>
#include <stdexcept>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>

namespace pyscheduler::pysched_detail {

/// Marks "no GIL-free stage": commit receives the queued arguments itself.
struct no_stage {};

/// What the GIL-free stage yields, stored by value until commit takes it.
template <typename StageFwd, typename... Stored>
struct stage_traits {
  static_assert(invocable_with_stored_v<StageFwd, Stored...>,
                "pyscheduler: the stage function must be callable with the queued arguments");
  using result = stored_invoke_result_t<StageFwd, Stored...>;
  static constexpr bool returns_void = std::is_void_v<result>;
  using value = std::conditional_t<returns_void, std::monostate, std::decay_t<result>>;
};
template <typename... Stored>
struct stage_traits<no_stage, Stored...> {
  static constexpr bool returns_void = false;
  using value = std::monostate;
};

/// How the std::future of queue_invoke is fulfilled: the callback's outcome waits in
/// the context until the core's `drop`, which sets the promise and frees the context.
/// The core calls `drop` after the batch's GIL hold (for items without a C future
/// handle), so set_value (a futex system call per item in glibc's pthread_once, and
/// the waiter's wake-up) does not run while the GIL is held.
template <typename R>
class promise_completion {
 public:
  std::future<R> get_future() { return promise_.get_future(); }

 protected:
  // The shared state (and its result) come from the same allocator as the context.
  template <typename Self>
  explicit promise_completion(std::type_identity<Self>) : promise_(std::allocator_arg, core_allocator<char>{}) {}

  /// PRECONDITION: the outcome is stored and no Python reference is left. Frees `self`.
  template <typename Self>
  static void finish(Self* self) noexcept {
    self->outcome_.fulfil(self->promise_);
    delete self;
  }

  outcome<R> outcome_;

 private:
  std::promise<R> promise_;
};

/// How a pyscheduler::Future is fulfilled: the context is its shared state; `drop`
/// publishes the outcome and lets go of the core's ownership (see future_state).
template <typename R>
class future_completion : public future_state<R> {
 protected:
  template <typename Self>
  explicit future_completion(std::type_identity<Self>) noexcept
      : future_state<R>([](future_state<R>* state) noexcept { delete static_cast<Self*>(state); }) {}

  template <typename Self>
  static void finish(Self* self) noexcept {
    self->publish_and_release();  // may free `self`
  }
};

/// The callback's result type, which names the future's type.
template <typename CallbackFwd>
using callback_result_t = std::invoke_result_t<CallbackFwd, pybind11::object>;

/// One queued item. `CommitFwd`, `CallbackFwd` and `StageFwd` are the forwarding
/// reference types the user passed (`F&` for lvalues, `F` for rvalues); the context
/// stores decayed copies and calls them with the value category the user passed, so
/// the result types are exactly those of the public signatures. `Completion` is
/// promise_completion (std::future) or future_completion (pyscheduler::Future).
///
/// Lifetime: the user's callables, the stored arguments and the stage's result (the
/// payload: all that may own Python references) are released as soon as the item's
/// callback has run, while the GIL is still held; the outcome is handed over in `drop`,
/// which needs no GIL unless a failure path left the payload alive.
template <template <typename> class Completion, typename CommitFwd, typename CallbackFwd, typename StageFwd,
          typename... Stored>
class queued_call final : public Completion<callback_result_t<CallbackFwd>> {
  using Commit = std::decay_t<CommitFwd>;
  using Callback = std::decay_t<CallbackFwd>;
  using Stage = std::decay_t<StageFwd>;
  static constexpr bool has_stage = !std::is_same_v<Stage, no_stage>;
  using Staged = typename stage_traits<StageFwd, Stored...>::value;
  static constexpr bool stage_returns_void = stage_traits<StageFwd, Stored...>::returns_void;

  static constexpr bool commit_ok = [] {
    if constexpr (!has_stage) {
      return invocable_with_stored_v<CommitFwd, Stored...>;
    } else if constexpr (stage_returns_void) {
      return std::is_invocable_v<CommitFwd>;
    } else {
      return std::is_invocable_v<CommitFwd, Staged&&>;
    }
  }();
  static_assert(commit_ok,
                "pyscheduler: commit must be callable with the queued arguments (or, for "
                "queue_invoke_staged, with the stage function's result)");

  static auto commit_result_probe() {
    if constexpr (!has_stage) {
      return std::type_identity<stored_invoke_result_t<CommitFwd, Stored...>>{};
    } else if constexpr (stage_returns_void) {
      return std::type_identity<std::invoke_result_t<CommitFwd>>{};
    } else {
      return std::type_identity<std::invoke_result_t<CommitFwd, Staged&&>>{};
    }
  }
  using CommitResult = typename decltype(commit_result_probe())::type;
  static_assert(std::is_convertible_v<CommitResult, pybind11::object>,
                "pyscheduler: commit must return a pybind11::object (build it with "
                "pybind11::cast(...) or pybind11::make_tuple(...))");

 public:
  using result_type = callback_result_t<CallbackFwd>;
  static_assert(!std::is_base_of_v<pybind11::object, std::remove_cv_t<std::remove_reference_t<result_type>>>,
                "pyscheduler: a queue_invoke callback must not return a pybind11::object: the future "
                "is read without the GIL. Convert the result inside the callback (obj.cast<T>()), "
                "or return obj.release().ptr() and manage the reference yourself");

  template <typename C, typename Cb, typename S, typename... A>
  queued_call(C&& commit, Cb&& callback, S&& stage, A&&... args)
      : Completion<result_type>(std::type_identity<queued_call>{}),
        payload_(std::in_place, std::forward<C>(commit), std::forward<Cb>(callback), std::forward<S>(stage),
                 std::forward<A>(args)...) {}
  ~queued_call() = default;

  // One allocation per item; see core_alloc.hpp.
  static void* operator new(std::size_t size) { return core_allocate(size, alignof(queued_call)); }
  static void operator delete(void* p, std::size_t size) noexcept { core_free(p, size, alignof(queued_call)); }

  /// The C item for this context; it takes ownership of the context once queued.
  pysched_item item(std::uint64_t timeout_us) noexcept {
    pysched_item item{};
    item.user_data = this;
    item.commit = &queued_call::commit_trampoline;
    item.prepare = has_stage ? &queued_call::prepare_trampoline : nullptr;
    item.complete = &queued_call::complete_trampoline;
    item.drop = &queued_call::drop_trampoline;
    item.timeout_us = timeout_us;
    return item;
  }

 private:
  // The stage's result, handed to commit (empty unless there is a stage).
  using StagedSlot = std::conditional_t<has_stage, std::optional<Staged>, std::monostate>;

  /// Everything the user handed over, released as soon as it is no longer needed.
  struct payload {
    template <typename C, typename Cb, typename S, typename... A>
    payload(C&& c, Cb&& cb, S&& s, A&&... a)
        : commit(std::forward<C>(c)),
          callback(std::forward<Cb>(cb)),
          stage(std::forward<S>(s)),
          args(std::forward<A>(a)...) {}
    [[no_unique_address]] Commit commit;
    [[no_unique_address]] Callback callback;
    [[no_unique_address]] Stage stage;
    std::tuple<Stored...> args;
    [[no_unique_address]] StagedSlot staged;
  };

  // Whether releasing the payload may release Python references (a captured or stored
  // pybind11::object, say). Trivially destructible members cannot own any.
  static constexpr bool may_own_python = !std::is_trivially_destructible_v<payload>;

  pybind11::object run_commit() {
    payload& p = *payload_;
    if constexpr (!has_stage) {
      return invoke_with_stored(static_cast<CommitFwd&&>(p.commit), p.args);
    } else if constexpr (stage_returns_void) {
      return std::invoke(static_cast<CommitFwd&&>(p.commit));
    } else {
      assert(p.staged.has_value());
      return std::invoke(static_cast<CommitFwd&&>(p.commit), std::move(*p.staged));
    }
  }

  // The payload goes now if that is safe here: always when it cannot own Python
  // references, else only with the GIL held (drop_trampoline takes it otherwise).
  void release_payload_if_safe() noexcept {
    if (!may_own_python || gil_held()) {
      payload_.reset();
    }
  }

  // PRECONDITION: the GIL is NOT needed; runs on a pool thread without it.
  static int prepare_trampoline(void* user_data) noexcept {
    auto* self = static_cast<queued_call*>(user_data);
    tsan_acquire(self);
    int rc = 0;
    if constexpr (has_stage) {
      payload& p = *self->payload_;
      try {
        if constexpr (stage_returns_void) {
          invoke_with_stored(static_cast<StageFwd&&>(p.stage), p.args);
          p.staged.emplace();
        } else {
          p.staged.emplace(invoke_with_stored(static_cast<StageFwd&&>(p.stage), p.args));
        }
      } catch (...) {
        // Reported later through complete_trampoline, which keeps this exception.
        self->outcome_.set_error(std::current_exception());
        rc = 1;
      }
    }
    tsan_release(self);
    return rc;
  }

  // PRECONDITION: the GIL is held (a worker thread, right before the batch's call).
  static PyObject* commit_trampoline(void* user_data) noexcept {
    auto* self = static_cast<queued_call*>(user_data);
    tsan_acquire(self);
    assert(gil_held());
    PyObject* out = nullptr;
    try {
      pybind11::object obj = self->run_commit();
      if (!obj) {
        throw std::logic_error("pyscheduler: commit returned a null pybind11::object");
      }
      out = obj.release().ptr();
    } catch (...) {
      self->outcome_.set_error(capture_current_exception("commit raised", ErrorKind::Commit));
      // The core expects an exception set with NULL; the future gets the stored one.
      PyErr_SetString(PyExc_RuntimeError, "pyscheduler: the C++ commit function threw");
    }
    tsan_release(self);
    return out;
  }

  // On success: a worker thread, the GIL held, `result` borrowed. On failure: any
  // thread, GIL or not; `error` borrowed. Stores the outcome; `drop` hands it over.
  static int complete_trampoline(void* user_data, PyObject* result, const pysched_error* error) noexcept {
    auto* self = static_cast<queued_call*>(user_data);
    tsan_acquire(self);
    int rc = 0;
    if (result != nullptr) {
      assert(gil_held());
      try {
        self->outcome_.set_value_from(static_cast<CallbackFwd&&>(self->payload_->callback),
                                      pybind11::reinterpret_borrow<pybind11::object>(result));
      } catch (...) {
        self->outcome_.set_error(capture_current_exception("callback raised", ErrorKind::Callback));
        rc = 1;  // counted as failed by the core
      }
      self->payload_.reset();  // the GIL is held
    } else {
      // A commit or stage that threw stored its own exception, not the core's summary.
      if (self->outcome_.empty()) {
        self->outcome_.set_error(exception_for(error));
      }
      self->release_payload_if_safe();
    }
    tsan_release(self);
    return rc;
  }

  // Called exactly once, after complete. On the success path the core calls it after
  // the batch's GIL hold, without the GIL (right after complete, with the GIL, for an
  // item with a C future handle, i.e. queue_invoke_cancellable's, and in cores before
  // 08bd9f2); failure paths (cancel, deadline, rejection, shutdown) may come with or
  // without it. Correct either way: it takes the GIL only if the payload is still alive.
  static void drop_trampoline(void* user_data) noexcept {
    auto* self = static_cast<queued_call*>(user_data);
    tsan_acquire(self);
    if (self->outcome_.empty()) {
      self->outcome_.set_error(outcome<result_type>::lost());  // complete never ran
    }
    if constexpr (may_own_python) {
      if (self->payload_.has_value()) {
        if (gil_held()) {
          self->payload_.reset();
        } else {
          pybind11::gil_scoped_acquire gil;
          self->payload_.reset();
        }
      }
    } else {
      self->payload_.reset();
    }
    queued_call::finish(self);
  }

  std::optional<payload> payload_;
};

}  // namespace pyscheduler::pysched_detail

#endif  // PYSCHEDULER_DETAIL_QUEUED_CALL_HPP
