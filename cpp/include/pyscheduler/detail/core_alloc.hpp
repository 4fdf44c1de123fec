// Memory for the wrapper's per-item allocations (the queued_call context and, on the
// std::future path, the promise's shared state and result): the core's allocator
// through pysched_alloc/pysched_free. Items are allocated by the producer and often
// freed by a worker, a cross-thread pattern that glibc's malloc handles poorly and the
// core's (mimalloc in the default build) well; measured in benches/README.md.
// Define PYSCHEDULER_SYSTEM_ALLOCATOR to use ::operator new/delete instead (allocator
// debugging, interposed allocators).
#ifndef PYSCHEDULER_DETAIL_CORE_ALLOC_HPP
#define PYSCHEDULER_DETAIL_CORE_ALLOC_HPP

#include <pyscheduler.h>

#include <cstddef>
#include <limits>
#include <new>

namespace pyscheduler::pysched_detail {

#ifndef PYSCHEDULER_SYSTEM_ALLOCATOR
inline void* core_allocate(std::size_t size, std::size_t align) {
  void* p = pysched_alloc(size, align);
  if (p == nullptr) {
    throw std::bad_alloc();
  }
  return p;
}

inline void core_free(void* p, std::size_t size, std::size_t align) noexcept { pysched_free(p, size, align); }
#else
inline void* core_allocate(std::size_t size, std::size_t align) {
  return ::operator new(size, std::align_val_t(align));
}

inline void core_free(void* p, std::size_t size, std::size_t align) noexcept {
  ::operator delete(p, size, std::align_val_t(align));
}
#endif

/// A std::allocator-compatible allocator over core_allocate/core_free.
template <typename T>
struct core_allocator {
  using value_type = T;
  core_allocator() noexcept = default;
  template <typename U>
  core_allocator(const core_allocator<U>&) noexcept {}

  T* allocate(std::size_t n) {
    if (n > std::numeric_limits<std::size_t>::max() / sizeof(T)) {
      throw std::bad_array_new_length();
    }
    return static_cast<T*>(core_allocate(n * sizeof(T), alignof(T)));
  }
  void deallocate(T* p, std::size_t n) noexcept { core_free(p, n * sizeof(T), alignof(T)); }

  template <typename U>
  bool operator==(const core_allocator<U>&) const noexcept {
    return true;
  }
};

}  // namespace pyscheduler::pysched_detail

#endif  // PYSCHEDULER_DETAIL_CORE_ALLOC_HPP
