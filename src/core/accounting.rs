//! Accounting: the flow counters as items leave the queue and finish, the per-item and
//! per-batch counters, the batch timings (EMAs, histograms) and the stats snapshot. The
//! order of these updates against future resolution is a contract: stats read after a
//! future resolved already account for its item.
//!
//! An item that finishes unstarted (cancelled, expired) is accounted for here too: its
//! handler's counters, reached through the item's link back to it.
//!
//! May call: `item`, `job`, `pipeline`, `crate::stats`.

use super::handler::{Entry, HandlerCore, Item, Pipeline};
use super::job::{fail_job, JobSlot};
use crate::error::{Error, ErrorKind};
use crate::stats::HandlerStats;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed};
use std::sync::Arc;

impl Item {
    /// Cancels a queued item; false if it already started or finished.
    pub(crate) fn cancel(self: &Arc<Self>) -> bool {
        self.finish_unstarted(ErrorKind::Cancelled, self.handler.upgrade().as_deref())
    }

    /// Fails an item that has not started; `handler` is its handler, for the accounting
    /// (None once the handler is gone: it then failed every queued item itself).
    pub(super) fn finish_unstarted(self: &Arc<Self>, kind: ErrorKind, handler: Option<&HandlerCore>) -> bool {
        let error = match kind {
            ErrorKind::Cancelled => Error::new(kind, "the item was cancelled before it started"),
            ErrorKind::TimedOut => Error::new(kind, "the item's deadline passed before it started"),
            _ => Error::new(kind, "the handler shut down before the item started"),
        };
        let failed = self.fail_if_queued(error, || {
            if let Some(h) = handler {
                h.count_unstarted(kind);
                h.dequeued(1, None);
            }
        });
        if let (true, Some(h)) = (failed, handler) {
            h.finish_items(1);
        }
        failed
    }
}

impl HandlerCore {
    pub(super) fn count_unstarted(&self, kind: ErrorKind) {
        let counter = match kind {
            ErrorKind::Cancelled => &self.counters.cancelled,
            ErrorKind::TimedOut => &self.counters.expired,
            _ => &self.counters.rejected,
        };
        counter.fetch_add(1, Relaxed);
    }

    /// Accounts for `n` accepted items that finished; wakes drainers at zero.
    pub(super) fn finish_items(&self, n: usize) {
        if n > 0
            && self.flow.finished.fetch_add(n as u64, AcqRel) + n as u64 == self.flow.accepted.load(Acquire)
        {
            let pipe = self.lock();
            if pipe.drain_waiters > 0 {
                self.drained.notify_all();
            }
        }
    }

    /// Accounts for `n` queued items leaving the queue (taken, cancelled, expired);
    /// wakes producers blocked on a full bounded queue.
    pub(super) fn dequeued(&self, n: usize, pipe: Option<&mut Pipeline>) {
        self.flow.left.fetch_add(n as u64, AcqRel);
        if self.options.max_queue > 0 {
            let waiters = match pipe {
                Some(p) => p.room_waiters,
                None => self.lock().room_waiters,
            };
            if waiters > 0 {
                self.room.notify_all();
            }
        }
    }

    /// Fails an item taken into a batch.
    pub(crate) fn fail_started(&self, item: &Entry, job: Option<JobSlot>, error: Error) {
        self.leave_batch();
        // Counted before the job's `fail`, which may resolve the caller's own future (the
        // C++ wrapper's promise): stats read after any future resolved include it.
        self.counters.failed.fetch_add(1, Relaxed);
        fail_job(job, &error);
        item.resolve(Err(error));
    }

    /// An item of a batch is about to reach its callbacks, which may resolve a future the
    /// caller waits on (the C++ wrapper's promise): take it out of the queue sizes first,
    /// so stats read after any future resolved no longer count it.
    pub(super) fn leave_batch(&self) {
        self.items_in_batches.fetch_sub(1, AcqRel);
    }

    /// Accounts for a batch of `n` items whose results fanned out, in one step before any
    /// of their callbacks run: they leave the queue sizes and count as completed.
    pub(crate) fn batch_succeeded(&self, n: usize) {
        self.items_in_batches.fetch_sub(n as u64, AcqRel);
        self.counters.completed.fetch_add(n as u64, Relaxed);
    }

    /// Records one batch's timings; called before its results fan out, so stats read
    /// after any of its futures resolved include it.
    pub(crate) fn record_timings(&self, items: usize, commit_ns: u64, execute_ns: u64, executed: usize) {
        self.histograms.commit_ns.record(commit_ns);
        let mut emas = self.emas.lock().unwrap_or_else(|p| p.into_inner());
        emas.record_commit(items, commit_ns);
        if executed > 0 {
            self.histograms.execute_ns.record(execute_ns);
            self.histograms.batch_size.record(executed as u64);
            self.counters.batches.fetch_add(1, Relaxed);
            emas.record_execute(executed, execute_ns);
        }
    }

    pub(crate) fn stats(&self) -> HandlerStats {
        let emas = *self.emas.lock().unwrap_or_else(|p| p.into_inner());
        let c = &self.counters;
        HandlerStats {
            commit_queue_size: self.flow.queued() as u64,
            execute_queue_size: self.items_in_batches.load(Acquire),
            total_enqueued: self.flow.accepted.load(Acquire) + self.flow.refused.load(Acquire),
            completed: c.completed.load(Relaxed),
            failed: c.failed.load(Relaxed),
            cancelled: c.cancelled.load(Relaxed),
            expired: c.expired.load(Relaxed),
            rejected: c.rejected.load(Relaxed),
            batches: c.batches.load(Relaxed),
            commit_batch_size_ema: emas.commit_batch_size,
            execute_batch_size_ema: emas.execute_batch_size,
            commit_ns_per_batch_ema: emas.commit_ns_per_batch,
            execute_ns_per_batch_ema: emas.execute_ns_per_batch,
        }
    }
}
