// The shared state behind pyscheduler::Future<R>: part of the item's one heap context,
// owned together by the core (until its `drop` callback) and by the Future. One atomic
// word carries both the readiness and the two ownerships, so that the common cases cost
// one atomic read-modify-write per side and no system call:
//
//   worker (drop):   the outcome was stored in `complete`; publish sets READY (and, when
//                    nobody waits, CORE_DONE in the same step); only if a waiter
//                    announced itself does it notify, then let go with a second step.
//   Future:          get()/wait() spin briefly, then announce WAITER and block with C++20
//                    std::atomic::wait; timed waits announce TIMED_WAITER and block on a
//                    futex with a deadline (C++20 has no timed atomic wait).
//   whoever lets go last destroys the context.
#ifndef PYSCHEDULER_DETAIL_FUTURE_STATE_HPP
#define PYSCHEDULER_DETAIL_FUTURE_STATE_HPP

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <stdexcept>
#include <thread>
#include <type_traits>
#include <utility>
#include <variant>

#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <ctime>
#endif

namespace pyscheduler::pysched_detail {

/// The value of a void callback.
struct void_result {};

/// What one item ended with: nothing yet, the callback's value (a pointer for a
/// reference, void_result for void), or an exception. Never touches Python.
template <typename R>
class outcome {
  static_assert(!std::is_rvalue_reference_v<R>, "pyscheduler: a callback must not return an rvalue reference");

 public:
  using value_type = std::conditional_t<std::is_void_v<R>, void_result,
                                        std::conditional_t<std::is_reference_v<R>, std::remove_reference_t<R>*, R>>;

  bool empty() const noexcept { return v_.index() == 0; }

  /// Stores what `f(args...)` returns. An exception from `f` propagates and leaves the
  /// outcome as it was (or valueless, if moving the value threw: set_error mends it).
  template <typename F, typename... Args>
  void set_value_from(F&& f, Args&&... args) {
    if constexpr (std::is_void_v<R>) {
      std::invoke(std::forward<F>(f), std::forward<Args>(args)...);
      v_.template emplace<1>();
    } else if constexpr (std::is_reference_v<R>) {
      v_.template emplace<1>(std::addressof(std::invoke(std::forward<F>(f), std::forward<Args>(args)...)));
    } else {
      v_.template emplace<1>(std::invoke(std::forward<F>(f), std::forward<Args>(args)...));
    }
  }

  void set_error(std::exception_ptr error) noexcept { v_.template emplace<2>(std::move(error)); }

  /// Moves the value out, or rethrows the exception. PRECONDITION: !empty(), called once.
  R take() {
    if (v_.index() == 2) {
      std::rethrow_exception(std::get<2>(v_));
    }
    if constexpr (std::is_void_v<R>) {
      return;
    } else if constexpr (std::is_reference_v<R>) {
      return *std::get<1>(v_);
    } else {
      return std::move(std::get<1>(v_));
    }
  }

  /// Hands the outcome to a std::promise<R>. Never throws: a promise that refuses (it
  /// cannot, with one owner) is left as it is.
  template <typename Promise>
  void fulfil(Promise& promise) noexcept {
    try {
      if (v_.index() == 1) {
        if constexpr (std::is_void_v<R>) {
          promise.set_value();
        } else if constexpr (std::is_reference_v<R>) {
          promise.set_value(*std::get<1>(v_));
        } else {
          promise.set_value(std::move(std::get<1>(v_)));
        }
        return;
      }
      promise.set_exception(v_.index() == 2 ? std::get<2>(v_) : lost());
    } catch (...) {
      try {
        promise.set_exception(std::current_exception());  // moving the value threw
      } catch (...) {
      }
    }
  }

  /// For an outcome that was never stored (the core's contract rules it out).
  static std::exception_ptr lost() noexcept {
    return std::make_exception_ptr(std::logic_error("pyscheduler: an item was released without an outcome"));
  }

 private:
  std::variant<std::monostate, value_type, std::exception_ptr> v_;
};

#if defined(__linux__)
/// Blocks while `*word == expected`, until woken or until `deadline` (CLOCK_MONOTONIC,
/// which is what steady_clock reads on Linux). Spurious returns are allowed.
inline void futex_wait_until(const std::atomic<std::uint32_t>* word, std::uint32_t expected,
                             std::chrono::steady_clock::time_point deadline) noexcept {
  const auto since_epoch = deadline.time_since_epoch();
  const auto secs = std::chrono::duration_cast<std::chrono::seconds>(since_epoch);
  timespec ts{};
  ts.tv_sec = static_cast<time_t>(secs.count());
  ts.tv_nsec = static_cast<long>(std::chrono::duration_cast<std::chrono::nanoseconds>(since_epoch - secs).count());
  (void)syscall(SYS_futex, static_cast<const void*>(word), FUTEX_WAIT_BITSET | FUTEX_PRIVATE_FLAG, expected, &ts,
                nullptr, FUTEX_BITSET_MATCH_ANY);
}

inline void futex_wake_all(const std::atomic<std::uint32_t>* word) noexcept {
  (void)syscall(SYS_futex, static_cast<const void*>(word), FUTEX_WAKE | FUTEX_PRIVATE_FLAG, INT_MAX);
}
#endif

inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

/// The Future's view of one item's context. The derived context (queued_call) passes
/// the function that destroys and frees it; whichever owner lets go last calls it.
template <typename R>
class future_state {
 public:
  using destroy_fn = void (*)(future_state*) noexcept;

