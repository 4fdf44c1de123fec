// CancellableFuture<R>: what queue_invoke_cancellable returns, a std::future<R> plus the
// means to cancel its item before it starts.
#ifndef PYSCHEDULER_FUTURE_HPP
#define PYSCHEDULER_FUTURE_HPP

#include <pyscheduler.h>
#include <pyscheduler/detail/handle.hpp>

#include <chrono>
#include <future>
#include <utility>

namespace pyscheduler {

template <typename R>
class CancellableFuture {
 public:
  CancellableFuture() noexcept = default;
  CancellableFuture(std::future<R> future, pysched_future* item) noexcept : future_(std::move(future)), item_(item) {}

  /// Cancels the item if it has not started yet: its future then throws
  /// CancelledError, and its commit and callback never run. Returns true if this call
  /// cancelled it; false if it had already started or finished (it then completes
  /// normally) or the item was refused when queued.
  /// Thread-safe. Never blocks on Python.
  bool cancel() noexcept { return pysched_future_cancel(item_.get()); }

  /// Whether the item has finished (value or error). Never blocks.
  bool is_ready() const noexcept {
    return future_.valid() && future_.wait_for(std::chrono::seconds(0)) == std::future_status::ready;
  }

  std::future<R>& future() noexcept { return future_; }
  const std::future<R>& future() const noexcept { return future_; }
  bool valid() const noexcept { return future_.valid(); }
  void wait() const { future_.wait(); }
  template <typename Rep, typename Period>
  std::future_status wait_for(const std::chrono::duration<Rep, Period>& timeout) const {
    return future_.wait_for(timeout);
  }
  /// The callback's value, or the item's exception. Call at most once.
  R get() { return future_.get(); }

 private:
  std::future<R> future_;
  // NULL when the item was refused at once (the future already holds the error). The
  // core keeps the item's Python result here until this is freed (taking the GIL briefly).
  detail::future_handle item_;
};

}  // namespace pyscheduler

#endif  // PYSCHEDULER_FUTURE_HPP
