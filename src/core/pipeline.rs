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
//! Generic over the entries `E` it holds (`item::Entry`, fixed by `handler::Pipeline`):
//! it never looks into them.
//!
//! May call: `options`.

use super::options::HandlerOptions;
use std::collections::BTreeMap;
use std::time::Instant;

/// The batch pipeline of a handler; guarded by `HandlerCore::pipe`, which only the
/// threads running the handler (and slow paths: drain, a full bounded queue) take.
/// Producers never take it: they push to `HandlerCore::incoming`.
pub(super) struct Pipeline<E> {
    /// The oldest entry of `incoming`, taken out to look at it (its age decides the batch
    /// delay); entries no longer queued (cancelled, expired) are dropped on the way.
    pub(super) front: Option<E>,
    pub(super) next_claim_seq: u64,
    pub(super) next_exec_seq: u64,
    /// Prepared batches waiting for their turn, by sequence number.
    pub(super) staged: BTreeMap<u64, Vec<E>>,
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

// Not derived: that would ask for `E: Default`.
impl<E> Default for Pipeline<E> {
    fn default() -> Self {
        Pipeline {
            front: None,
            next_claim_seq: 0,
            next_exec_seq: 0,
            staged: BTreeMap::new(),
            batches_in_flight: 0,
            executing: 0,
            draining: false,
            room_waiters: 0,
            drain_waiters: 0,
        }
    }
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
pub(super) trait QueueView<E> {
    /// The oldest still-queued item; None when the queue is empty. `front` is
    /// `Pipeline::front`: an implementation may move the queue's next entry there to
    /// look at it, and drop entries no longer queued on the way.
    fn oldest(&self, front: &mut Option<E>) -> Option<Oldest>;
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

impl<E> Pipeline<E> {
    /// Whether a batch may be taken from the queue now. With a batch delay, a partial
    /// batch waits until its oldest item has waited that long, unless draining.
    #[inline]
    pub(super) fn formation(&mut self, opts: &HandlerOptions, queue: &impl QueueView<E>) -> Formation {
        match queue.oldest(&mut self.front) {
            None => Formation::Empty,
            Some(oldest) => self.formation_of(oldest, opts, queue),
        }
    }

