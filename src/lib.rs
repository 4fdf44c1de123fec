//! pyscheduler: many threads calling Python functions inside one embedded CPython
//! interpreter, fast and safely.
//!
//! A [`Manager`] starts (or adopts) the process's interpreter; [`Manager::load`] binds a
//! Python function as a [`Handler`] with its own queue. Queued items are committed into
//! Python objects, passed to the function as one `list` per call (opportunistic
//! batching) by a shared worker pool, and each item's element of the result is fanned
//! out to its [`ItemFuture`] and callbacks. The C ABI (`ffi`, header
//! `include/pyscheduler.h`) is a thin layer over this API; the C++ drop-in wrapper sits
//! on the C ABI.

mod core;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod dlpack;
pub mod dtype;
pub mod error;
pub mod ffi;
pub mod future;
pub mod handler;
pub mod manager;
mod python_err;
pub mod runtime;
pub mod scheduler;
mod shared;
pub mod stats;
pub mod subinterp;
pub mod tensor;

pub use crate::core::{ItemOptions, Job};
pub use dtype::DType;
pub use error::{Error, ErrorKind, Result};
pub use future::{ItemFuture, Outcome};
pub use handler::{FullPolicy, Handler, HandlerOptions};
pub use manager::{debug_arc_count, debug_shared_state_address, Manager, ManagerOptions};
pub use runtime::{RuntimeOptions, StartMode};
pub use stats::{HandlerStats, LatencySummary};
pub use tensor::{
    Placement, TensorFuture, TensorHandler, TensorItemOptions, TensorRows, TensorSignature, TensorSpec,
};

/// Items are allocated by producer threads and freed by workers; glibc malloc handles
/// that cross-thread pattern poorly (measured: a sixth of the producer's time), mimalloc
/// well. Applies to this library's Rust allocations only.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: MiMalloc = MiMalloc;

/// mimalloc through its plain entry points. Every mimalloc block is aligned to at least
/// 8 bytes, so layouts asking no more (nearly all of ours) skip `mi_malloc_aligned`,
/// which re-checks the alignment and falls back to over-allocating whenever the page's
/// local free list is empty -- always, when blocks are freed by another thread
/// (callgrind: -22% instructions per queued item).
#[cfg(feature = "mimalloc")]
struct MiMalloc;

#[cfg(feature = "mimalloc")]
const MI_MIN_ALIGN: usize = 8;

/// mimalloc commits its arenas eagerly by default on Linux (overcommit), which costs this
/// library several MB of resident memory for nothing: 120k queued items peaked at 51 MB
/// instead of 39 MB. Turned off when the library is loaded, before its first allocation,
/// unless the user chose through `MIMALLOC_ARENA_EAGER_COMMIT`.
#[cfg(all(feature = "mimalloc", target_os = "linux"))]
/// `mi_option_arena_eager_commit` in mimalloc.h (v2 and v3; the crate's constants lack it).
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

#[cfg(all(feature = "mimalloc", target_os = "linux"))]
#[used]
#[link_section = ".init_array"]
static MI_CONFIGURE: extern "C" fn() = {
    extern "C" fn configure() {
        // SAFETY: getenv with a NUL-terminated name (no allocation, run at load time before
        // other threads of this library exist); mi_option_set is thread-safe.
        unsafe {
            if libc::getenv(c"MIMALLOC_ARENA_EAGER_COMMIT".as_ptr()).is_null() {
                libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0);
            }
        }
    }
    configure
};

#[cfg(feature = "mimalloc")]
// SAFETY: mimalloc returns blocks of at least the requested size, aligned to at least
// MI_MIN_ALIGN (the _aligned variants: to the requested power of two), or NULL; realloc
// keeps the alignment of the entry point that allocated the block.
unsafe impl std::alloc::GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        if layout.align() <= MI_MIN_ALIGN {
            libmimalloc_sys::mi_malloc(layout.size()).cast()
        } else {
            libmimalloc_sys::mi_malloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        if layout.align() <= MI_MIN_ALIGN {
            libmimalloc_sys::mi_zalloc(layout.size()).cast()
        } else {
            libmimalloc_sys::mi_zalloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: std::alloc::Layout) {
        libmimalloc_sys::mi_free(ptr.cast());
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= MI_MIN_ALIGN {
            libmimalloc_sys::mi_realloc(ptr.cast(), new_size).cast()
        } else {
            libmimalloc_sys::mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
        }
    }
}
