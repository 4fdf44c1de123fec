//! How a handler batches and queues ([`HandlerOptions`], [`FullPolicy`]) and how one
//! item is submitted ([`ItemOptions`]). Plain data; a leaf of the core.

use crate::error::{Error, Result};
use std::time::{Duration, Instant};

/// What to do when a bounded queue is full.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FullPolicy {
    /// Wait for room (up to `block_timeout`, if set), then fail with `QueueFull`.
    #[default]
    Block = 0,
    /// Fail the item at once with `QueueFull`.
    Reject = 1,
}

/// How a handler batches and queues.
#[derive(Debug, Clone, PartialEq)]
pub struct HandlerOptions {
    /// Most items per Python call (1..=1_000_000).
    pub batch_size: usize,
    /// Batches that may be taken and prepared ahead of execution (1..=4096).
    pub prefetch_depth: usize,
    /// Wait up to this long after the oldest queued item for a fuller batch (0: take
    /// whatever is queued, as the original does). At most 60 s.
    pub max_batch_delay: Duration,
    /// Most items waiting to be taken into a batch (0: unbounded).
    pub max_queue: usize,
    pub full_policy: FullPolicy,
    /// For `FullPolicy::Block`: give up after this long (`None`: wait indefinitely).
    pub block_timeout: Option<Duration>,
    /// Label for metrics; defaults to "module.entry_point".
    pub name: Option<String>,
    /// Batches of this handler that may execute at once (1..=1024; default 1). Above 1,
    /// batches start in order but may finish out of order; worth it when the function
    /// releases the GIL (I/O, numpy, torch) or on a free-threaded CPython, where they
    /// run truly in parallel.
    pub concurrency: usize,
    /// Run this handler in this many own-GIL sub-interpreters (CPython 3.12+), each
    /// owned by a thread of its own, instead of on the shared worker pool: one Python
    /// function on that many cores. 0 (the default): the main interpreter. Only raw
    /// C-API jobs (the C ABI's, and so the C++ wrapper's) can run there.
    pub subinterpreters: usize,
}

impl Default for HandlerOptions {
    fn default() -> Self {
        HandlerOptions {
            batch_size: 1,
            prefetch_depth: 1,
            max_batch_delay: Duration::ZERO,
            max_queue: 0,
            full_policy: FullPolicy::Block,
            block_timeout: None,
            name: None,
            concurrency: 1,
            subinterpreters: 0,
        }
    }
}

pub const MAX_BATCH_SIZE: usize = 1_000_000;
pub const MAX_PREFETCH_DEPTH: usize = 4096;
pub const MAX_CONCURRENCY: usize = 1024;
pub const MAX_BATCH_DELAY: Duration = Duration::from_secs(60);

impl HandlerOptions {
    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 || self.batch_size > MAX_BATCH_SIZE {
            return Err(Error::invalid_argument(format!(
                "batch_size must be in 1..={MAX_BATCH_SIZE}, got {}",
                self.batch_size
            )));
        }
        if self.prefetch_depth == 0 || self.prefetch_depth > MAX_PREFETCH_DEPTH {
            return Err(Error::invalid_argument(format!(
                "prefetch_depth must be in 1..={MAX_PREFETCH_DEPTH}, got {}",
                self.prefetch_depth
            )));
        }
        if self.concurrency == 0 || self.concurrency > MAX_CONCURRENCY {
            return Err(Error::invalid_argument(format!(
                "concurrency must be in 1..={MAX_CONCURRENCY}, got {}",
                self.concurrency
            )));
        }
        if self.max_batch_delay > MAX_BATCH_DELAY {
            return Err(Error::invalid_argument(format!(
                "max_batch_delay must be at most {} s, got {:?}",
                MAX_BATCH_DELAY.as_secs(),
                self.max_batch_delay
            )));
        }
        Ok(())
    }
}

/// Per-item submission options.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ItemOptions {
    /// Fail the item with `TimedOut` if it has not started by then.
    pub deadline: Option<Instant>,
    /// Keep the item's Python result in its future (for `ItemFuture::take`).
    pub keep_value: bool,
}
