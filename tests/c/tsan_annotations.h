/* ThreadSanitizer annotations for the hand-offs that happen inside the uninstrumented
 * Rust core (shared/NOTES.md): TSan cannot see that an item travels from the thread that
 * queues it to the worker that runs its callbacks, nor that a future or a drain
 * returning means the callbacks are done. The caller states those edges, as the C++
 * wrapper does: release before handing memory over, acquire where it is received.
 * No-ops unless compiled with -fsanitize=thread. */
#ifndef PYSCHED_TEST_TSAN_ANNOTATIONS_H
#define PYSCHED_TEST_TSAN_ANNOTATIONS_H

#if defined(__SANITIZE_THREAD__)
#define PYSCHED_TEST_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define PYSCHED_TEST_TSAN 1
#endif
#endif

#ifdef PYSCHED_TEST_TSAN
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
#define tsan_acquire(addr) __tsan_acquire((void *)(addr))
#define tsan_release(addr) __tsan_release((void *)(addr))
#else
#define tsan_acquire(addr) ((void)(addr))
#define tsan_release(addr) ((void)(addr))
#endif

#endif /* PYSCHED_TEST_TSAN_ANNOTATIONS_H */
