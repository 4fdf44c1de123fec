//! Batch formation: the queue's front, whether a batch may be taken now (size, batch
//! delay, drain, prefetch and execution slots), and taking one (dropping cancelled items
//! and collecting expired ones). Called with the pipeline lock held.
//!
//! May call: `item`, `clock`, `admission` (`arm_delay_timer`), `accounting` (`dequeued`).

use super::clock;
use super::handler::{HandlerCore, Pipeline};
use super::item::{Entry, Item, QUEUED};
use crate::error::ErrorKind;
use std::sync::atomic::Ordering::{Acquire, Relaxed};
use std::sync::{Arc, MutexGuard};
use std::time::Instant;

/// A runner's next step.
pub(super) enum Action {
    Execute(Vec<Entry>),
    Prepare(u64, Vec<Entry>),
    Idle,
}

/// What the pipeline allows now (see `next_step`).
enum Next {
    /// The next batch in order is staged, and an execution slot is free.
    ExecuteStaged,
    /// A batch may be taken now; `run_now`: it can execute at once (else it is taken
    /// ahead, to be prepared).
    Claim {
        run_now: bool,
    },
    Nothing,
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
        if delay.is_zero() || pipe.draining || self.flow.queued() >= self.options.batch_size {
            return true;
        }
        let due = oldest + delay;
        if Instant::now() >= due {
            return true;
        }
        self.arm_delay_timer(due);
        false
    }

    /// What a runner could do next: the one answer to "is there work", which
    /// `next_action_locked` acts on and `work_available_locked` only asks. Changes
    /// nothing but the front (finished entries dropped) and the delay timer (armed when
    /// only the batch delay holds a batch back).
    fn next_step(&self, pipe: &mut Pipeline) -> Next {
        let slot_free = pipe.executing < self.options.concurrency;
        if slot_free && pipe.staged.contains_key(&pipe.next_exec_seq) {
            return Next::ExecuteStaged;
        }
        // No batch taken earlier is still ahead of one taken now.
        let run_now = slot_free && pipe.batches_in_flight == pipe.executing;
        // Taking a batch ahead of execution pays only for items that need preparation
        // (a GIL-path batch taken early only makes batches smaller).
        let prefetch = !run_now
            && self.ahead(pipe) < self.options.prefetch_depth
            && self.front(pipe).is_some_and(Entry::needs_prepare);
        if (run_now || prefetch) && self.claimable_locked(pipe) {
            Next::Claim { run_now }
        } else {
            Next::Nothing
        }
    }

    /// Whether a runner could make progress now (used to decide whether to keep, hand
    /// back or add a run). Called with the pipeline lock held.
    pub(super) fn work_available_locked(&self, pipe: &mut Pipeline) -> bool {
        !matches!(self.next_step(pipe), Next::Nothing)
    }

    /// Batches taken ahead of execution (being prepared or staged).
    pub(super) fn ahead(&self, pipe: &Pipeline) -> usize {
        pipe.batches_in_flight - pipe.executing
    }

    /// Takes the next step for a runner. Called with the pipeline lock held. Batches
    /// start executing in the order they were taken.
    pub(super) fn next_action_locked(&self, pipe: &mut Pipeline, expired: &mut Vec<Arc<Item>>) -> Action {
        let run_now = match self.next_step(pipe) {
            Next::Nothing => return Action::Idle,
            Next::ExecuteStaged => {
                let batch = pipe.staged.remove(&pipe.next_exec_seq).expect("next_step saw it staged");
                pipe.executing += 1;
                pipe.next_exec_seq += 1;
                return Action::Execute(batch);
            }
            Next::Claim { run_now } => run_now,
        };
        let batch = self.claim_locked(pipe, expired);
        if batch.is_empty() {
            return Action::Idle;
        }
        let seq = pipe.next_claim_seq;
        pipe.next_claim_seq += 1;
        pipe.batches_in_flight += 1;
        if batch.iter().any(Entry::needs_prepare) {
            Action::Prepare(seq, batch)
        } else if run_now {
            debug_assert_eq!(seq, pipe.next_exec_seq);
            pipe.executing += 1;
            pipe.next_exec_seq += 1;
            Action::Execute(batch)
        } else {
            // Its items expired or were cancelled, except some that need no preparation.
            pipe.staged.insert(seq, batch);
            Action::Idle
        }
    }

    /// Takes up to `batch_size` queued items (expired ones go to `expired`).
    pub(super) fn claim_locked(&self, pipe: &mut Pipeline, expired: &mut Vec<Arc<Item>>) -> Vec<Entry> {
        // Read the clock only if an item has a deadline.
        let mut now = None;
        let size = self.options.batch_size;
        let mut batch = Vec::with_capacity(size.min(self.flow.queued().max(1)));
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
            if entry.starts_group() && !batch.is_empty() {
                // The next batch starts with it (see `Job::starts_group`).
                pipe.front = Some(entry);
                break;
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

impl HandlerCore {
    /// Fails the items that `claim_locked` found expired, outside the pipeline lock (their
    /// callbacks run), and takes the lock again.
    pub(super) fn fail_expired<'a>(
        &'a self,
        pipe: MutexGuard<'a, Pipeline>,
        expired: &mut Vec<Arc<Item>>,
    ) -> MutexGuard<'a, Pipeline> {
        if expired.is_empty() {
            return pipe;
        }
        drop(pipe);
        for item in expired.drain(..) {
            item.finish_unstarted(ErrorKind::TimedOut, Some(self));
        }
        self.lock()
    }
}
