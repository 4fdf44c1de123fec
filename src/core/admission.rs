//! Admission: how an item enters its handler's queue. A producer builds the entry,
//! reserves a place (shutdown, the bounded-queue policy), pushes it lock-free and makes
//! sure a runner will look (`kick`, or the batch-delay timer). Lock-free unless a
//! bounded queue is full under `FullPolicy::Block`.
//!
//! May call: `item`, `clock`, `timer` (through the pool), `driver` (`kick`),
//! `crate::runtime` (to release the GIL while blocked).

use super::clock;
use super::handler::{Entry, HandlerCore, Item};
use super::item::{Detached, JobCell, QUEUED};
use super::job::JobSlot;
use super::options::{FullPolicy, ItemOptions};
use super::timer::TimerTarget;
use crate::error::{Error, ErrorKind, Result};
use std::sync::atomic::{AtomicU8, Ordering::AcqRel, Ordering::Acquire, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

impl HandlerCore {
    /// Queues one item for a future: the returned item is the future's. The job is always
    /// consumed: on refusal (shutdown, full queue) its `fail` runs before this returns, the
    /// item is already failed and the refusal is returned beside it. The future may cancel
    /// the item (the item links back to this handler). Lock-free unless the bounded queue
    /// is full under `FullPolicy::Block`.
    pub(crate) fn enqueue(&self, job: JobSlot, opts: ItemOptions) -> (Arc<Item>, Option<Error>) {
        let (item, refused) = self.submit(job, opts, true);
        (item.expect("submit returns the item when asked for a future"), refused)
    }

    /// Queues one item nobody waits for but its job's callbacks (the C ABI without a
    /// future handle, and so the C++ wrapper's `std::future`s): its completion slot is
    /// never written, and it is neither linked to this handler nor shared with the caller.
    pub(crate) fn enqueue_detached(&self, job: JobSlot, opts: ItemOptions) -> Option<Error> {
        self.submit(job, ItemOptions { keep_value: false, ..opts }, false).1
    }

    /// `with_future`: the item is returned for a future (which may also cancel it).
    pub(super) fn submit(
        &self,
        job: JobSlot,
        opts: ItemOptions,
        with_future: bool,
    ) -> (Option<Arc<Item>>, Option<Error>) {
        let needs_prepare = job.needs_prepare();
        let starts_group = job.starts_group();
        let enqueued_ns = clock::now_ns();
        let entry = if with_future || opts.deadline.is_some() {
            Entry::Shared(Arc::new(Item {
                state: AtomicU8::new(QUEUED),
                needs_prepare,
                starts_group,
                job: JobCell::new(job),
                completion: with_future.then(Box::default),
                keep_value: opts.keep_value,
                enqueued_ns,
                deadline_ns: opts.deadline.map(clock::deadline_ns),
                handler: self.weak_self.clone(),
            }))
        } else {
            Entry::Detached(Detached::new(job, enqueued_ns, needs_prepare, starts_group))
        };
        let for_future = match &entry {
            Entry::Shared(item) if with_future => Some(item.clone()),
            _ => None,
        };
        if let Err(error) = self.reserve_slot() {
            self.flow.refused.fetch_add(1, Relaxed);
            self.counters.rejected.fetch_add(1, Relaxed);
            entry.fail_unstarted(&error);
            return (for_future, Some(error));
        }
        if let (Some(deadline), Entry::Shared(item)) = (opts.deadline, &entry) {
            self.pool.timer.add(deadline, TimerTarget::Item(Arc::downgrade(item)));
        }
        // Once pushed, the item may be executed and finished at any moment.
        self.incoming.push(entry);
        let delay = self.options.max_batch_delay;
        if delay.is_zero() || self.flow.queued() >= self.options.batch_size {
            self.kick();
            if needs_prepare {
                self.kick_preparation();
            }
        } else {
            // The timer wakes a runner when the delay has passed.
            self.arm_delay_timer(clock::instant(enqueued_ns) + delay);
        }
        (for_future, None)
    }

    /// Takes a place in the queue (counts the item as accepted, and so queued and
    /// outstanding): checks shutdown and the bound. Blocks (releasing the GIL if held)
    /// under `FullPolicy::Block` with a full queue.
    pub(super) fn reserve_slot(&self) -> Result<()> {
        if self.flow.closed.load(Acquire) {
            return Err(self.shut_down_error());
        }
        let limit = self.options.max_queue;
        if limit == 0 {
            self.flow.accepted.fetch_add(1, AcqRel);
            return Ok(());
        }
        if self.try_reserve(limit) {
            return Ok(());
        }
        let full = || {
            Error::new(
                ErrorKind::QueueFull,
                format!("handler {} queue is full ({limit} items waiting)", self.name),
            )
        };
        if self.options.full_policy == FullPolicy::Reject {
            return Err(full());
        }
        // A timeout too large for an Instant means no timeout.
        let give_up_at = self.options.block_timeout.and_then(|t| Instant::now().checked_add(t));
        crate::runtime::without_gil(|| {
            let mut pipe = self.lock();
            loop {
                if self.flow.closed.load(Acquire) {
                    return Err(self.shut_down_error());
                }
                if self.try_reserve(limit) {
                    return Ok(());
                }
                let now = Instant::now();
                if give_up_at.is_some_and(|t| now >= t) {
                    return Err(full());
                }
                pipe.room_waiters += 1;
                pipe = match give_up_at {
                    None => self.room.wait(pipe).unwrap_or_else(|p| p.into_inner()),
                    Some(t) => self.room.wait_timeout(pipe, t - now).unwrap_or_else(|p| p.into_inner()).0,
                };
                pipe.room_waiters -= 1;
            }
        })
    }

    /// Accepts the item if fewer than `limit` are queued. The count of items that left is
    /// read before `accepted` (see `Flow`), so the size seen is at least the true one: a
    /// refusal means the queue was full when `left` was read.
    pub(super) fn try_reserve(&self, limit: usize) -> bool {
        loop {
            let left = self.flow.left.load(Acquire);
            let accepted = self.flow.accepted.load(Acquire);
            if (accepted - left) as usize >= limit {
                return false;
            }
            if self.flow.accepted.compare_exchange_weak(accepted, accepted + 1, AcqRel, Acquire).is_ok() {
                return true;
            }
        }
    }

    pub(super) fn shut_down_error(&self) -> Error {
        Error::new(ErrorKind::ShutDown, format!("handler {} is shut down", self.name))
    }
}