  explicit future_state(destroy_fn destroy) noexcept : destroy_(destroy) {}
  future_state(const future_state&) = delete;
  future_state& operator=(const future_state&) = delete;

  // ---- the worker's side ------------------------------------------------------------

  /// PRECONDITION: the outcome is stored and nothing that may own Python references is
  /// left in the context. Makes the outcome visible, wakes a waiter (only if one
  /// announced itself) and lets go of the core's ownership. Called exactly once.
  void publish_and_release() noexcept {
    std::uint32_t old = state_.load(std::memory_order_relaxed);
    std::uint32_t next = 0;
    do {
      // Someone may be blocked: stay an owner until notified (the Future may destroy
      // the context as soon as it sees READY).
      const bool must_wake = (old & kWaiters) != 0 && (old & kFutureDone) == 0;
      next = must_wake ? (old | kReady) : (old | kReady | kCoreDone);
    } while (!state_.compare_exchange_weak(old, next, std::memory_order_acq_rel, std::memory_order_relaxed));
    if ((next & kCoreDone) == 0) {
      if (old & kWaiter) {
        state_.notify_all();
      }
#if defined(__linux__)
      if (old & kTimedWaiter) {
        futex_wake_all(&state_);
      }
#endif
      old = state_.fetch_or(kCoreDone, std::memory_order_acq_rel);
    }
    if (old & kFutureDone) {
      destroy_(this);
    }
  }

  // ---- the Future's side ------------------------------------------------------------

  bool ready() const noexcept { return (state_.load(std::memory_order_acquire) & kReady) != 0; }

  /// Blocks until the outcome is published.
  void wait() noexcept {
    std::uint32_t s = spin_for_ready();
    if (s & kReady) {
      return;
    }
    if ((s & kWaiter) == 0) {
      s = state_.fetch_or(kWaiter, std::memory_order_acq_rel) | kWaiter;
    }
    while ((s & kReady) == 0) {
      state_.wait(s, std::memory_order_acquire);
      s = state_.load(std::memory_order_acquire);
    }
  }

  /// Blocks until the outcome is published (true) or `deadline` passes (false).
  bool wait_until(std::chrono::steady_clock::time_point deadline) noexcept {
    std::uint32_t s = state_.load(std::memory_order_acquire);
    if (s & kReady) {
      return true;
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      return false;
    }
    s = spin_for_ready();
    if (s & kReady) {
      return true;
    }
#if defined(__linux__)
    if ((s & kTimedWaiter) == 0) {
      s = state_.fetch_or(kTimedWaiter, std::memory_order_acq_rel) | kTimedWaiter;
    }
    while ((s & kReady) == 0) {
      if (std::chrono::steady_clock::now() >= deadline) {
        return false;
      }
      futex_wait_until(&state_, s, deadline);
      s = state_.load(std::memory_order_acquire);
    }
    return true;
#else
    // No portable timed atomic wait: poll with a growing sleep (at most 1 ms).
    auto nap = std::chrono::microseconds(1);
    while (!ready()) {
      const auto now = std::chrono::steady_clock::now();
      if (now >= deadline) {
        return false;
      }
      std::this_thread::sleep_for(std::min<std::chrono::steady_clock::duration>(nap, deadline - now));
      nap = std::min(nap * 2, std::chrono::microseconds(1000));
    }
    return true;
#endif
  }

  /// The stored outcome. PRECONDITION for reading it: ready() was observed.
  outcome<R>& result() noexcept { return outcome_; }

  /// Lets go of the Future's ownership; destroys the context if the core already did.
  void release_future() noexcept {
    // Once CORE_DONE is set the core never touches the context again: no need to say so.
    std::uint32_t s = state_.load(std::memory_order_acquire);
    if ((s & kCoreDone) == 0) {
      s = state_.fetch_or(kFutureDone, std::memory_order_acq_rel);
    }
    if (s & kCoreDone) {
      destroy_(this);
    }
  }

 protected:
  ~future_state() = default;

  outcome<R> outcome_;

 private:
  static constexpr std::uint32_t kReady = 1;        // the outcome is stored and visible
  static constexpr std::uint32_t kWaiter = 2;       // someone blocks in state_.wait
  static constexpr std::uint32_t kTimedWaiter = 4;  // someone blocks on the futex with a deadline
  static constexpr std::uint32_t kCoreDone = 8;     // the core let go (its drop ran)
  static constexpr std::uint32_t kFutureDone = 16;  // the Future let go
  static constexpr std::uint32_t kWaiters = kWaiter | kTimedWaiter;
  // Polls before announcing a waiter: an item about to be published costs no system
  // call on either side. ~1-2 us on current x86 cores.
  static constexpr int kSpins = 64;

  std::uint32_t spin_for_ready() const noexcept {
    std::uint32_t s = state_.load(std::memory_order_acquire);
    for (int i = 0; i < kSpins && (s & kReady) == 0; ++i) {
      cpu_relax();
      s = state_.load(std::memory_order_acquire);
    }
    return s;
  }

  static_assert(std::atomic<std::uint32_t>::is_always_lock_free && sizeof(std::atomic<std::uint32_t>) == 4,
                "the state word is waited on as a futex");

  std::atomic<std::uint32_t> state_{0};
  destroy_fn destroy_;
};

}  // namespace pyscheduler::pysched_detail

#endif  // PYSCHEDULER_DETAIL_FUTURE_STATE_HPP
