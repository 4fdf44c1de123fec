//! [`HandlerCore`]: a bound Python callable with its queue, and the state its parts share.
//! The lock-free part (the `incoming` queue and the `Flow` counters producers touch) sits
//! beside the one mutex, which guards the locked part, [`Pipeline`] (`pipeline`: plain
//! sequencing data and the decisions made on it). Its behaviour is split by concern:
//! `admission` (producers), `formation` (taking batches), `driver` (who runs them, and
//! the wake-up protocol), `prepare`, `execute`, `accounting`, `drain`.
//!
//! The generic parts below it are fixed here to `HandlerCore` (the aliases [`Entry`],
//! [`Item`], [`Pipeline`], [`Pool`]).
//!
//! May call: `options`, `item`, `batch_exec`, `clock`, `pipeline`, `pool` (its `Arc`),
//! `crate::stats`.

use super::batch_exec::BatchExec;
use super::clock;
use super::item;
use super::options::HandlerOptions;
use super::pipeline;
use super::pool;
use crate::stats::{Counters, Emas, Histograms};
use crossbeam_utils::CachePadded;
use pyo3::prelude::*;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Acquire};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};

/// A queued item of a handler.
pub(crate) type Entry = item::Entry<HandlerCore>;
/// An item of a handler that a future or the timer can reach.
pub(crate) type Item = item::Item<HandlerCore>;
/// A handler's sequencing state.
pub(super) type Pipeline = pipeline::Pipeline<Entry>;
/// The worker threads that run handlers.
pub(crate) type Pool = pool::Pool<HandlerCore>;

/// Lock-free submission: an unbounded queue of entries in blocks of 31 (crossbeam's
/// `SegQueue`). A producer reserves a slot with one CAS and writes its entry in place:
/// no allocation per item, and a runner reads the entries in arrival order from
/// consecutive memory (a linked stack of heap items cost a cross-thread free and a
/// pointer chase per item on both sides). Only runners holding the pipeline lock pop.
/// A runner that meets a slot reserved but not yet written waits for that producer's
/// write (a few instructions, unless the producer is preempted right there).
pub(super) type Incoming = crossbeam_queue::SegQueue<Entry>;

/// See `HandlerCore::flow`.
///
/// The queue's sizes are differences of monotonic counts, so that a producer touches
/// one counter per item (`accepted`, one atomic read-modify-write) and the runners two
/// others per batch: queued = accepted - left, outstanding = accepted - finished. Read
/// the runners' count first (Acquire), then `accepted`: every item counted as left or
/// finished was accepted before, so a difference read that way never underflows.
#[derive(Default)]
pub(super) struct Flow {
    /// Items accepted (queued) ever.
    pub(super) accepted: AtomicU64,
    /// Accepted items that left the queue: taken into a batch, cancelled or expired.
    pub(super) left: AtomicU64,
    /// Accepted items that finished (any outcome); drain waits for `accepted`.
    pub(super) finished: AtomicU64,
    /// Items refused when submitted (shut down, full queue).
    pub(super) refused: AtomicU64,
    /// A primary run of this handler is in the pool's ready queue or running. Producers set
    /// it (and submit) when they find it clear; the primary runner clears it when idle.
    pub(super) scheduled: AtomicBool,
    /// A batch-delay timer is armed.
    pub(super) delay_timer_armed: AtomicBool,
    /// A helper run submitted by `kick_preparation` has not started yet.
    pub(super) prepare_kick: AtomicBool,
    /// Set after drain: new items are refused with `ShutDown`.
    pub(super) closed: AtomicBool,
}

impl Flow {
    /// Items accepted and not yet taken into a batch (nor cancelled or expired).
    pub(super) fn queued(&self) -> usize {
        let left = self.left.load(Acquire);
        (self.accepted.load(Acquire) - left) as usize
    }

    /// Items accepted and not yet finished.
    pub(super) fn outstanding(&self) -> usize {
        let finished = self.finished.load(Acquire);
        (self.accepted.load(Acquire) - finished) as usize
    }
}

/// A bound Python callable with its queue; shared by the user's handle, the ready
/// channel, in-flight items and the timer (weakly).
pub(crate) struct HandlerCore {
    pub(crate) name: String,
    /// `name` for the C ABI (NUL bytes replaced).
    pub(crate) name_c: std::ffi::CString,
    pub(crate) function: Py<PyAny>,
    pub(crate) options: HandlerOptions,
    pub(super) pool: Arc<Pool>,
    /// Lock-free submission: producers push here; runners take batches from it.
    pub(super) incoming: Incoming,
    /// The counters and flags, which producers touch per item and runners per batch:
    /// one cache line of their own (besides the queue's ends, the only ones producers
    /// share).
    pub(super) flow: CachePadded<Flow>,
    pub(super) pipe: Mutex<Pipeline>,
    /// Signalled when queued items are taken or finish (room in a bounded queue).
    pub(super) room: Condvar,
    /// Signalled when `outstanding` drops to zero.
    pub(super) drained: Condvar,
    /// Sub-interpreter replicas serving this handler (0: the shared worker pool).
    pub(super) replicas: usize,
    /// Replica threads waiting for work (they wait on `replica_wake` under `pipe`).
    pub(super) idle_replicas: AtomicUsize,
    pub(super) replica_wake: Condvar,
    /// Written by the workers (per item or per batch).
    pub(super) counters: CachePadded<Counters>,
    /// How long each finalizer of the last batch took, on average (ns).
    pub(super) finalize_ns_per_item: AtomicU64,
    /// Items taken into a batch whose future is not resolved yet; decremented just before
    /// each resolution so stats read after a future resolves already exclude it.
    pub(super) items_in_batches: CachePadded<AtomicU64>,
    /// Written right after each Python call returns, before its results fan out.
    pub(super) emas: Mutex<Emas>,
    pub(crate) histograms: Histograms,
    /// A batch step of its own (a tensor handler's), called once per batch; None: the
    /// core's list harness.
    pub(crate) batch_exec: Option<Arc<dyn BatchExec<HandlerCore>>>,
    pub(super) weak_self: Weak<HandlerCore>,
}

