//! The core: the worker pool and each handler's pipeline. Items are queued, taken in
//! batches (optionally prepared without the GIL, ahead of execution), committed and
//! passed to Python as one list under a single GIL hold, and fanned out to their
//! completions. ARCHITECTURE.md draws the path; each file opens with what it owns and
//! what it may call.
//!
//! Dependency order, lowest first (a module uses only those above it; the handler's
//! behaviour files are one `impl HandlerCore` split by concern and share its fields):
//!
//! ```text
//! clock  options  completion  job  raw       leaves
//! item                                        an item's states, its completion slot
//! pipeline                                    the sequencing state under the one mutex
//!                                             and every decision on it (plain data,
//!                                             tested without threads)
//! handler (the shared state, the one mutex)   with admission, formation, driver,
//!                                             prepare, batch, execute, accounting, drain
//! timer  pool                                 the threads that run handlers
//! ```
//!
//! Workers block on the pool's queue of handlers that have work (no polling); a handler
//! is in that queue at most once, and a worker that finishes a batch while other handlers
//! wait puts its handler back at the end (round-robin). A timer thread fires batch-delay
//! and per-item deadline events.

mod accounting;
mod admission;
pub(crate) mod batch;
pub(crate) mod clock;
pub(crate) mod completion;
mod drain;
mod driver;
mod execute;
mod formation;
pub(crate) mod handler;
pub(crate) mod item;
pub(crate) mod job;
pub(crate) mod options;
mod pipeline;
pub(crate) mod pool;
mod prepare;
pub(crate) mod raw;
pub(crate) mod timer;

pub(crate) use handler::HandlerCore;
pub(crate) use item::Entry;
pub use job::Job;
pub(crate) use job::JobSlot;
pub use options::{
    FullPolicy, HandlerOptions, ItemOptions, MAX_BATCH_DELAY, MAX_BATCH_SIZE, MAX_CONCURRENCY,
    MAX_PREFETCH_DEPTH,
};
pub(crate) use pool::Pool;
