//! The names this module has always exported: the public ones (`pyscheduler::scheduler::
//! Job` and the options) and those `crate::tensor` imports from here. The code lives in
//! `crate::core` (ARCHITECTURE.md); new code imports from there.

pub(crate) use crate::core::{clock, Entry, HandlerCore, JobSlot};
pub use crate::core::{
    FullPolicy, HandlerOptions, ItemOptions, Job, MAX_BATCH_DELAY, MAX_BATCH_SIZE, MAX_CONCURRENCY,
    MAX_PREFETCH_DEPTH,
};
