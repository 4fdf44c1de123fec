//! Batch formation: the queue's front, whether a batch may be taken now (size, batch
//! delay, drain, prefetch and execution slots), and taking one (dropping cancelled items
//! and collecting expired ones). Called with the pipeline lock held.
//!
//! May call: `item`, `clock`, `admission` (`arm_delay_timer`), `accounting` (`dequeued`).

use super::clock;
use super::handler::{HandlerCore, Pipeline};
use super::item::{Entry, Item, QUEUED};
use std::sync::atomic::Ordering::{Acquire, Relaxed};
use std::sync::Arc;
use std::time::Instant;

/// A runner's next step.
pub(super) enum Action {
    Execute(Vec<Entry>),
    Prepare(u64, Vec<Entry>),
    Idle,
}

impl HandlerCore {
    /// The oldest still-queued entry, after dropping finished ones.
    pub(super) fn front<'p>(&self, pipe: &'p mut Pipeline) -> Option<&'p Entry> {
        loop {
            match &pipe.front {
                Some(entry) if entry.is_queued() => break,
                // Cancelled or expired: its canceller did the rest.
                Some(_) => pipe.front = None,
                None => pipe.front = Some(self.incoming.pop()?),
            }
        }
        pipe.front.as_ref()
    }

    /// The next entry in arrival order (queued or not).
    pub(super) fn pop_entry(&self, pipe: &mut Pipeline) -> Option<Entry> {
        pipe.front.take().or_else(|| self.incoming.pop())
    }

    /// Whether a batch may be taken now; arms the delay timer when only the batch delay
    /// holds it back.
    pub(super) fn claimable_locked(&self, pipe: &mut Pipeline) -> bool {
        let delay = self.options.max_batch_delay;
        let Some(oldest) = self.front(pipe).map(|f| clock::instant(f.enqueued_ns())) else {
            return false;
        };
        if delay.is_zero() || pipe.draining || self.flow.queued.load(Acquire) >= self.options.batch_size {
            return true;
        }
        let due = oldest + delay;
        if Instant::now() >= due {
            return true;
        }
        self.arm_delay_timer(due);
        false
    }

    pub(super) fn head_needs_prepare(&self, pipe: &mut Pipeline) -> bool {
        self.front(pipe).is_some_and(Entry::needs_prepare)
    }

    /// Whether a runner could make progress now (used to decide whether to keep or hand
    /// back a run). Called with the pipeline lock held.
    pub(super) fn work_available_locked(&self, pipe: &mut Pipeline) -> bool {
        let exec_ready = self.exec_slot_free(pipe) && pipe.staged.contains_key(&pipe.next_exec_seq);
        let claim_ready = self.can_run_now(pipe)
            || (self.ahead(pipe) < self.options.prefetch_depth && self.head_needs_prepare(pipe));
        exec_ready || (claim_ready && self.claimable_locked(pipe))
    }

    /// Batches taken ahead of execution (being prepared or staged).
    pub(super) fn ahead(&self, pipe: &Pipeline) -> usize {
        pipe.batches_in_flight - pipe.executing
    }

    pub(super) fn exec_slot_free(&self, pipe: &Pipeline) -> bool {
        pipe.executing < self.options.concurrency
    }

    /// A batch taken now could execute at once: an execution slot is free and no
    /// prepared or staged batch is ahead of it.
    pub(super) fn can_run_now(&self, pipe: &Pipeline) -> bool {
        self.exec_slot_free(pipe) && pipe.batches_in_flight == pipe.executing
    }

    /// Picks the next step for a runner. Called with the pipeline lock held. Batches
    /// start executing in the order they were taken.
    pub(super) fn next_action_locked(&self, pipe: &mut Pipeline, expired: &mut Vec<Arc<Item>>) -> Action {
        if self.exec_slot_free(pipe) {
            let next = pipe.next_exec_seq;
            if let Some(batch) = pipe.staged.remove(&next) {
                pipe.executing += 1;
                pipe.next_exec_seq += 1;
                return Action::Execute(batch);
            }
        }
        let can_run_now = self.can_run_now(pipe);
        let can_prefetch = self.ahead(pipe) < self.options.prefetch_depth;
        if !(can_run_now || can_prefetch) || !self.claimable_locked(pipe) {
            return Action::Idle;
        }
        if !can_run_now && !self.head_needs_prepare(pipe) {
            // Taking a GIL-path batch early only makes batches smaller.
            return Action::Idle;
        }
        let batch = self.claim_locked(pipe, expired);
        if batch.is_empty() {
            return Action::Idle;
        }
        let seq = pipe.next_claim_seq;
        pipe.next_claim_seq += 1;
        pipe.batches_in_flight += 1;
        if batch.iter().any(Entry::needs_prepare) {
            Action::Prepare(seq, batch)
        } else if can_run_now {
            debug_assert_eq!(seq, pipe.next_exec_seq);
            pipe.executing += 1;
            pipe.next_exec_seq += 1;
            Action::Execute(batch)
        } else {
            pipe.staged.insert(seq, batch);
            Action::Idle
        }
    }

    /// Takes up to `batch_size` queued items (expired ones go to `expired`).
    pub(super) fn claim_locked(&self, pipe: &mut Pipeline, expired: &mut Vec<Arc<Item>>) -> Vec<Entry> {
        // Read the clock only if an item has a deadline.
        let mut now = None;
        let size = self.options.batch_size;
        let mut batch = Vec::with_capacity(size.min(self.flow.queued.load(Acquire).max(1)));
        while batch.len() < size {
            let Some(entry) = self.pop_entry(pipe) else { break };
            if let Entry::Shared(item) = &entry {
                if item
                    .deadline_ns
                    .is_some_and(|d| d.get() <= *now.get_or_insert_with(|| clock::ns(Instant::now())))
                {
                    if item.state.load(Acquire) == QUEUED {
                        expired.push(item.clone());
                    }
                    continue;
                }
            }
            if entry.claim() {
                batch.push(entry);
            }
        }
        if !batch.is_empty() {
            self.items_in_batches.fetch_add(batch.len() as u64, Relaxed);
            self.dequeued(batch.len(), Some(pipe));
        }
        batch
    }
}
