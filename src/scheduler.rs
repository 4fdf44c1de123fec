//! The names this module has always exported publicly (`pyscheduler::scheduler::Job`
//! and the options). The code lives in `crate::core` (ARCHITECTURE.md); new code imports
//! from there.

pub use crate::core::{
    FullPolicy, HandlerOptions, ItemOptions, Job, MAX_BATCH_DELAY, MAX_BATCH_SIZE, MAX_CONCURRENCY,
    MAX_PREFETCH_DEPTH,
};