thread_local! {
    /// The handler whose batch this worker thread is executing, to detect a handler
    /// being drained from inside its own callback.
    pub(super) static EXECUTING: std::cell::Cell<*const HandlerCore> = const { std::cell::Cell::new(std::ptr::null()) };
}

impl HandlerCore {
    pub(crate) fn new(
        name: String,
        function: Py<PyAny>,
        options: HandlerOptions,
        pool: Arc<Pool>,
        replicas: usize,
        batch_exec: Option<Arc<dyn BatchExec<HandlerCore>>>,
    ) -> Arc<HandlerCore> {
        clock::now_ns(); // calibrates the clock (~1 ms) here rather than in the first enqueue
        Arc::new_cyclic(|weak| HandlerCore {
            name_c: std::ffi::CString::new(name.replace('\0', "?")).unwrap_or_default(),
            name,
            function,
            options,
            pool,
            incoming: Incoming::default(),
            flow: CachePadded::new(Flow::default()),
            pipe: Mutex::new(Pipeline::default()),
            room: Condvar::new(),
            drained: Condvar::new(),
            replicas,
            idle_replicas: AtomicUsize::new(0),
            replica_wake: Condvar::new(),
            counters: CachePadded::new(Counters::default()),
            items_in_batches: CachePadded::new(AtomicU64::new(0)),
            finalize_ns_per_item: AtomicU64::new(0),
            emas: Mutex::new(Emas::default()),
            histograms: Histograms::default(),
            batch_exec,
            weak_self: weak.clone(),
        })
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Pipeline> {
        self.pipe.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` with this thread marked as executing one of this handler's batches (its
    /// callbacks, then its finalizers), so that a drain called from one of them does not
    /// wait for the batch it is part of; sub-interpreter replicas (src/subinterp.rs) wrap
    /// each batch in it too. Restores the previous mark.
    pub(crate) fn as_executing_batch<R>(&self, f: impl FnOnce() -> R) -> R {
        let previous = EXECUTING.with(|e| e.replace(self as *const _));
        let r = f();
        EXECUTING.with(|e| e.set(previous));
        r
    }
}

impl Drop for HandlerCore {
    fn drop(&mut self) {
        // Nothing can be queued once the last reference is gone, but fail anything that
        // slipped in after the final drain rather than lose it.
        let front = self.pipe.get_mut().unwrap_or_else(|p| p.into_inner()).front.take();
        let error = self.shut_down_error();
        for entry in front.into_iter().chain(std::iter::from_fn(|| self.incoming.pop())) {
            entry.fail_unstarted(&error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::item::Detached;
    use crate::core::job::{Job, JobSlot};
    use crate::error::{Error, Result};

    /// What producers write per item besides their entry fits one cache line.
    #[test]
    fn flow_is_one_cache_line() {
        assert!(std::mem::size_of::<Flow>() <= 64, "Flow is {} bytes", std::mem::size_of::<Flow>());
    }

    struct Noop;

    impl Job for Noop {
        fn commit(&mut self, py: Python<'_>) -> Result<Py<PyAny>> {
            Ok(py.None())
        }
        fn complete(&mut self, _py: Python<'_>, _result: &Bound<'_, PyAny>) -> Result<()> {
            Ok(())
        }
        fn fail(&mut self, _error: &Error) {}
    }

    /// A detached entry whose `enqueued_ns` carries `tag`.
    fn tagged(tag: u64) -> Entry {
        Entry::Detached(Detached::new(JobSlot::Boxed(Box::new(Noop)), tag, false, false))
    }

    /// Producers racing on `Incoming` lose nothing, and each producer's items come out in
    /// the order it pushed them, while the consumer pops concurrently.
    #[test]
    fn incoming_keeps_each_producers_order() {
        const PRODUCERS: u64 = 4;
        const EACH: u64 = 20_000;
        let incoming = Arc::new(Incoming::default());
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                let incoming = incoming.clone();
                std::thread::spawn(move || {
                    for i in 0..EACH {
                        incoming.push(tagged(p << 32 | i));
                    }
                })
            })
            .collect();
        let mut next = [0u64; PRODUCERS as usize];
        let mut seen = 0;
        while seen < PRODUCERS * EACH {
            let Some(entry) = incoming.pop() else { continue };
            let tag = entry.enqueued_ns();
            let (p, i) = (tag >> 32, tag & 0xffff_ffff);
            assert_eq!(i, next[p as usize], "producer {p} out of order");
            next[p as usize] += 1;
            seen += 1;
        }
        for p in producers {
            p.join().unwrap();
        }
        assert!(incoming.is_empty());
    }
}
