//! The driver: who runs a handler's batches, and the wake-up protocol between producers
//! and runners, in one place. On the shared pool a handler has at most one *primary* run
//! (it owns `Flow::scheduled`) plus helper runs (preparation, a second execution slot,
//! a hand-over while slow finalizers run); sub-interpreter replicas instead block in
//! `next_batch` on `replica_wake`.
//!
//! The protocol: a producer pushes, then `kick`s (fence, then reads `scheduled` or
//! `idle_replicas`); a runner going idle clears `scheduled` (or counts itself idle),
//! fences, then looks at the queue once more. One of the two always sees the other.
//!
//! The pool and the timer reach a handler through the traits it implements here
//! (`PoolWork`, `TimerEvents`): statically dispatched, as their generic parameter.
//!
//! May call: `pipeline` (its decisions), `formation`, `prepare`, `execute`, `accounting`,
//! `pool`, `timer`.

use super::clock;
use super::formation::Action;
use super::handler::{Entry, HandlerCore, Item};
use super::pipeline::ReplicaStep;
use super::pool::PoolWork;
use super::prepare::PrepareWork;
use super::timer::{TimerEvents, TimerTarget};
use crate::error::ErrorKind;
use std::sync::atomic::{
    fence, Ordering::AcqRel, Ordering::Acquire, Ordering::Relaxed, Ordering::Release, Ordering::SeqCst,
};
use std::sync::Arc;
use std::time::Instant;

/// Finalizers as slow as the C++ wrapper fulfilling a `std::promise` (a system call each
/// in glibc: 300-750 ns per item on the 2-core VM; publishing a `pyscheduler::Future`
/// takes ~20, a tensor item's C completion callback and the drop of its job 50-110, with
/// rare page-fault outliers): a batch with at least this many such finalizers hands the
/// next batch to another worker while they run. Below that the hand-over costs more than
/// it saves: the next batch starts on a cold worker, and on two cores that worker takes
/// the core the producer was using.
const SLOW_FINALIZER_NS: u64 = 200;
const FINALIZERS_WORTH_A_HELPER: usize = 8;

impl HandlerCore {
    /// Makes sure a runner will look at this handler: submits a primary run to the pool
    /// unless one is pending or running; with replicas, wakes an idle replica.
    pub(super) fn kick(&self) {
        if self.replicas > 0 {
            fence(SeqCst);
            if self.idle_replicas.load(SeqCst) > 0 {
                let _pipe = self.lock();
                self.replica_wake.notify_one();
            }
            return;
        }
        fence(SeqCst);
        if !self.flow.scheduled.load(SeqCst) && !self.flow.scheduled.swap(true, SeqCst) {
            if let Some(me) = self.weak_self.upgrade() {
                self.pool.submit(me, true);
            }
        }
    }

    /// Items that need GIL-free preparation may be prepared while a batch executes: make
    /// sure a helper run looks at them even when the primary run is busy executing.
    pub(super) fn kick_preparation(&self) {
        if self.replicas == 0
            && !self.flow.prepare_kick.load(Acquire)
            && !self.flow.prepare_kick.swap(true, AcqRel)
        {
            if let Some(me) = self.weak_self.upgrade() {
                self.pool.submit(me, false);
            }
        }
    }

    pub(super) fn arm_delay_timer(&self, at: Instant) {
        if !self.flow.delay_timer_armed.load(Acquire) && !self.flow.delay_timer_armed.swap(true, AcqRel) {
            self.pool.timer.add(at, TimerTarget::Handler(self.weak_self.clone()));
        }
    }

    /// Called by the timer when a batch delay ends.
    pub(super) fn on_delay_timer(&self) {
        self.flow.delay_timer_armed.store(false, Release);
        self.kick();
    }

