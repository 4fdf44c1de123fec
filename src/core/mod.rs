//! The core: the worker pool and each handler's pipeline. Items are queued, taken in
//! batches (optionally prepared without the GIL, ahead of execution), committed and
//! passed to Python as one list under a single GIL hold, and fanned out to their
//! completions. ARCHITECTURE.md draws the path; each file opens with what it owns and
//! what it may call.
//!
//! Dependency order, lowest first (a file imports only those above it; the handler's
//! behaviour files are one `impl HandlerCore` split by concern and share its fields;
//! `tools/check_layers.py` checks it):
//!
//! ```text
//! clock  options  completion  job  raw       leaves
//! item  batch_exec                            an item's states; a handler's own batch step
//! pipeline                                    the sequencing state under the one mutex
//!                                             and every decision on it (plain data,
//!                                             tested without threads)
//! timer                                       the thread that fires delays and deadlines
//! pool                                        the threads that run handlers
//! handler (the shared state, the one mutex)
//! admission formation driver prepare batch   HandlerCore's behaviour (imports handler,
//!   execute accounting drain                  never the reverse)
//! ```
//!
//! What sits below the handler but refers to it is generic over it, statically
//! dispatched: an item links back to its handler (`item::Item<H>`), the pipeline holds
//! entries (`Pipeline<E>`), the pool and the timer run handlers through the traits
//! `PoolWork` and `TimerEvents` (implemented in `driver`). `handler` fixes each to
//! `HandlerCore` with an alias of the same name (`handler::{Entry, Item, Pipeline,
//! Pool}`), which is what every file above it names.
//!
//! The core names nothing above it: a layer with its own batch step (tensor handlers)
//! plugs in through [`BatchExec`] and queues its jobs as `JobSlot::Placed`.
//!
//! Workers block on the pool's queue of handlers that have work (no polling); a handler
//! is in that queue at most once, and a worker that finishes a batch while other handlers
//! wait puts its handler back at the end (round-robin). A timer thread fires batch-delay
//! and per-item deadline events.

mod accounting;
mod admission;
pub(crate) mod batch;
pub(crate) mod batch_exec;
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

pub(crate) use batch_exec::BatchExec;
pub(crate) use handler::{Entry, HandlerCore, Item, Pool};
pub use job::Job;
pub(crate) use job::{JobSlot, PlacedJob};
pub use options::{
    FullPolicy, HandlerOptions, ItemOptions, MAX_BATCH_DELAY, MAX_BATCH_SIZE, MAX_CONCURRENCY,
    MAX_PREFETCH_DEPTH,
};
