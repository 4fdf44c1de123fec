//! The pipeline's sequencing: [`Pipeline`], the plain data under the handler's one mutex,
//! and every decision made on it. Whether a batch may form now (size, batch delay,
//! drain), whether it executes at once or is taken ahead to be prepared (prefetch depth,
//! execution slots), which staged batch runs next (claim order) and when a replica's
//! run ends are answered here and nowhere else. The decisions are small inlined methods
//! over the fields and over the few facts about the queue that a [`QueueView`] gives
//! when asked (the implementation is `HandlerCore`'s, in `formation`); they hold no
//! lock, atomic or clock of their own, so the tests below drive them without threads
//! or Python. Callers hold the pipeline lock and carry out what they return.
//!
//! May call: `item` (holds entries, never looks into them), `options`.

use super::item::Entry;
use super::options::HandlerOptions;
use std::collections::BTreeMap;
use std::time::Instant;

/// The batch pipeline of a handler; guarded by `HandlerCore::pipe`, which only the
/// threads running the handler (and slow paths: drain, a full bounded queue) take.
/// Producers never take it: they push to `HandlerCore::incoming`.
#[derive(Default)]
pub(super) struct Pipeline {
    /// The oldest entry of `incoming`, taken out to look at it (its age decides the batch
    /// delay); entries no longer queued (cancelled, expired) are dropped on the way.
    pub(super) front: Option<Entry>,
    pub(super) next_claim_seq: u64,
    pub(super) next_exec_seq: u64,
    /// Prepared batches waiting for their turn, by sequence number.
    pub(super) staged: BTreeMap<u64, Vec<Entry>>,
    /// Batches taken and not yet executed (or, with replicas, not yet finished).
    pub(super) batches_in_flight: usize,
    /// Batches being executed (at most `concurrency`).
    pub(super) executing: usize,
    /// Set by drain: flush partial batches at once, ignoring the batch delay.
    pub(super) draining: bool,
    /// Producers blocked on a full bounded queue, threads blocked in drain, idle
    /// replicas: the condvars are signalled only when someone waits (a signal is a
    /// syscall).
    pub(super) room_waiters: usize,
    pub(super) drain_waiters: usize,
}

/// The oldest queued item, as the decisions see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Oldest {
    /// When it was queued: the batch delay runs from here.
    pub(super) enqueued: Instant,
    /// It needs GIL-free preparation (only such batches are worth taking ahead).
    pub(super) needs_prepare: bool,
}

/// What the decisions read about the queue besides the pipeline. Each is asked for only
/// when a decision needs it (an atomic load, a clock read).
pub(super) trait QueueView {
    /// The oldest still-queued item; None when the queue is empty. `front` is
    /// `Pipeline::front`: an implementation may move the queue's next entry there to
    /// look at it, and drop entries no longer queued on the way.
    fn oldest(&self, front: &mut Option<Entry>) -> Option<Oldest>;
    /// Items accepted and not yet taken into a batch (nor cancelled or expired).
    fn queued(&self) -> usize;
    fn now(&self) -> Instant;
    /// The handler was closed: no item will be accepted any more.
    fn closed(&self) -> bool;
}

/// Whether a batch may be taken from the queue now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Formation {
    Empty,
    /// Full, or the delay is over, or none applies (no delay, draining).
    Due,
    /// Only the batch delay holds back a partial batch: it is due then.
    DelayedUntil(Instant),
}

/// A pool runner's next step (`Pipeline::next_step`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// The next batch in claim order is staged and an execution slot is free:
    /// `start_staged` it.
    ExecuteStaged,
    /// Take a batch from the queue and book it with `claimed`. `run_now`: it may execute
    /// at once; else it is taken ahead of execution, to be prepared.
    Claim { run_now: bool },
    /// Nothing to do now; when only the batch delay holds a batch back, arm the
    /// batch-delay timer for `delay_until`.
    Idle { delay_until: Option<Instant> },
}

/// Where a batch just claimed goes (`Pipeline::claimed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Route {
    /// Prepare it, then `stage` it under this sequence number.
    Prepare(u64),
    /// Execute it now (it is booked as executing).
    Execute,
    /// Taken ahead but needs no preparation after all (its items that did expired or
    /// were cancelled): `stage` it under this sequence number.
    Stage(u64),
}

/// A sub-interpreter replica's next step (`Pipeline::replica_step`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReplicaStep {
    /// Take a batch from the queue; book it with `replica_claimed` if not empty.
    Claim,
    /// Nothing to take now: arm the batch-delay timer for `delay_until` if set, then wait
    /// for work, or end the replica's run when `ended` (closed, and nothing is queued).
    Idle { delay_until: Option<Instant>, ended: bool },
}

impl Pipeline {
    /// Whether a batch may be taken from the queue now. With a batch delay, a partial
    /// batch waits until its oldest item has waited that long, unless draining.
    #[inline]
    pub(super) fn formation(&mut self, opts: &HandlerOptions, queue: &impl QueueView) -> Formation {
        match queue.oldest(&mut self.front) {
            None => Formation::Empty,
            Some(oldest) => self.formation_of(oldest, opts, queue),
        }
    }

