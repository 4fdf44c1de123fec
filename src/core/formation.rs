//! Batch formation: the queue's front, acting on the pipeline's decisions (`pipeline`
//! decides; this file gives it the queue's facts, arms the batch-delay timer it asks for
//! and takes the batches), and taking a batch (dropping cancelled items and collecting
//! expired ones). Called with the pipeline lock held.
//!
//! May call: `item`, `clock`, `pipeline`, `admission` (`arm_delay_timer`), `accounting`
//! (`dequeued`).

use super::clock;
use super::handler::{Entry, HandlerCore, Item, Pipeline};
use super::item::QUEUED;
use super::pipeline::{Oldest, QueueView, Route, Step};
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

/// The queue as the pipeline's decisions see it.
impl QueueView<Entry> for HandlerCore {
    #[inline]
    fn oldest(&self, front: &mut Option<Entry>) -> Option<Oldest> {
        let entry = self.front(front)?;
        Some(Oldest { enqueued: clock::instant(entry.enqueued_ns()), needs_prepare: entry.needs_prepare() })
    }

    #[inline]
    fn queued(&self) -> usize {
        self.flow.queued()
    }

    #[inline]
    fn now(&self) -> Instant {
        Instant::now()
    }

    #[inline]
    fn closed(&self) -> bool {
        self.flow.closed.load(Acquire)
    }
}

impl HandlerCore {
    /// The oldest still-queued entry, after dropping finished ones; `front` is
    /// `Pipeline::front`.
    #[inline]
    pub(super) fn front<'p>(&self, front: &'p mut Option<Entry>) -> Option<&'p Entry> {
        loop {
            match &*front {
                Some(entry) if entry.is_queued() => break,
                // Cancelled or expired: its canceller did the rest.
                Some(_) => *front = None,
                None => *front = Some(self.incoming.pop()?),
            }
        }
        front.as_ref()
    }

    /// The next entry in arrival order (queued or not).
    pub(super) fn pop_entry(&self, pipe: &mut Pipeline) -> Option<Entry> {
        pipe.front.take().or_else(|| self.incoming.pop())
    }

    /// The pipeline's next step for a pool runner (`Pipeline::next_step`), with the
    /// batch-delay timer armed when only the delay holds a batch back. Changes nothing
    /// else but the front (finished entries dropped).
    #[inline(always)]
    fn next_step(&self, pipe: &mut Pipeline) -> Step {
        let step = pipe.next_step(&self.options, self);
        if let Step::Idle { delay_until: Some(due) } = step {
            self.arm_delay_timer(due);
        }
        step
    }

    /// Whether a runner could make progress now (used to decide whether to keep, hand
    /// back or add a run). Called with the pipeline lock held.
    #[inline(always)]
    pub(super) fn work_available_locked(&self, pipe: &mut Pipeline) -> bool {
        !matches!(self.next_step(pipe), Step::Idle { .. })
    }

    /// Takes the next step for a runner. Called with the pipeline lock held. Batches
    /// start executing in the order they were taken.
    pub(super) fn next_action_locked(&self, pipe: &mut Pipeline, expired: &mut Vec<Arc<Item>>) -> Action {
        let run_now = match self.next_step(pipe) {
            Step::Idle { .. } => return Action::Idle,
            Step::ExecuteStaged => return Action::Execute(pipe.start_staged()),
            Step::Claim { run_now } => run_now,
        };
        let batch = self.claim_locked(pipe, expired);
        if batch.is_empty() {
            return Action::Idle;
        }
        match pipe.claimed(run_now, batch.iter().any(Entry::needs_prepare)) {
            Route::Prepare(seq) => Action::Prepare(seq, batch),
            Route::Execute => Action::Execute(batch),
            Route::Stage(seq) => {
                pipe.stage(seq, batch);
                Action::Idle
            }
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
