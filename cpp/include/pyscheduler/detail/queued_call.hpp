// The std::future bridge of queue_invoke: one heap context per item carries the
// promise, the user's callables and the stored arguments through pysched_item.user_data;
// static noexcept trampolines run them on the core's worker threads. No C++ exception
// ever unwinds into Rust: each trampoline catches everything and parks it in the
// promise (or in the context, for a commit/stage failure reported later by the core).
#ifndef PYSCHEDULER_DETAIL_QUEUED_CALL_HPP
#define PYSCHEDULER_DETAIL_QUEUED_CALL_HPP

#include <pybind11/pybind11.h>

#include <pyscheduler.h>
#include <pyscheduler/detail/invoke_traits.hpp>
#include <pyscheduler/detail/python_error.hpp>
#include <pyscheduler/detail/tsan.hpp>
#include <pyscheduler/error.hpp>

#include <cassert>
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

namespace pyscheduler::detail {

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

/// One queued item. `CommitFwd`, `CallbackFwd` and `StageFwd` are the forwarding
/// reference types the user passed (`F&` for lvalues, `F` for rvalues); the context
/// stores decayed copies and calls them with the value category the user passed, so
/// the result types are exactly those of the public signatures.
template <typename CommitFwd, typename CallbackFwd, typename StageFwd, typename... Stored>
class queued_call {
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
  using result_type = std::invoke_result_t<CallbackFwd, pybind11::object>;
  static_assert(!std::is_base_of_v<pybind11::object, std::remove_cv_t<std::remove_reference_t<result_type>>>,
                "pyscheduler: a queue_invoke callback must not return a pybind11::object: the future "
                "is read without the GIL. Convert the result inside the callback (obj.cast<T>()), "
                "or return obj.release().ptr() and manage the reference yourself");

  template <typename C, typename Cb, typename S, typename... A>
  queued_call(C&& commit, Cb&& callback, S&& stage, A&&... args)
      : commit_(std::forward<C>(commit)),
        callback_(std::forward<Cb>(callback)),
        stage_(std::forward<S>(stage)),
        args_(std::forward<A>(args)...) {}

  std::future<result_type> get_future() { return promise_.get_future(); }

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
  // Whether destroying the context may release Python references (a captured or
  // stored pybind11::object, say). Trivially destructible members cannot own any.
  static constexpr bool may_own_python =
      !(std::is_trivially_destructible_v<Commit> && std::is_trivially_destructible_v<Callback> &&
        std::is_trivially_destructible_v<Stage> && std::is_trivially_destructible_v<Staged> &&
        (std::is_trivially_destructible_v<Stored> && ...));

  pybind11::object run_commit() {
    if constexpr (!has_stage) {
      return invoke_with_stored(static_cast<CommitFwd&&>(commit_), args_);
    } else if constexpr (stage_returns_void) {
      return std::invoke(static_cast<CommitFwd&&>(commit_));
    } else {
      assert(staged_.has_value());
      return std::invoke(static_cast<CommitFwd&&>(commit_), std::move(*staged_));
    }
  }

  void fail(std::exception_ptr error) noexcept {
    try {
      promise_.set_exception(std::move(error));
    } catch (...) {
      // Already satisfied: the core's state machine rules this out.
    }
  }

  // PRECONDITION: the GIL is NOT needed; runs on a pool thread without it.
  static int prepare_trampoline(void* user_data) noexcept {
    auto* self = static_cast<queued_call*>(user_data);
    tsan_acquire(self);
    int rc = 0;
    if constexpr (has_stage) {
      try {
        if constexpr (stage_returns_void) {
          invoke_with_stored(static_cast<StageFwd&&>(self->stage_), self->args_);
          self->staged_.emplace();
        } else {
          self->staged_.emplace(invoke_with_stored(static_cast<StageFwd&&>(self->stage_), self->args_));
        }
      } catch (...) {
        self->user_error_ = std::current_exception();
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
      self->user_error_ = capture_current_exception("commit raised", ErrorKind::Commit);
      // The core expects an exception set with NULL; the future gets user_error_.
      PyErr_SetString(PyExc_RuntimeError, "pyscheduler: the C++ commit function threw");
    }
    tsan_release(self);
    return out;
  }

  // On success: a worker thread, the GIL held, `result` borrowed. On failure: any
  // thread, GIL or not; `error` borrowed.
  static int complete_trampoline(void* user_data, PyObject* result, const pysched_error* error) noexcept {
    auto* self = static_cast<queued_call*>(user_data);
    tsan_acquire(self);
    int rc = 0;
    if (result != nullptr) {
      assert(gil_held());
      try {
        auto obj = pybind11::reinterpret_borrow<pybind11::object>(result);
        if constexpr (std::is_void_v<result_type>) {
          std::invoke(static_cast<CallbackFwd&&>(self->callback_), std::move(obj));
          self->promise_.set_value();
        } else {
          self->promise_.set_value(std::invoke(static_cast<CallbackFwd&&>(self->callback_), std::move(obj)));
        }
      } catch (...) {
        self->fail(capture_current_exception("callback raised", ErrorKind::Callback));
        rc = 1;  // counted as failed by the core
      }
    } else {
      // A commit or stage that threw reports its own exception, not the core's summary.
      self->fail(self->user_error_ ? self->user_error_ : exception_for(error));
    }
    tsan_release(self);
    return rc;
  }

  // Called exactly once, last. The GIL is held on the success path; on failure paths
  // (cancel, deadline, rejection, shutdown) it may not be.
  static void drop_trampoline(void* user_data) noexcept {
    auto* self = static_cast<queued_call*>(user_data);
    tsan_acquire(self);
    if constexpr (may_own_python) {
      if (!gil_held()) {
        pybind11::gil_scoped_acquire gil;
        delete self;
        return;
      }
    }
    delete self;
  }

  std::promise<result_type> promise_;
  [[no_unique_address]] Commit commit_;
  [[no_unique_address]] Callback callback_;
  [[no_unique_address]] Stage stage_;
  std::tuple<Stored...> args_;
  // The stage's result, handed to commit (has_stage only).
  std::optional<Staged> staged_;
  // The exception of a commit or stage that threw; set on a worker before the core
  // reports the failure to complete_trampoline (same item, ordered by the core).
  std::exception_ptr user_error_;
};

}  // namespace pyscheduler::detail

#endif  // PYSCHEDULER_DETAIL_QUEUED_CALL_HPP