    /// A runner's turn on this handler: runs steps until none is left or other
    /// handlers are waiting (then it requeues itself behind them). `primary` runs own
    /// the `scheduled` flag; helper runs (extra preparation) do not.
    pub(super) fn run(self: &Arc<Self>, mut primary: bool) {
        if !primary {
            self.flow.prepare_kick.store(false, Release);
        }
        let mut expired = Vec::new();
        let mut pipe = self.lock();
        loop {
            let action = self.next_action_locked(&mut pipe, &mut expired);
            pipe = self.fail_expired(pipe, &mut expired);
            match action {
                Action::Idle => {
                    if !primary {
                        return;
                    }
                    // Hand the run back, then look once more: a producer that pushed
                    // before the store is seen here; one after it sees the flag clear
                    // (the fences pair with those in `kick`).
                    self.flow.scheduled.store(false, SeqCst);
                    fence(SeqCst);
                    if self.work_available_locked(&mut pipe) && !self.flow.scheduled.swap(true, SeqCst) {
                        continue;
                    }
                    return;
                }
                Action::Prepare(seq, batch) => {
                    // Let another worker take the next batch (or execute) meanwhile.
                    if pipe.room_ahead(self.options.prefetch_depth) && self.work_available_locked(&mut pipe) {
                        if let Some(me) = self.weak_self.upgrade() {
                            self.pool.submit(me, false);
                        }
                    }
                    drop(pipe);
                    let batch = self.prepare_batch(batch);
                    pipe = self.lock();
                    pipe.stage(seq, batch);
                    if !primary
                        && !self.flow.scheduled.load(SeqCst)
                        && !self.flow.scheduled.swap(true, SeqCst)
                    {
                        // The primary went idle while we prepared: carry on as primary.
                        primary = true;
                    }
                }
                Action::Execute(batch) => {
                    if self.work_available_locked(&mut pipe) {
                        // Another execution slot is free (concurrency > 1), or batches can be
                        // prepared ahead: a helper does that while this batch runs.
                        if let Some(me) = self.weak_self.upgrade() {
                            self.pool.submit(me, false);
                        }
                    }
                    drop(pipe);
                    let n = batch.len();
                    let completed = self.execute_batch(batch);
                    pipe = self.lock();
                    pipe.executed();
                    let slow_finalizers = completed.len() >= FINALIZERS_WORTH_A_HELPER
                        && self.finalize_ns_per_item.load(Relaxed) >= SLOW_FINALIZER_NS;
                    if slow_finalizers && self.work_available_locked(&mut pipe) {
                        // Another worker executes the next batch while this one finalizes.
                        if let Some(me) = self.weak_self.upgrade() {
                            self.pool.submit(me, false);
                        }
                    }
                    drop(pipe);
                    // The completed items' finalizers run after the GIL hold, before the
                    // items count as finished (drain waits for them).
                    if !completed.is_empty() {
                        let count = completed.len() as u64;
                        let start = clock::now_ns();
                        self.as_executing_batch(|| drop(completed));
                        let per_item = clock::now_ns().saturating_sub(start) / count;
                        self.finalize_ns_per_item.store(per_item, Relaxed);
                    }
                    self.finish_items(n);
                    pipe = self.lock();
                    if primary && self.pool.others_waiting() && self.work_available_locked(&mut pipe) {
                        // Round-robin: go to the back of the ready queue, still scheduled.
                        if let Some(me) = self.weak_self.upgrade() {
                            self.pool.submit(me, true);
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// The replicas' side: a sub-interpreter replica (src/subinterp.rs) blocks in
/// `next_batch`, resolves every item of the batch it got, then reports it with
/// `finish_batch`.
impl HandlerCore {
    /// Blocks (call it with no GIL held) until a batch is available, or returns None once
    /// the handler is closed and nothing is left (`Pipeline::replica_step` decides).
    pub(crate) fn next_batch(&self) -> Option<Vec<Entry>> {
        let mut expired = Vec::new();
        let mut pipe = self.lock();
        loop {
            match pipe.replica_step(self.replicas, &self.options, self) {
                ReplicaStep::Claim => {
                    let batch = self.claim_locked(&mut pipe, &mut expired);
                    pipe = self.fail_expired(pipe, &mut expired);
                    if batch.is_empty() {
                        continue;
                    }
                    pipe.replica_claimed();
                    drop(pipe);
                    // Another replica may take the next batch meanwhile.
                    self.kick();
                    return Some(self.prepare_serial(batch));
                }
                ReplicaStep::Idle { delay_until, ended } => {
                    if let Some(due) = delay_until {
                        self.arm_delay_timer(due);
                    }
                    if ended {
                        self.replica_wake.notify_all();
                        return None;
                    }
                }
            }
            // Announce the wait, then look once more (pairs with the fence in `kick`).
            self.idle_replicas.fetch_add(1, SeqCst);
            fence(SeqCst);
            if self.incoming.is_empty() {
                pipe = self.replica_wake.wait(pipe).unwrap_or_else(|p| p.into_inner());
            }
            self.idle_replicas.fetch_sub(1, SeqCst);
        }
    }

    /// Reports a batch whose items have all been resolved.
    pub(crate) fn finish_batch(&self, items: usize) {
        self.lock().replica_finished();
        self.finish_items(items);
        self.kick();
    }
}

impl PoolWork for HandlerCore {
    type Prepare = PrepareWork;

    #[inline]
    fn run_on_worker(self: &Arc<Self>, primary: bool) {
        self.run(primary);
    }

    #[inline]
    fn prepare_on_worker(&self, work: &PrepareWork) {
        self.prepare_some(work);
    }
}

impl TimerEvents for HandlerCore {
    #[inline]
    fn delay_ended(&self) {
        self.on_delay_timer();
    }

    fn deadline_passed(item: &Arc<Item>) {
        let handler = item.handler.upgrade();
        item.finish_unstarted(ErrorKind::TimedOut, handler.as_deref());
    }
}
