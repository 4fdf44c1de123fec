// The futures of the wrapper's extensions. Future<R>: what queue_invoke_future returns, a
// light future sharing the item's one heap context with the core (no std::promise).
// CancellableFuture<R>: what queue_invoke_cancellable returns, a std::future<R> plus the
// means to cancel its item before it starts.
#ifndef PYSCHEDULER_FUTURE_HPP
#define PYSCHEDULER_FUTURE_HPP

#include <pyscheduler.h>
#include <pyscheduler/detail/future_state.hpp>
#include <pyscheduler/detail/handle.hpp>

#include <chrono>
#include <exception>
#include <future>
#include <utility>

namespace pyscheduler {

namespace pysched_detail {
struct future_access;
}

namespace ext {

/// The future of one item queued with InvokeHandler::queue_invoke_future: the callback's
/// value (R; void for a void callback) or the item's exception, with the same exception
/// types as the std::future of queue_invoke (PythonError, CancelledError, ..., or the
/// exception a commit or callback threw).
///
/// Unlike std::future it costs no allocation of its own and no system call when the
/// item is ready before get() (std::promise::set_value makes one per item on glibc):
/// it shares the item's heap context with the core, and whichever of the two lets go
/// last frees it. The worker publishes the outcome after the callback ran; a waiter
/// spins briefly, then sleeps (C++20 std::atomic::wait), and the worker wakes it only
/// if it announced itself.
///
/// Move-only; like std::future, one thread uses a Future at a time. Destroying it
/// before the item ran is safe (the item still runs; its value is then discarded).
/// An invalid Future (default-constructed, moved-from, or after get()) reports
/// valid() == false and is_ready() == false; wait(), wait_for(), wait_until() and get()
/// on it throw std::future_error with std::future_errc::no_state.
template <typename R>
class Future {
 public:
  Future() noexcept = default;
  Future(Future&& other) noexcept : state_(std::exchange(other.state_, nullptr)) {}
  Future& operator=(Future&& other) noexcept {
    if (this != &other) {
      reset();
      state_ = std::exchange(other.state_, nullptr);
    }
    return *this;
  }
  Future(const Future&) = delete;
  Future& operator=(const Future&) = delete;
  /// Never blocks: the item keeps running if it has not finished.
  ~Future() { reset(); }

  /// Whether this Future refers to an item (false once get() returned or threw).
  bool valid() const noexcept { return state_ != nullptr; }

  /// Whether the item has finished (value or exception). Never blocks.
  bool is_ready() const noexcept { return state_ != nullptr && state_->ready(); }

  /// Blocks until the item has finished.
  void wait() const { checked()->wait(); }

  /// Blocks until the item has finished or `timeout` has passed. Never returns
  /// std::future_status::deferred.
  template <typename Rep, typename Period>
  std::future_status wait_for(const std::chrono::duration<Rep, Period>& timeout) const {
    auto* state = checked();
    if (timeout <= timeout.zero()) {
      return state->ready() ? std::future_status::ready : std::future_status::timeout;
    }
    return state->wait_until(steady_deadline(timeout)) ? std::future_status::ready : std::future_status::timeout;
  }

  /// Blocks until the item has finished or `deadline` has passed on `Clock`.
  template <typename Clock, typename Duration>
  std::future_status wait_until(const std::chrono::time_point<Clock, Duration>& deadline) const {
    auto* state = checked();
    if constexpr (std::is_same_v<Clock, std::chrono::steady_clock>) {
      return state->wait_until(std::chrono::time_point_cast<std::chrono::steady_clock::duration>(deadline))
                 ? std::future_status::ready
                 : std::future_status::timeout;
    } else {
      // Other clocks may jump: wait in steps measured on steady_clock, re-reading Clock.
      for (;;) {
        const auto left = deadline - Clock::now();
        if (left <= left.zero()) {
          return state->ready() ? std::future_status::ready : std::future_status::timeout;
        }
        if (state->wait_until(steady_deadline(left))) {
          return std::future_status::ready;
        }
      }
    }
  }

  /// Blocks until the item has finished, then returns the callback's value or throws
  /// the item's exception. The Future is invalid afterwards (valid() == false).
  R get() {
    auto* state = checked();
    state->wait();
    // Let go of the context whatever happens; a value is moved out first.
    struct release_on_exit {
      Future* self;
      ~release_on_exit() { self->reset(); }
    } release{this};
    return state->result().take();
  }

 private:
  friend struct pysched_detail::future_access;
  explicit Future(pysched_detail::future_state<R>* state) noexcept : state_(state) {}

  pysched_detail::future_state<R>* checked() const {
    if (state_ == nullptr) {
      throw std::future_error(std::future_errc::no_state);
    }
    return state_;
  }

  void reset() noexcept {
    if (auto* state = std::exchange(state_, nullptr)) {
      state->release_future();
    }
  }

  template <typename Rep, typename Period>
  static std::chrono::steady_clock::time_point steady_deadline(const std::chrono::duration<Rep, Period>& timeout) {
    const auto now = std::chrono::steady_clock::now();
    // Saturate: a deadline past the clock's range means "never".
    if (std::chrono::duration<double>(timeout) >=
        std::chrono::duration<double>(std::chrono::steady_clock::time_point::max() - now)) {
      return std::chrono::steady_clock::time_point::max();
    }
    return now + std::chrono::ceil<std::chrono::steady_clock::duration>(timeout);
  }

  pysched_detail::future_state<R>* state_ = nullptr;
};

}  // namespace ext

namespace pysched_detail {
/// How InvokeHandler hands a new item's context to its Future (one owner of two).
struct future_access {
  template <typename R>
  static ext::Future<R> adopt(future_state<R>* state) noexcept {
    return ext::Future<R>(state);
  }
};
}  // namespace pysched_detail

namespace ext {

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
  pysched_detail::future_handle item_;
};

}  // namespace ext
}  // namespace pyscheduler

#endif  // PYSCHEDULER_FUTURE_HPP
