// ThreadSanitizer annotations for hand-offs that happen inside the (uninstrumented) Rust
// core: TSan cannot see the happens-before edge of an item travelling from the thread
// that queues it to the worker that runs its callbacks, so the wrapper states it.
// Programs checked with TSan should also run with ignore_noninstrumented_modules=1 (the
// core's own memset/memmove calls are intercepted but its synchronization is not seen),
// and may see a report on the destruction of a failed item's exception: libstdc++'s
// exception_ptr refcount is not instrumented (tests/cpp/tsan_suppressions.txt).
#ifndef PYSCHEDULER_DETAIL_TSAN_HPP
#define PYSCHEDULER_DETAIL_TSAN_HPP

#if defined(__SANITIZE_THREAD__)
#define PYSCHEDULER_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define PYSCHEDULER_TSAN 1
#endif
#endif

#ifdef PYSCHEDULER_TSAN
extern "C" void __tsan_acquire(void* addr);
extern "C" void __tsan_release(void* addr);
#endif

namespace pyscheduler::pysched_detail {

/// Publishes everything this thread wrote before handing `addr` to another thread.
inline void tsan_release([[maybe_unused]] void* addr) noexcept {
#ifdef PYSCHEDULER_TSAN
  __tsan_release(addr);
#endif
}

/// Sees everything published by the last tsan_release(addr).
inline void tsan_acquire([[maybe_unused]] void* addr) noexcept {
#ifdef PYSCHEDULER_TSAN
  __tsan_acquire(addr);
#endif
}

}  // namespace pyscheduler::pysched_detail

#endif  // PYSCHEDULER_DETAIL_TSAN_HPP