    #[inline]
    fn formation_of(&self, oldest: Oldest, opts: &HandlerOptions, queue: &impl QueueView<E>) -> Formation {
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
    pub(super) fn next_step(&mut self, opts: &HandlerOptions, queue: &impl QueueView<E>) -> Step {
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
    pub(super) fn start_staged(&mut self) -> Vec<E> {
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
    pub(super) fn stage(&mut self, seq: u64, batch: Vec<E>) {
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
        queue: &impl QueueView<E>,
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

/// The decisions, driven step by step as the runners drive them, on a fake queue: no
/// threads, no Python, no clock (time is a field).
///
/// Mutations of the decisions above that were tried (each reverted), and the tests that
/// failed under them:
/// - `queued() >= batch_size` -> `>`: `a_batch_forms_at_batch_size`
/// - `now() >= due` -> `>`: `a_partial_batch_waits_for_the_delay_and_forms_when_due`,
///   `a_replica_waits_for_the_batch_delay`
/// - `self.draining ||` removed: `draining_forms_partial_batches_at_once`
/// - `delay.is_zero() ||` removed: `without_a_delay_a_partial_batch_forms_at_once` (the
///   clock is read)
/// - `ahead() < prefetch_depth` -> `<=`: `prefetch_depth_limits_batches_claimed_ahead`
/// - the `!run_now && !oldest.needs_prepare` check removed:
///   `only_batches_that_need_preparation_are_claimed_ahead`,
///   `execution_slots_limit_batches_executing_at_once`
/// - `staged.contains_key(next_exec_seq)` -> `!staged.is_empty()`, `start_staged` taking
///   the first staged batch: `staged_batches_execute_in_claim_order`
/// - `&& batches_in_flight == executing` removed from `run_now`:
///   `a_batch_does_not_execute_ahead_of_one_claimed_earlier`,
///   `prefetch_depth_limits_batches_claimed_ahead`
/// - `executing < concurrency` -> `<=`: `execution_slots_limit_batches_executing_at_once`
///   and three more
/// - claim sequence numbers off by one: `staged_batches_execute_in_claim_order` and three
///   more
/// - `batches_in_flight < replicas` -> `<=`: `replicas_limit_batches_in_flight`,
///   `close_with_an_empty_queue_ends_the_run`
/// - `closed() && queued() == 0` -> `||`: `close_with_an_empty_queue_ends_the_run`
/// - an empty queue read as `Formation::Due`: `an_empty_queue_gives_no_work`,
///   `close_with_an_empty_queue_ends_the_run`
/// - `next_step` claiming from an empty queue: `an_empty_queue_gives_no_work` and two more
#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::collections::VecDeque;
    use std::time::Duration;

    /// The decisions never look into the entries: none are needed here.
    type Pipeline = super::Pipeline<()>;

    const DELAY: Duration = Duration::from_millis(10);

    /// A queue whose items were all queued at `enqueued`; each says whether it needs
    /// preparation.
    struct FakeQueue {
        items: VecDeque<bool>,
        enqueued: Instant,
        now: Instant,
        closed: bool,
        /// How often a decision read the clock.
        clock_reads: Cell<usize>,
    }

    impl FakeQueue {
        fn new(items: &[bool]) -> Self {
            let t0 = Instant::now();
            FakeQueue {
                items: items.iter().copied().collect(),
                enqueued: t0,
                now: t0,
                closed: false,
                clock_reads: Cell::new(0),
            }
        }

        fn plain(n: usize) -> Self {
            Self::new(&vec![false; n])
        }

        fn needing_prepare(n: usize) -> Self {
            Self::new(&vec![true; n])
        }

        /// Takes up to `n` items; whether one of them needs preparation.
        fn take(&mut self, n: usize) -> bool {
            let n = n.min(self.items.len());
            self.items.drain(..n).fold(false, |any, needs| any | needs)
        }
    }

    impl QueueView<()> for FakeQueue {
        fn oldest(&self, _front: &mut Option<()>) -> Option<Oldest> {
            let needs_prepare = *self.items.front()?;
            Some(Oldest { enqueued: self.enqueued, needs_prepare })
        }
        fn queued(&self) -> usize {
            self.items.len()
        }
        fn now(&self) -> Instant {
            self.clock_reads.set(self.clock_reads.get() + 1);
            self.now
        }
        fn closed(&self) -> bool {
            self.closed
        }
    }

    /// What a pool runner did (`next_action_locked`, with its batches' items taken from
    /// the fake queue).
    #[derive(Debug, PartialEq, Eq)]
    enum Did {
        /// Started executing the batch of this sequence number.
        Execute(u64),
        /// Took a batch ahead, to prepare it.
        Prepare(u64),
        /// Took a batch ahead and staged it.
        Stage(u64),
        Idle(Option<Instant>),
    }

    fn act(pipe: &mut Pipeline, opts: &HandlerOptions, queue: &mut FakeQueue) -> Did {
        match pipe.next_step(opts, queue) {
            Step::Idle { delay_until } => Did::Idle(delay_until),
            Step::ExecuteStaged => {
                let seq = pipe.next_exec_seq;
                pipe.start_staged();
                Did::Execute(seq)
            }
            Step::Claim { run_now } => {
                assert!(queue.queued() > 0, "claimed from an empty queue");
                let needs_prepare = queue.take(opts.batch_size);
                let seq = pipe.next_claim_seq;
                match pipe.claimed(run_now, needs_prepare) {
                    Route::Prepare(seq) => Did::Prepare(seq),
                    Route::Execute => Did::Execute(seq),
                    Route::Stage(seq) => {
                        pipe.stage(seq, Vec::new());
                        Did::Stage(seq)
                    }
                }
            }
        }
    }

    fn options(batch_size: usize, delay: Duration) -> HandlerOptions {
        HandlerOptions { batch_size, max_batch_delay: delay, ..Default::default() }
    }

    #[test]
    fn a_batch_forms_at_batch_size() {
        let opts = options(4, DELAY);
        let mut pipe = Pipeline::default();
        let mut queue = FakeQueue::plain(3);
        let due = queue.enqueued + DELAY;
        assert_eq!(act(&mut pipe, &opts, &mut queue), Did::Idle(Some(due)));
        assert_eq!(queue.queued(), 3, "nothing taken while the batch is partial");
        queue.items.push_back(false);
        queue.clock_reads.set(0);
        assert_eq!(act(&mut pipe, &opts, &mut queue), Did::Execute(0));
        assert_eq!(queue.queued(), 0);
        assert_eq!(queue.clock_reads.get(), 0, "a full batch needs no clock");
    }

    #[test]
    fn a_partial_batch_waits_for_the_delay_and_forms_when_due() {
        let opts = options(4, DELAY);
        let mut pipe = Pipeline::default();
        let mut queue = FakeQueue::plain(2);
        let due = queue.enqueued + DELAY;
        queue.now = due - Duration::from_nanos(1);
        assert_eq!(act(&mut pipe, &opts, &mut queue), Did::Idle(Some(due)));
        queue.now = due;
        assert_eq!(act(&mut pipe, &opts, &mut queue), Did::Execute(0));
        assert_eq!(queue.queued(), 0, "the partial batch took both items");
    }

    #[test]
    fn draining_forms_partial_batches_at_once() {
        let opts = options(4, DELAY);
        let mut pipe = Pipeline { draining: true, ..Default::default() };
        let mut queue = FakeQueue::plain(1);
        assert_eq!(act(&mut pipe, &opts, &mut queue), Did::Execute(0));
    }

    #[test]
    fn without_a_delay_a_partial_batch_forms_at_once() {
        let opts = options(4, Duration::ZERO);
        let mut pipe = Pipeline::default();
        let mut queue = FakeQueue::plain(1);
        assert_eq!(act(&mut pipe, &opts, &mut queue), Did::Execute(0));
        assert_eq!(queue.clock_reads.get(), 0, "no delay: the clock is not read");
    }

    #[test]
    fn an_empty_queue_gives_no_work() {
        let opts = options(4, DELAY);
        let mut pipe = Pipeline { draining: true, ..Default::default() };
        let mut queue = FakeQueue::plain(0);
        assert_eq!(act(&mut pipe, &opts, &mut queue), Did::Idle(None));
        assert_eq!(pipe.formation(&opts, &queue), Formation::Empty);
    }

    #[test]
    fn prefetch_depth_limits_batches_claimed_ahead() {
        let opts = HandlerOptions { prefetch_depth: 2, ..options(1, Duration::ZERO) };
        let mut pipe = Pipeline::default();
        let mut queue = FakeQueue::needing_prepare(5);
        assert_eq!(act(&mut pipe, &opts, &mut queue), Did::Prepare(0));
        assert_eq!(act(&mut pipe, &opts, &mut queue), Did::Prepare(1));
        assert_eq!(pipe.ahead(), 2);
        assert_eq!(act(&mut pipe, &opts, &mut queue), Did::Idle(None), "a third batch ahead");
        assert_eq!(queue.queued(), 3);
        pipe.stage(0, Vec::new());
        assert_eq!(act(&mut pipe, &opts, &mut queue), Did::Execute(0));
        // Executing 0, batch 1 still being prepared: room for one more ahead.
        assert_eq!(act(&mut pipe, &opts, &mut queue), Did::Prepare(2));
        assert_eq!(act(&mut pipe, &opts, &mut queue), Did::Idle(None));
        assert_eq!(queue.queued(), 2);
    }

    #[test]
    fn only_batches_that_need_preparation_are_claimed_ahead() {
        let opts = HandlerOptions { prefetch_depth: 4, ..options(1, Duration::ZERO) };
        let mut pipe = Pipeline::default();
        let mut queue = FakeQueue::plain(2);
        assert_eq!(act(&mut pipe, &opts, &mut queue), Did::Execute(0));
        assert_eq!(act(&mut pipe, &opts, &mut queue), Did::Idle(None));
        pipe.executed();
        assert_eq!(act(&mut pipe, &opts, &mut queue), Did::Execute(1));
    }

    #[test]
    fn staged_batches_execute_in_claim_order() {
        let opts = HandlerOptions { prefetch_depth: 3, ..options(1, Duration::ZERO) };
        let mut pipe = Pipeline::default();
        let mut queue = FakeQueue::needing_prepare(3);
        for seq in 0..3 {
            assert_eq!(act(&mut pipe, &opts, &mut queue), Did::Prepare(seq));
        }
        // The later batches are prepared first: they wait for batch 0.
        pipe.stage(2, Vec::new());
        pipe.stage(1, Vec::new());
        assert_eq!(act(&mut pipe, &opts, &mut queue), Did::Idle(None));
        pipe.stage(0, Vec::new());
        for seq in 0..3 {
            assert_eq!(act(&mut pipe, &opts, &mut queue), Did::Execute(seq));
            assert_eq!(pipe.staged.keys().copied().collect::<Vec<_>>(), (seq + 1..3).collect::<Vec<_>>());
            // One execution slot: the next waits until this one is done.
            assert_eq!(act(&mut pipe, &opts, &mut queue), Did::Idle(None));
            pipe.executed();
        }
        assert_eq!(act(&mut pipe, &opts, &mut queue), Did::Idle(None));
        assert_eq!((pipe.batches_in_flight, pipe.executing), (0, 0));
    }

    #[test]
    fn a_batch_does_not_execute_ahead_of_one_claimed_earlier() {
        let opts = HandlerOptions { concurrency: 2, ..options(1, Duration::ZERO) };
        let mut pipe = Pipeline::default();
        let mut queue = FakeQueue::new(&[true, false]);
        assert_eq!(act(&mut pipe, &opts, &mut queue), Did::Prepare(0));
        // A slot is free, but batch 0 is still being prepared.
        assert_eq!(act(&mut pipe, &opts, &mut queue), Did::Idle(None));
        pipe.stage(0, Vec::new());
        assert_eq!(act(&mut pipe, &opts, &mut queue), Did::Execute(0));
        assert_eq!(act(&mut pipe, &opts, &mut queue), Did::Execute(1));
    }

    #[test]
    fn a_batch_claimed_ahead_that_needs_no_preparation_is_staged() {
        let opts = HandlerOptions { prefetch_depth: 2, ..options(1, Duration::ZERO) };
        let mut pipe = Pipeline::default();
        assert_eq!(pipe.claimed(true, false), Route::Execute);
        // Claimed ahead while 0 executes (its items that needed preparation expired).
        assert_eq!(pipe.claimed(false, false), Route::Stage(1));
        pipe.stage(1, Vec::new());
        let mut queue = FakeQueue::plain(0);
        assert_eq!(act(&mut pipe, &opts, &mut queue), Did::Idle(None));
        pipe.executed();
        assert_eq!(act(&mut pipe, &opts, &mut queue), Did::Execute(1));
    }

    #[test]
    fn execution_slots_limit_batches_executing_at_once() {
        let opts = HandlerOptions { concurrency: 2, ..options(1, Duration::ZERO) };
        let mut pipe = Pipeline::default();
        let mut queue = FakeQueue::plain(3);
        assert_eq!(act(&mut pipe, &opts, &mut queue), Did::Execute(0));
        assert_eq!(act(&mut pipe, &opts, &mut queue), Did::Execute(1));
        assert_eq!(act(&mut pipe, &opts, &mut queue), Did::Idle(None), "a third slot");
        pipe.executed();
        assert_eq!(act(&mut pipe, &opts, &mut queue), Did::Execute(2));
    }

    #[test]
    fn replicas_limit_batches_in_flight() {
        let opts = options(1, Duration::ZERO);
        let mut pipe = Pipeline::default();
        let mut queue = FakeQueue::plain(3);
        for _ in 0..2 {
            assert_eq!(pipe.replica_step(2, &opts, &queue), ReplicaStep::Claim);
            queue.take(1);
            pipe.replica_claimed();
        }
        let idle = ReplicaStep::Idle { delay_until: None, ended: false };
        assert_eq!(pipe.replica_step(2, &opts, &queue), idle);
        pipe.replica_finished();
        assert_eq!(pipe.replica_step(2, &opts, &queue), ReplicaStep::Claim);
    }

    #[test]
    fn a_replica_waits_for_the_batch_delay() {
        let opts = options(4, DELAY);
        let mut pipe = Pipeline::default();
        let mut queue = FakeQueue::plain(1);
        let due = queue.enqueued + DELAY;
        assert_eq!(
            pipe.replica_step(1, &opts, &queue),
            ReplicaStep::Idle { delay_until: Some(due), ended: false }
        );
        queue.now = due;
        assert_eq!(pipe.replica_step(1, &opts, &queue), ReplicaStep::Claim);
    }

    #[test]
    fn close_with_an_empty_queue_ends_the_run() {
        let opts = options(1, Duration::ZERO);
        let mut pipe = Pipeline::default();
        let mut queue = FakeQueue::plain(0);
        let waits = ReplicaStep::Idle { delay_until: None, ended: false };
        assert_eq!(pipe.replica_step(1, &opts, &queue), waits, "open and empty: wait");
        queue.closed = true;
        queue.items.push_back(false);
        pipe.replica_claimed();
        assert_eq!(pipe.replica_step(1, &opts, &queue), waits, "closed, items left: wait for a slot");
        pipe.replica_finished();
        assert_eq!(pipe.replica_step(1, &opts, &queue), ReplicaStep::Claim, "closed, items left: take them");
        queue.take(1);
        let ends = ReplicaStep::Idle { delay_until: None, ended: true };
        assert_eq!(pipe.replica_step(1, &opts, &queue), ends);
    }
}
