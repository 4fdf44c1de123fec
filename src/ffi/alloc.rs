//! `pysched_alloc`/`pysched_free`: the core's allocator, for the C++ wrapper's per-item
//! contexts. Items are allocated by the producer and freed by a worker; the core's
//! allocator (mimalloc in the default build) handles that cross-thread pattern better
//! than glibc's malloc. Under sanitizers it is the system allocator, which they see.

use std::alloc::{alloc, dealloc, Layout};
use std::ffi::c_void;
use std::ptr;

/// Allocates `size` bytes aligned to `align` from the core's allocator. Returns NULL
/// when `size` is 0, when `align` is not a power of two, when `size` rounded up to
/// `align` overflows, or when memory is exhausted. The memory is uninitialized; release
/// it with `pysched_free` and the same `size` and `align` (on any thread).
/// Thread-safe. Never blocks on Python (no GIL needed).
#[no_mangle]
pub extern "C" fn pysched_alloc(size: usize, align: usize) -> *mut c_void {
    if size == 0 {
        return ptr::null_mut();
    }
    let Ok(layout) = Layout::from_size_align(size, align) else {
        return ptr::null_mut();
    };
    super::boundary_value(ptr::null_mut(), || {
        // SAFETY: `layout` has a non-zero size (checked above).
        unsafe { alloc(layout) }.cast::<c_void>()
    })
}

/// Releases memory from `pysched_alloc`; `size` and `align` must be the values it was
/// allocated with. NULL is a no-op, and so is a `size` of 0 or an `align` that
/// `pysched_alloc` would have refused (no such block exists).
/// Thread-safe. Never blocks on Python (no GIL needed).
#[no_mangle]
pub extern "C" fn pysched_free(ptr: *mut c_void, size: usize, align: usize) {
    if ptr.is_null() || size == 0 {
        return;
    }
    let Ok(layout) = Layout::from_size_align(size, align) else {
        return;
    };
    super::boundary_value((), || {
        // SAFETY: the caller passes a block from pysched_alloc with this size and
        // alignment (documented), so it was allocated by this allocator with `layout`.
        unsafe { dealloc(ptr.cast::<u8>(), layout) }
    })
}