    #[inline]
    fn formation_of(&self, oldest: Oldest, opts: &HandlerOptions, queue: &impl QueueView) -> Formation {
        let delay = opts.max_batch_delay;
        if delay.is_zero() || self.draining || queue.queued() >= opts.batch_size {
            return Formation::Due;
        }
        let due = oldest.enqueued + delay;
        if queue.now() >= due {
            Formation::Due
        } else {
            Formation::DelayedUntil(due)
        }
    }

    /// What a pool runner does next: the one answer to "is there work". Batches start
    /// executing in the order they were claimed; at most `concurrency` execute at once;
    /// at most `prefetch_depth` are taken ahead of execution, and only for items that
    /// need preparation (a GIL-path batch taken early only makes batches smaller).
    #[inline(always)]
    pub(super) fn next_step(&mut self, opts: &HandlerOptions, queue: &impl QueueView) -> Step {
        const IDLE: Step = Step::Idle { delay_until: None };
        let slot_free = self.executing < opts.concurrency;
        if slot_free && self.staged.contains_key(&self.next_exec_seq) {
            return Step::ExecuteStaged;
        }
        // No batch taken earlier is still ahead of one taken now.
        let run_now = slot_free && self.batches_in_flight == self.executing;
        if !run_now && !self.room_ahead(opts.prefetch_depth) {
            return IDLE;
        }
        let Some(oldest) = queue.oldest(&mut self.front) else {
            return IDLE;
        };
        if !run_now && !oldest.needs_prepare {
            return IDLE;
        }
        match self.formation_of(oldest, opts, queue) {
            Formation::Due => Step::Claim { run_now },
            Formation::DelayedUntil(due) => Step::Idle { delay_until: Some(due) },
            Formation::Empty => IDLE,
        }
    }

    /// Batches taken ahead of execution (being prepared, or staged).
    #[inline]
    pub(super) fn ahead(&self) -> usize {
        self.batches_in_flight - self.executing
    }

    /// Whether one more batch may be taken ahead of execution.
    #[inline]
    pub(super) fn room_ahead(&self, prefetch_depth: usize) -> bool {
        self.ahead() < prefetch_depth
    }

    /// After `Step::ExecuteStaged`: takes the next staged batch, booked as executing.
    #[inline]
    pub(super) fn start_staged(&mut self) -> Vec<Entry> {
        let batch = self.staged.remove(&self.next_exec_seq).expect("next_step saw it staged");
        self.start_next();
        batch
    }

    #[inline]
    fn start_next(&mut self) {
        self.executing += 1;
        self.next_exec_seq += 1;
    }

    /// After `Step::Claim { run_now }` took a batch (not empty): gives it the next
    /// sequence number and says where it goes. `needs_prepare`: one of its items does.
    #[inline]
    pub(super) fn claimed(&mut self, run_now: bool, needs_prepare: bool) -> Route {
        let seq = self.next_claim_seq;
        self.next_claim_seq += 1;
        self.batches_in_flight += 1;
        if needs_prepare {
            Route::Prepare(seq)
        } else if run_now {
            debug_assert_eq!(seq, self.next_exec_seq);
            self.start_next();
            Route::Execute
        } else {
            Route::Stage(seq)
        }
    }

    /// A batch taken ahead waits for its turn (`next_step` starts it in claim order).
    #[inline]
    pub(super) fn stage(&mut self, seq: u64, batch: Vec<Entry>) {
        self.staged.insert(seq, batch);
    }

    /// A batch finished executing: its slot is free.
    #[inline]
    pub(super) fn executed(&mut self) {
        self.executing -= 1;
        self.batches_in_flight -= 1;
    }

    /// What a sub-interpreter replica does next. A replica's execution slots are the
    /// replicas: a batch may be taken while fewer batches than replicas are in flight
    /// (`next_step` is the pool's version).
    #[inline]
    pub(super) fn replica_step(
        &mut self,
        replicas: usize,
        opts: &HandlerOptions,
        queue: &impl QueueView,
    ) -> ReplicaStep {
        let mut delay_until = None;
        if self.batches_in_flight < replicas {
            match self.formation(opts, queue) {
                Formation::Due => return ReplicaStep::Claim,
                Formation::DelayedUntil(due) => delay_until = Some(due),
                Formation::Empty => {}
            }
        }
        let ended = queue.closed() && queue.queued() == 0;
        ReplicaStep::Idle { delay_until, ended }
    }

    /// After `ReplicaStep::Claim` took a batch (not empty).
    #[inline]
    pub(super) fn replica_claimed(&mut self) {
        self.batches_in_flight += 1;
    }

    /// A replica finished a batch.
    #[inline]
    pub(super) fn replica_finished(&mut self) {
        self.batches_in_flight -= 1;
    }
}
