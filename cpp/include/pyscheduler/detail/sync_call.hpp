// Synchronous invoke: the arguments are converted, the function called and its result
// handed to the caller's continuation inside ONE pysched_handler_with_function call,
// which attaches this thread through a persistent Python thread state (no thread-state
// allocation per call, unlike PyGILState_Ensure/gil_scoped_acquire on a fresh thread).
// Everything lives on the caller's stack and runs on the caller's thread, so unlike
// queue_invoke there is no cross-thread hand-off for TSan to be told about.
#ifndef PYSCHEDULER_DETAIL_SYNC_CALL_HPP
#define PYSCHEDULER_DETAIL_SYNC_CALL_HPP

#include <pybind11/pybind11.h>

#include <pyscheduler.h>
#include <pyscheduler/detail/python_error.hpp>
#include <pyscheduler/error.hpp>

#include <cassert>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

namespace pyscheduler::pysched_detail {

/// Holds the continuation's value until the C call returns: R by value, a pointer for
/// references, nothing for void.
template <typename R>
struct result_slot {
  std::optional<R> value;
  template <typename... A>
  void set(A&&... a) {
    value.emplace(std::forward<A>(a)...);
  }
  R take() { return std::move(*value); }
};
template <typename R>
struct result_slot<R&> {
  R* value = nullptr;
  void set(R& r) noexcept { value = std::addressof(r); }
  R& take() noexcept { return *value; }
};
template <>
struct result_slot<void> {
  void take() noexcept {}
};

/// Calls the handler's function with `args` and returns `on_result(result)`.
/// `OnResultFwd` is the forwarding type of the continuation, `Args` those of the arguments.
template <typename OnResultFwd, typename... Args>
class sync_call {
 public:
  using result_type = std::invoke_result_t<OnResultFwd, pybind11::object>;

  sync_call(const pysched_handler* handler, OnResultFwd&& on_result, Args&&... args) noexcept
      : handler_(handler), on_result_(std::forward<OnResultFwd>(on_result)), args_(std::forward<Args>(args)...) {}

  result_type run() && {
    pysched_error* error = nullptr;
    const pysched_status status = pysched_handler_with_function(handler_, &sync_call::trampoline, this, &error);
    if (user_error_) {
      pysched_error_free(error);
      std::rethrow_exception(user_error_);
    }
    check(status, error);
    return slot_.take();
  }

 private:
  // PRECONDITION: the GIL is held (inside pysched_handler_with_function, same thread).
  static int trampoline(void* user_data, PyObject* function) noexcept {
    auto* self = static_cast<sync_call*>(user_data);
    assert(gil_held());
    pybind11::object result;
    try {
      result = std::apply(
          [function](Args&&... a) { return pybind11::handle(function)(std::forward<Args>(a)...); },
          std::move(self->args_));
    } catch (...) {
      const std::string context = std::string(pysched_handler_name(self->handler_)) + " raised";
      self->user_error_ = capture_current_exception(context.c_str(), ErrorKind::PythonException);
      return 1;
    }
    // The argument tuple is gone: a destructor it ran (a capsule's, once the function
    // consumed it) may have left an error set, which must not reach the caster in
    // on_result (pybind11 asserts on it). The core reports it as unraisable and clears it.
    (void)pysched_handler_report_stray_error(self->handler_, "a destructor run as the call's arguments were released",
                                             nullptr);
    try {
      if constexpr (std::is_void_v<result_type>) {
        std::invoke(static_cast<OnResultFwd&&>(self->on_result_), std::move(result));
      } else {
        self->slot_.set(std::invoke(static_cast<OnResultFwd&&>(self->on_result_), std::move(result)));
      }
    } catch (...) {
      self->user_error_ = capture_current_exception("callback raised", ErrorKind::Callback);
      return 1;
    }
    return 0;
  }

  const pysched_handler* handler_;
  OnResultFwd&& on_result_;
  std::tuple<Args&&...> args_;
  result_slot<result_type> slot_;
  std::exception_ptr user_error_;
};

}  // namespace pyscheduler::pysched_detail

#endif  // PYSCHEDULER_DETAIL_SYNC_CALL_HPP
