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

#[cfg(feature = "cuda")]
pub mod cuda;
pub mod error;
pub mod ffi;
pub mod future;
pub mod handler;
pub mod manager;
pub mod runtime;
pub mod scheduler;
pub mod stats;
pub mod subinterp;

pub use error::{Error, ErrorKind, Result};
pub use future::{ItemFuture, Outcome};
pub use handler::{FullPolicy, Handler, HandlerOptions};
pub use manager::{debug_arc_count, debug_shared_state_address, Manager, ManagerOptions};
pub use runtime::{RuntimeOptions, StartMode};
pub use scheduler::{ItemOptions, Job};
pub use stats::{HandlerStats, LatencySummary};

/// Items are allocated by producer threads and freed by workers; glibc malloc handles
/// that cross-thread pattern poorly (measured: a sixth of the producer's time), mimalloc
/// well. Applies to this library's Rust allocations only.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
