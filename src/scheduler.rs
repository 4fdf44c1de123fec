//! The worker pool and each handler's pipeline: items are queued, taken in batches
//! (optionally prepared without the GIL, ahead of execution), committed and passed to
//! Python as one list under a single GIL hold, and fanned out to their completions.
//!
//! Workers block on the pool's queue of handlers that have work (no polling); a handler
//! is in that queue at most once, and a worker that finishes a batch while other handlers
//! wait puts its handler back at the end (round-robin). A timer thread fires batch-delay
//! and per-item deadline events.

use crate::error::{Error, ErrorKind, Result};
use crate::future::Completion;
use crate::python_err::report_stray;
use crate::stats::{Counters, Emas, HandlerStats, Histograms, LocalHistogram};
use crossbeam_utils::CachePadded;
use pyo3::ffi;
use pyo3::prelude::*;
use std::cell::UnsafeCell;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::atomic::{
    fence, AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering::AcqRel, Ordering::Acquire,
    Ordering::Relaxed, Ordering::Release, Ordering::SeqCst,
};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

/// The work of one queued item, supplied by the submitter. Exactly one of `complete`
/// or `fail` is called, then the job is dropped (its `Drop` is the finalizer).
pub trait Job: Send + 'static {
    /// Whether [`Job::prepare`] has work to do; such items are prepared ahead of
    /// execution, up to `prefetch_depth` batches, on pool threads without the GIL.
    fn needs_prepare(&self) -> bool {
        false
    }

    /// Whether the item opens a new group of rows (a tensor item copied into row 0 of a
    /// fresh set of batch buffers): a batch ends before it, so that batches line up with
    /// the sets and run on their rows without a gather.
    #[doc(hidden)]
    fn starts_group(&self) -> bool {
        false
    }
    /// GIL-free staging (decoding, GPU uploads). Runs on a pool thread WITHOUT the GIL.
    fn prepare(&mut self) -> Result<()> {
        Ok(())
    }
    /// Builds the item's Python object. Runs with the GIL held, just before the call.
    fn commit(&mut self, py: Python<'_>) -> Result<Py<PyAny>>;
    /// Receives the item's element of the function's result. GIL held. An error fails
    /// the item (its future gets it); other items are unaffected.
    fn complete(&mut self, py: Python<'_>, result: &Bound<'_, PyAny>) -> Result<()>;
    /// Receives the item's failure (its own commit, its batch's Python error, cancel,
    /// deadline, rejection or shutdown). Any thread; the GIL may or may not be held.
    fn fail(&mut self, error: &Error);

    /// Whether the job can run in an own-GIL sub-interpreter replica, which only raw
    /// C-API callbacks can (pyo3's safe API caches objects per process).
    fn supports_raw(&self) -> bool {
        false
    }
    /// Raw commit for sub-interpreter replicas: the replica's interpreter is current and
    /// its GIL held. Returns a new reference, or NULL with a Python exception set.
    fn commit_raw(&mut self) -> *mut ffi::PyObject {
        std::ptr::null_mut()
    }
    /// Raw completion for sub-interpreter replicas: `result` is borrowed, the replica's
    /// interpreter is current and its GIL held. An error fails the item.
    fn complete_raw(&mut self, result: *mut ffi::PyObject) -> Result<()> {
        let _ = result;
        Ok(())
    }
}

/// Where the replica threads of a sub-interpreter handler get their work; implemented
/// by `HandlerCore`. Batches are claimed (and prepared) by `next_batch`; the replica
/// resolves every item of a batch through `complete_item`/`fail_item`, then reports
/// the batch with `finish_batch`.
#[allow(dead_code)] // The sub-interpreter replicas (src/subinterp.rs) are its user.
pub(crate) trait BatchSource: Send + Sync {
    /// Blocks (call it with no GIL held) until a batch is available, or returns None once
    /// the handler is closed and nothing is left.
    fn next_batch(&self) -> Option<Vec<Entry>>;
    /// Resolves an item whose completion ran: `outcome` is what `complete_raw` returned.
    /// Drops the job (its finalizer runs here).
    fn complete_item(&self, item: &Entry, job: Box<dyn Job>, outcome: Result<()>);
    /// Fails one item of a claimed batch (commit error, Python error, bad result).
    fn fail_item(&self, item: &Entry, job: Option<Box<dyn Job>>, error: Error);
    /// Records a batch's timings (stats, histograms); call it right after the Python
    /// call returns and before resolving its items.
    fn record_timings(&self, items: usize, commit_ns: u64, execute_ns: u64, executed: usize);
    /// Reports a batch whose items have all been resolved.
    fn finish_batch(&self, items: usize);
    /// The handler's name, for error messages.
    fn name(&self) -> &str;
}

/// An item's job, kept inside the item: the C ABI's callbacks inline (one allocation per
/// queued item instead of two, and one cross-thread free less), any other job boxed.
pub(crate) enum JobSlot {
    C(crate::ffi::handler::CJob),
    Boxed(Box<dyn Job>),
    /// A tensor handler's item (see `tensor::execute`).
    Tensor(crate::tensor::job::TensorBox),
}

impl JobSlot {
    fn into_boxed(self) -> Box<dyn Job> {
        match self {
            JobSlot::C(job) => Box::new(job),
            JobSlot::Boxed(job) => job,
            JobSlot::Tensor(job) => Box::new(job),
        }
    }
}

impl From<Box<dyn Job>> for JobSlot {
    fn from(job: Box<dyn Job>) -> Self {
        JobSlot::Boxed(job)
    }
}

impl std::ops::Deref for JobSlot {
    type Target = dyn Job;
    fn deref(&self) -> &(dyn Job + 'static) {
        match self {
            JobSlot::C(job) => job,
            JobSlot::Boxed(job) => &**job,
            JobSlot::Tensor(job) => &**job,
        }
    }
}

impl std::ops::DerefMut for JobSlot {
    fn deref_mut(&mut self) -> &mut (dyn Job + 'static) {
        match self {
            JobSlot::C(job) => job,
            JobSlot::Boxed(job) => &mut **job,
            JobSlot::Tensor(job) => &mut **job,
        }
    }
}

/// Finalizers as slow as the C++ wrapper fulfilling a `std::promise` (a system call each
/// in glibc, ~250 ns here; publishing a `pyscheduler::Future` takes ~20): a batch with at
/// least this many such finalizers hands the next batch to another worker while they run.
const SLOW_FINALIZER_NS: u64 = 100;
const FINALIZERS_WORTH_A_HELPER: usize = 8;

const QUEUED: u8 = 0;
const CLAIMED: u8 = 1;
const FINISHED: u8 = 2;

/// An item a future or the timer can reach (queued with a future handle or a
/// deadline), shared by its handler's queue, its future and the timer.
// Laid out in the order a worker reads it (`C`).
#[repr(C)]
pub(crate) struct Item {
    /// QUEUED -> CLAIMED (a worker took it) or QUEUED -> FINISHED (cancel, deadline,
    /// shutdown): whoever wins the transition from QUEUED owns the job.
    state: AtomicU8,
    keep_value: bool,
    needs_prepare: bool,
    starts_group: bool,
    /// Times as `clock` nanoseconds (8 bytes instead of an `Instant`'s 16).
    enqueued_ns: u64,
    deadline_ns: Option<std::num::NonZeroU64>,
    job: JobCell,
    /// For the accounting of a cancel or an expiry.
    handler: Weak<HandlerCore>,
    /// Where a future reads the outcome; None for an item queued with a deadline but
    /// no future handle (its callbacks are all there is).
    completion: Option<Box<Completion>>,
}

/// A queued item as the queue holds it.
pub(crate) enum Entry {
    /// Nothing but the queue can reach it (no future handle, no deadline: the C ABI's
    /// fire-and-forget items, and so the C++ wrapper's `queue_invoke` and
    /// `queue_invoke_future` without a timeout): it lives inline in the queue's blocks,
    /// with no allocation, reference count or state machine of its own, and whoever
    /// holds the entry owns it.
    Detached(Detached),
    /// Queued with a future handle or a deadline.
    Shared(Arc<Item>),
}

pub(crate) struct Detached {
    job: JobCell,
    /// `enqueued_ns` in the low 61 bits (73 years), `needs_prepare` in the top one,
    /// `starts_group` in bit 61, and bit 62 always set: never zero, so `Entry` keeps its discriminant in this
    /// word's niche (the job's cell hides the job's), and the entry is 56 bytes instead
    /// of 64. A queue block (31 entries with their state words, 1992 bytes) then takes
    /// mimalloc's 2048-byte size class instead of 2560: 66 bytes per queued item
    /// instead of 83.
    stamp: std::num::NonZeroU64,
}

const NEEDS_PREPARE_BIT: u64 = 1 << 63;
const STAMP_BIT: u64 = 1 << 62;
const STARTS_GROUP_BIT: u64 = 1 << 61;
const TIME_MASK: u64 = STARTS_GROUP_BIT - 1;

impl Detached {
    fn new(job: JobSlot, enqueued_ns: u64, needs_prepare: bool, starts_group: bool) -> Self {
        let flags = if needs_prepare { NEEDS_PREPARE_BIT } else { 0 }
            | if starts_group { STARTS_GROUP_BIT } else { 0 };
        let stamp = (enqueued_ns & TIME_MASK) | STAMP_BIT | flags;
        Detached { job: JobCell::new(job), stamp: std::num::NonZeroU64::new(stamp).expect("bit 62 is set") }
    }

    fn enqueued_ns(&self) -> u64 {
        self.stamp.get() & TIME_MASK
    }

    fn needs_prepare(&self) -> bool {
        self.stamp.get() & NEEDS_PREPARE_BIT != 0
    }

    fn starts_group(&self) -> bool {
        self.stamp.get() & STARTS_GROUP_BIT != 0
    }
}

impl Entry {
    pub(crate) fn enqueued_ns(&self) -> u64 {
        match self {
            Entry::Detached(d) => d.enqueued_ns(),
            Entry::Shared(item) => item.enqueued_ns,
        }
    }

    fn needs_prepare(&self) -> bool {
        match self {
            Entry::Detached(d) => d.needs_prepare(),
            Entry::Shared(item) => item.needs_prepare,
        }
    }

    fn starts_group(&self) -> bool {
        match self {
            Entry::Detached(d) => d.starts_group(),
            Entry::Shared(item) => item.starts_group,
        }
    }

    /// False once a shared item was cancelled or expired (it stays in the queue until
    /// a runner reaches it).
    fn is_queued(&self) -> bool {
        match self {
            Entry::Detached(_) => true,
            Entry::Shared(item) => item.state.load(Acquire) == QUEUED,
        }
    }

    /// Takes the item out of the queue's state machine for a batch; false if a cancel
    /// or deadline finished it first.
    fn claim(&self) -> bool {
        match self {
            Entry::Detached(_) => true,
            Entry::Shared(item) => item.state.compare_exchange(QUEUED, CLAIMED, AcqRel, Acquire).is_ok(),
        }
    }

    pub(crate) fn job_cell(&self) -> &JobCell {
        match self {
            Entry::Detached(d) => &d.job,
            Entry::Shared(item) => &item.job,
        }
    }

    /// Takes the job. The caller owns the entry (see `JobCell`).
    pub(crate) fn take_slot(&self) -> Option<JobSlot> {
        self.job_cell().take()
    }

    /// The job, boxed (for the sub-interpreter replicas).
    pub(crate) fn take_job(&self) -> Option<Box<dyn Job>> {
        self.take_slot().map(JobSlot::into_boxed)
    }

    /// Whether a future reads this item's outcome.
    pub(crate) fn has_completion(&self) -> bool {
        matches!(self, Entry::Shared(item) if item.completion.is_some())
    }

    fn keep_value(&self) -> bool {
        matches!(self, Entry::Shared(item) if item.keep_value)
    }

    pub(crate) fn resolve(&self, outcome: crate::future::Outcome) {
        if let Entry::Shared(item) = self {
            item.resolve(outcome);
        }
    }

    /// Fails an entry refused at submission or left in the queue of a dropped handler
    /// (unless a shared item finished already).
    fn fail_unstarted(&self, error: &Error) {
        match self {
            Entry::Detached(d) => fail_job(d.job.take(), error),
            Entry::Shared(item) => {
                item.fail_if_queued(error.clone(), || ());
            }
        }
    }
}

/// An item's job, without a lock: it has one owner at a time, who alone touches it. The
/// creator until the item is queued; then the thread that moves `state` out of QUEUED (a
/// runner claiming the batch, and the pool threads it hands the batch's preparation to,
/// each for its own items and ordered by `PrepareWork`'s counters; or the canceller, the
/// timer, the handler's drop).
pub(crate) struct JobCell(UnsafeCell<Option<JobSlot>>);

// SAFETY: the cell is only accessed by the item's single owner (above); ownership passes
// between threads through the acquire/release operations on `Item::state` and the queues.
unsafe impl Sync for JobCell {}

impl JobCell {
    fn new(job: JobSlot) -> Self {
        JobCell(UnsafeCell::new(Some(job)))
    }

    /// Takes the job. The caller owns the item.
    fn take(&self) -> Option<JobSlot> {
        // SAFETY: exclusive access by the owner (the protocol above).
        unsafe { (*self.0.get()).take() }
    }

    /// The job, in place. PRECONDITION: the caller owns the item and holds no other
    /// reference into the cell.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn get_mut(&self) -> Option<&mut JobSlot> {
        (*self.0.get()).as_mut()
    }
}

impl Item {
    /// Stores the outcome for the future, if the item has one (a detached item's outcome
    /// holds no Python object: it never keeps the value).
    fn resolve(&self, outcome: crate::future::Outcome) {
        if let Some(completion) = &self.completion {
            completion.resolve(outcome);
        }
    }

    /// The completion slot of an item queued for a future.
    pub(crate) fn completion(&self) -> &Completion {
        self.completion.as_deref().expect("an item with a future has a completion slot")
    }

    /// Takes the job. The caller owns the item (see `JobCell`).
    fn take_slot(&self) -> Option<JobSlot> {
        self.job.take()
    }

    /// Cancels a queued item; false if it already started or finished.
    pub(crate) fn cancel(self: &Arc<Self>) -> bool {
        self.finish_unstarted(ErrorKind::Cancelled, self.handler.upgrade().as_deref())
    }

    /// Fails an item that has not started; `handler` is its handler, for the accounting
    /// (None once the handler is gone: it then failed every queued item itself).
    fn finish_unstarted(self: &Arc<Self>, kind: ErrorKind, handler: Option<&HandlerCore>) -> bool {
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

    /// Fails the item if it is still queued (whoever moves it out of QUEUED owns it):
    /// its job's `fail`, then `account` (the stats, before the future can see the
    /// outcome), then the future. False if it had already started or finished.
    fn fail_if_queued(&self, error: Error, account: impl FnOnce()) -> bool {
        if self.state.compare_exchange(QUEUED, FINISHED, AcqRel, Acquire).is_err() {
            return false;
        }
        fail_job(self.take_slot(), &error);
        account();
        self.resolve(Err(error));
        true
    }
}

fn fail_job(job: Option<JobSlot>, error: &Error) {
    if let Some(mut job) = job {
        // A panicking callback must not take the worker (and every later item) with it.
        let _ = guarded("fail", || {
            job.fail(error);
            Ok(())
        });
    }
}

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

/// The batch pipeline of a handler; guarded by `HandlerCore::pipe`, which only the
/// threads running the handler (and slow paths: drain, a full bounded queue) take.
/// Producers never take it: they push to `HandlerCore::incoming`.
#[derive(Default)]
struct Pipeline {
    /// The oldest entry of `incoming`, taken out to look at it (its age decides the batch
    /// delay); entries no longer queued (cancelled, expired) are dropped on the way.
    front: Option<Entry>,
    next_claim_seq: u64,
    next_exec_seq: u64,
    /// Prepared batches waiting for their turn, by sequence number.
    staged: BTreeMap<u64, Vec<Entry>>,
    /// Batches taken and not yet executed (or, with replicas, not yet finished).
    batches_in_flight: usize,
    /// Batches being executed (at most `concurrency`).
    executing: usize,
    /// Set by drain: flush partial batches at once, ignoring the batch delay.
    draining: bool,
    /// Producers blocked on a full bounded queue, threads blocked in drain, idle
    /// replicas: the condvars are signalled only when someone waits (a signal is a
    /// syscall).
    room_waiters: usize,
    drain_waiters: usize,
}

/// Lock-free submission: an unbounded queue of entries in blocks of 31 (crossbeam's
/// `SegQueue`). A producer reserves a slot with one CAS and writes its entry in place:
/// no allocation per item, and a runner reads the entries in arrival order from
/// consecutive memory (a linked stack of heap items cost a cross-thread free and a
/// pointer chase per item on both sides). Only runners holding the pipeline lock pop.
/// A runner that meets a slot reserved but not yet written waits for that producer's
/// write (a few instructions, unless the producer is preempted right there).
type Incoming = crossbeam_queue::SegQueue<Entry>;

/// See `HandlerCore::flow`.
#[derive(Default)]
struct Flow {
    /// Items ever submitted (accepted or refused).
    enqueued: AtomicU64,
    /// Items accepted and not yet taken into a batch (nor cancelled or expired).
    queued: AtomicUsize,
    /// Items accepted and not yet finished; drain waits for zero.
    outstanding: AtomicUsize,
    /// A primary run of this handler is in the pool's ready queue or running. Producers set
    /// it (and submit) when they find it clear; the primary runner clears it when idle.
    scheduled: AtomicBool,
    /// A batch-delay timer is armed.
    delay_timer_armed: AtomicBool,
    /// A helper run submitted by `kick_preparation` has not started yet.
    prepare_kick: AtomicBool,
    /// Set after drain: new items are refused with `ShutDown`.
    closed: AtomicBool,
}

/// A bound Python callable with its queue; shared by the user's handle, the ready
/// channel, in-flight items and the timer (weakly).
pub(crate) struct HandlerCore {
    pub(crate) name: String,
    /// `name` for the C ABI (NUL bytes replaced).
    pub(crate) name_c: std::ffi::CString,
    pub(crate) function: Py<PyAny>,
    pub(crate) options: HandlerOptions,
    pool: Arc<Pool>,
    /// Lock-free submission: producers push here; runners take batches from it.
    incoming: Incoming,
    /// The counters and flags, which producers touch per item and runners per batch:
    /// one cache line of their own (besides the queue's ends, the only ones producers
    /// share).
    flow: CachePadded<Flow>,
    pipe: Mutex<Pipeline>,
    /// Signalled when queued items are taken or finish (room in a bounded queue).
    room: Condvar,
    /// Signalled when `outstanding` drops to zero.
    drained: Condvar,
    /// Sub-interpreter replicas serving this handler (0: the shared worker pool).
    replicas: usize,
    /// Replica threads waiting for work (they wait on `replica_wake` under `pipe`).
    idle_replicas: AtomicUsize,
    replica_wake: Condvar,
    /// Written by the workers (per item or per batch).
    counters: CachePadded<Counters>,
    /// How long each finalizer of the last batch took, on average (ns).
    finalize_ns_per_item: AtomicU64,
    /// Items taken into a batch whose future is not resolved yet; decremented just before
    /// each resolution so stats read after a future resolves already exclude it.
    items_in_batches: CachePadded<AtomicU64>,
    /// Written right after each Python call returns, before its results fan out.
    emas: Mutex<Emas>,
    pub(crate) histograms: Histograms,
    /// A tensor handler's signature, buffers and placement (None: the list path).
    pub(crate) tensor: Option<crate::tensor::TensorExec>,
    weak_self: Weak<HandlerCore>,
}

/// A batch whose items several workers prepare at once.
struct PrepareWork {
    /// Each item with whether its preparation succeeded, locked by whoever prepares it
    /// (the lock is uncontended: each index is taken once) and at the end by the runner
    /// that collects them, while a helper that started late may still hold the `Arc`.
    items: Vec<Mutex<(Option<Entry>, bool)>>,
    /// Index of the next item to take.
    next: AtomicUsize,
    /// Items whose preparation has finished.
    done: AtomicUsize,
}

enum Action {
    Execute(Vec<Entry>),
    Prepare(u64, Vec<Entry>),
    Idle,
}

thread_local! {
    /// The handler whose batch this worker thread is executing, to detect a handler
    /// being drained from inside its own callback.
    static EXECUTING: std::cell::Cell<*const HandlerCore> = const { std::cell::Cell::new(std::ptr::null()) };
}

impl HandlerCore {
    pub(crate) fn new(
        name: String,
        function: Py<PyAny>,
        options: HandlerOptions,
        pool: Arc<Pool>,
        replicas: usize,
        tensor: Option<crate::tensor::TensorExec>,
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
            tensor,
            weak_self: weak.clone(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Pipeline> {
        self.pipe.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count_unstarted(&self, kind: ErrorKind) {
        let counter = match kind {
            ErrorKind::Cancelled => &self.counters.cancelled,
            ErrorKind::TimedOut => &self.counters.expired,
            _ => &self.counters.rejected,
        };
        counter.fetch_add(1, Relaxed);
    }

    /// Accounts for `n` accepted items that finished; wakes drainers at zero.
    fn finish_items(&self, n: usize) {
        if n > 0 && self.flow.outstanding.fetch_sub(n, AcqRel) == n {
            let pipe = self.lock();
            if pipe.drain_waiters > 0 {
                self.drained.notify_all();
            }
        }
    }

    /// Accounts for `n` queued items leaving the queue (taken, cancelled, expired);
    /// wakes producers blocked on a full bounded queue.
    fn dequeued(&self, n: usize, pipe: Option<&mut Pipeline>) {
        self.flow.queued.fetch_sub(n, AcqRel);
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
    fn submit(
        &self,
        job: JobSlot,
        opts: ItemOptions,
        with_future: bool,
    ) -> (Option<Arc<Item>>, Option<Error>) {
        self.flow.enqueued.fetch_add(1, Relaxed);
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
            self.counters.rejected.fetch_add(1, Relaxed);
            entry.fail_unstarted(&error);
            return (for_future, Some(error));
        }
        self.flow.outstanding.fetch_add(1, AcqRel);
        let queued = self.flow.queued.load(Acquire);
        if let (Some(deadline), Entry::Shared(item)) = (opts.deadline, &entry) {
            self.pool.timer.add(deadline, TimerTarget::Item(Arc::downgrade(item)));
        }
        // Once pushed, the item may be executed and finished at any moment.
        self.incoming.push(entry);
        let delay = self.options.max_batch_delay;
        if delay.is_zero() || queued >= self.options.batch_size {
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

    /// Items that need GIL-free preparation may be prepared while a batch executes: make
    /// sure a helper run looks at them even when the primary run is busy executing.
    fn kick_preparation(&self) {
        if self.replicas == 0
            && !self.flow.prepare_kick.load(Acquire)
            && !self.flow.prepare_kick.swap(true, AcqRel)
        {
            if let Some(me) = self.weak_self.upgrade() {
                self.pool.submit(me, false);
            }
        }
    }

    /// Takes a place in the queue: checks shutdown and the bound. Blocks (releasing the
    /// GIL if held) under `FullPolicy::Block` with a full queue.
    fn reserve_slot(&self) -> Result<()> {
        if self.flow.closed.load(Acquire) {
            return Err(self.shut_down_error());
        }
        let limit = self.options.max_queue;
        if limit == 0 {
            self.flow.queued.fetch_add(1, AcqRel);
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

    fn try_reserve(&self, limit: usize) -> bool {
        let mut q = self.flow.queued.load(Acquire);
        while q < limit {
            match self.flow.queued.compare_exchange_weak(q, q + 1, AcqRel, Acquire) {
                Ok(_) => return true,
                Err(now) => q = now,
            }
        }
        false
    }

    fn shut_down_error(&self) -> Error {
        Error::new(ErrorKind::ShutDown, format!("handler {} is shut down", self.name))
    }

    /// Makes sure a runner will look at this handler: submits a primary run to the pool
    /// unless one is pending or running; with replicas, wakes an idle replica.
    fn kick(&self) {
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

    fn arm_delay_timer(&self, at: Instant) {
        if !self.flow.delay_timer_armed.load(Acquire) && !self.flow.delay_timer_armed.swap(true, AcqRel) {
            self.pool.timer.add(at, TimerTarget::Handler(self.weak_self.clone()));
        }
    }

    /// Called by the timer when a batch delay ends.
    fn on_delay_timer(&self) {
        self.flow.delay_timer_armed.store(false, Release);
        self.kick();
    }

    /// The oldest still-queued entry, after dropping finished ones.
    fn front<'p>(&self, pipe: &'p mut Pipeline) -> Option<&'p Entry> {
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
    fn pop_entry(&self, pipe: &mut Pipeline) -> Option<Entry> {
        pipe.front.take().or_else(|| self.incoming.pop())
    }

    /// Whether a batch may be taken now; arms the delay timer when only the batch delay
    /// holds it back.
    fn claimable_locked(&self, pipe: &mut Pipeline) -> bool {
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

    fn head_needs_prepare(&self, pipe: &mut Pipeline) -> bool {
        self.front(pipe).is_some_and(Entry::needs_prepare)
    }

    /// Whether a runner could make progress now (used to decide whether to keep or hand
    /// back a run). Called with the pipeline lock held.
    fn work_available_locked(&self, pipe: &mut Pipeline) -> bool {
        let exec_ready = self.exec_slot_free(pipe) && pipe.staged.contains_key(&pipe.next_exec_seq);
        let claim_ready = self.can_run_now(pipe)
            || (self.ahead(pipe) < self.options.prefetch_depth && self.head_needs_prepare(pipe));
        exec_ready || (claim_ready && self.claimable_locked(pipe))
    }

    /// Batches taken ahead of execution (being prepared or staged).
    fn ahead(&self, pipe: &Pipeline) -> usize {
        pipe.batches_in_flight - pipe.executing
    }

    fn exec_slot_free(&self, pipe: &Pipeline) -> bool {
        pipe.executing < self.options.concurrency
    }

    /// A batch taken now could execute at once: an execution slot is free and no
    /// prepared or staged batch is ahead of it.
    fn can_run_now(&self, pipe: &Pipeline) -> bool {
        self.exec_slot_free(pipe) && pipe.batches_in_flight == pipe.executing
    }

    /// Picks the next step for a runner. Called with the pipeline lock held. Batches
    /// start executing in the order they were taken.
    fn next_action_locked(&self, pipe: &mut Pipeline, expired: &mut Vec<Arc<Item>>) -> Action {
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
    fn claim_locked(&self, pipe: &mut Pipeline, expired: &mut Vec<Arc<Item>>) -> Vec<Entry> {
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

    /// A runner's turn on this handler: runs steps until none is left or other
    /// handlers are waiting (then it requeues itself behind them). `primary` runs own
    /// the `scheduled` flag; helper runs (extra preparation) do not.
    fn run(self: &Arc<Self>, mut primary: bool) {
        if !primary {
            self.flow.prepare_kick.store(false, Release);
        }
        let mut expired = Vec::new();
        let mut pipe = self.lock();
        loop {
            let action = self.next_action_locked(&mut pipe, &mut expired);
            if !expired.is_empty() {
                drop(pipe);
                for item in expired.drain(..) {
                    item.finish_unstarted(ErrorKind::TimedOut, Some(self));
                }
                pipe = self.lock();
            }
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
                    if self.ahead(&pipe) < self.options.prefetch_depth
                        && self.work_available_locked(&mut pipe)
                    {
                        if let Some(me) = self.weak_self.upgrade() {
                            self.pool.submit(me, false);
                        }
                    }
                    drop(pipe);
                    let batch = self.prepare_batch(batch);
                    pipe = self.lock();
                    pipe.staged.insert(seq, batch);
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
                    pipe.executing -= 1;
                    pipe.batches_in_flight -= 1;
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

    /// Runs the GIL-free preparation of a batch's items, spread over idle pool workers
    /// (each takes the next unprepared item until none is left), and returns the items
    /// that are ready to commit. A failed preparation finishes its item at once.
    fn prepare_batch(self: &Arc<Self>, batch: Vec<Entry>) -> Vec<Entry> {
        let Some(tensor) = &self.tensor else {
            return self.prepare_entries(batch);
        };
        // A tensor batch's fills write straight into its rows of the batch buffers.
        if let Err(error) = tensor.assign_rows(&batch) {
            for entry in batch {
                let job = entry.take_slot();
                self.fail_started(&entry, job, error.clone());
                self.finish_items(1);
            }
            return Vec::new();
        }
        let batch = self.prepare_entries(batch);
        tensor.stage_prepared(&batch);
        batch
    }

    fn prepare_entries(self: &Arc<Self>, batch: Vec<Entry>) -> Vec<Entry> {
        let needing = batch.iter().filter(|e| e.needs_prepare()).count();
        if needing <= 1 || self.pool.threads() <= 1 {
            return self.prepare_serial(batch);
        }
        let work = Arc::new(PrepareWork {
            items: batch.into_iter().map(|entry| Mutex::new((Some(entry), false))).collect(),
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
        });
        // As many helpers as there are items beyond the one this thread starts on.
        let helpers = (needing - 1).min(self.pool.threads() - 1);
        for _ in 0..helpers {
            self.pool.submit_prepare(self.clone(), work.clone());
        }
        self.prepare_some(&work);
        // Helpers finish the items they took; each takes one item's preparation time.
        while work.done.load(Acquire) < work.items.len() {
            std::thread::yield_now();
        }
        work.items
            .iter()
            .filter_map(|slot| {
                let (entry, ok) = &mut *slot.lock().unwrap_or_else(|p| p.into_inner());
                entry.take().filter(|_| *ok)
            })
            .collect()
    }

    /// Prepares a batch on this thread alone (replicas, single items).
    fn prepare_serial(&self, batch: Vec<Entry>) -> Vec<Entry> {
        batch.into_iter().filter(|entry| self.prepare_one(entry)).collect()
    }

    /// Prepares items of `work` until none is left to take.
    fn prepare_some(&self, work: &PrepareWork) {
        loop {
            let i = work.next.fetch_add(1, AcqRel);
            let Some(slot) = work.items.get(i) else { return };
            let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
            slot.1 = slot.0.as_ref().is_some_and(|entry| self.prepare_one(entry));
            drop(slot);
            work.done.fetch_add(1, AcqRel);
        }
    }

    /// Prepares one item; on failure finishes it and returns false.
    fn prepare_one(&self, entry: &Entry) -> bool {
        if !entry.needs_prepare() {
            return true;
        }
        // SAFETY: this thread owns the claimed item for its preparation (JobCell).
        let result = match unsafe { entry.job_cell().get_mut() } {
            Some(job) => guarded("prepare", || job.prepare()),
            None => Err(Error::internal("item has no job")),
        };
        match result {
            Ok(()) => true,
            Err(e) => {
                let job = entry.take_slot();
                self.fail_started(entry, job, e);
                self.finish_items(1);
                false
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
    fn leave_batch(&self) {
        self.items_in_batches.fetch_sub(1, AcqRel);
    }

    /// Resolves an item taken into a batch (after `leave_batch`), once its callbacks ran
    /// and its job is gone.
    fn resolve_started(&self, item: &Entry, outcome: crate::future::Outcome) {
        let counter = if outcome.is_ok() { &self.counters.completed } else { &self.counters.failed };
        counter.fetch_add(1, Relaxed);
        item.resolve(outcome);
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

    /// Commits each item, calls Python once with the list, fans the results out; all
    /// under one GIL hold. Returns the C ABI jobs of the detached items that completed
    /// (no future handle), whose finalizers (`drop` callbacks) the caller runs once the
    /// GIL is released: the C++ wrapper fulfils its `std::promise` there, a futex syscall
    /// per item in glibc.
    fn execute_batch(&self, batch: Vec<Entry>) -> Vec<JobSlot> {
        if batch.is_empty() {
            return Vec::new();
        }
        if let Some(tensor) = &self.tensor {
            return self.as_executing_batch(|| crate::tensor::execute::run_batch(self, tensor, batch));
        }
        let gil_asked = clock::now_ns();
        self.as_executing_batch(|| {
            crate::runtime::attach(|py| {
                // A stage that attached on this worker without the GIL held may have
                // left its error in the worker's thread state.
                report_stray(py, &self.name, "code run earlier on this worker (a GIL-free stage)");
                let finalized = self.execute_locked(py, batch, gil_asked);
                // Destructors of the batch's results and of failed items' jobs ran last.
                report_stray(py, &self.name, "a destructor run as the batch's references were released");
                finalized
            })
        })
    }

    fn execute_locked(&self, py: Python<'_>, batch: Vec<Entry>, gil_asked: u64) -> Vec<JobSlot> {
        let items = batch.len();
        let start_ns = clock::now_ns();
        self.histograms.gil_wait_ns.record(start_ns.saturating_sub(gil_asked));
        let mut objects = Vec::with_capacity(items);
        let mut live = Vec::with_capacity(items);
        let mut waits = LocalHistogram::default();
        for item in batch {
            waits.record(start_ns.saturating_sub(item.enqueued_ns()));
            let Some(mut job) = item.take_slot() else {
                self.fail_started(&item, None, Error::internal("item has no job"));
                continue;
            };
            match guarded("commit", || job.commit(py)) {
                Ok(obj) => {
                    objects.push(obj);
                    live.push((item, job));
                }
                Err(e) => self.fail_started(&item, Some(job), e),
            }
            report_stray(py, &self.name, "the commit callback");
        }
        self.histograms.queue_wait_ns.merge(&waits);
        let committed = clock::now_ns();
        let commit_ns = committed.saturating_sub(start_ns);
        if live.is_empty() {
            self.record_timings(items, commit_ns, 0, 0);
            return Vec::new();
        }
        let n = live.len();
        let called = self.function.bind(py).call1((new_list(py, objects),));
        // The list of committed objects is released by now (a capsule's destructor).
        report_stray(py, &self.name, "a destructor run as the batch's arguments were released");
        self.record_timings(items, commit_ns, clock::now_ns().saturating_sub(committed), n);
        let results = called
            .map_err(|e| {
                Error::from_pyerr_context(
                    py,
                    &e,
                    ErrorKind::PythonException,
                    &format!("{} raised", self.name),
                )
            })
            .and_then(|r| ResultSeq::new(py, r, n, &self.name));
        let seq = match results {
            Ok(seq) => seq,
            Err(error) => {
                for (item, job) in live {
                    self.fail_started(&item, Some(job), error.clone());
                }
                return Vec::new();
            }
        };
        // The batch's accounting in one step rather than per item (atomics on lines that
        // stats readers share): all its items leave the queue sizes before the first
        // callback and count as completed, and an item whose callback fails moves to
        // `failed` before its future resolves. A stats reader racing the fan-out may see
        // an item completed a moment before its callback ran, never after its future.
        self.batch_succeeded(n);
        let mut completed = Vec::with_capacity(n);
        for (i, (item, mut job)) in live.into_iter().enumerate() {
            let value = seq.get(py, i);
            let outcome = guarded("complete", || job.complete(py, &value));
            match job {
                // A detached C ABI item: its finalizer may run without the GIL (the
                // documented contract), and no future can observe it before it runs.
                JobSlot::C(ref c) if !item.has_completion() && c.has_finalizer() => completed.push(job),
                // An item with a future is finalized before its future resolves; a Rust
                // job may own Python objects: both are dropped while the GIL is held.
                _ => drop(job),
            }
            report_stray(py, &self.name, "the completion callback or the item's finalizer");
            if outcome.is_err() {
                self.counters.completed.fetch_sub(1, Relaxed);
                self.counters.failed.fetch_add(1, Relaxed);
            }
            item.resolve(outcome.map(|()| item.keep_value().then(|| value.unbind())));
        }
        completed
    }

    /// Waits until every accepted item has finished; later items are refused when
    /// `close` is set. Releases the GIL while waiting. Called from inside one of this
    /// handler's own callbacks it cannot wait for itself: it then only marks the handler.
    pub(crate) fn drain(&self, close: bool) {
        let reentrant = EXECUTING.with(|e| std::ptr::eq(e.get(), self));
        crate::runtime::without_gil(|| {
            let mut pipe = self.lock();
            pipe.draining = true;
            drop(pipe);
            self.kick();
            pipe = self.lock();
            if !reentrant {
                pipe.drain_waiters += 1;
                while self.flow.outstanding.load(Acquire) > 0 {
                    pipe = self.drained.wait(pipe).unwrap_or_else(|p| p.into_inner());
                }
                pipe.drain_waiters -= 1;
                pipe.draining = pipe.drain_waiters > 0;
            }
            if close {
                self.flow.closed.store(true, SeqCst);
                self.room.notify_all();
                self.replica_wake.notify_all();
            }
        });
    }

    pub(crate) fn stats(&self) -> HandlerStats {
        let emas = *self.emas.lock().unwrap_or_else(|p| p.into_inner());
        let c = &self.counters;
        HandlerStats {
            commit_queue_size: self.flow.queued.load(Acquire) as u64,
            execute_queue_size: self.items_in_batches.load(Acquire),
            total_enqueued: self.flow.enqueued.load(Relaxed),
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

/// Runs one job callback, turning a panic into an internal error of that item.
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(Error::internal(format!("the item's {what} callback panicked"))))
}

/// Item timestamps: nanoseconds since a process-wide epoch (the first reading).
pub(crate) mod clock {
    use std::num::NonZeroU64;
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    struct Epoch {
        at: Instant,
        /// The TSC where it is reliable (quanta checks and calibrates it; else the OS
        /// clock): ~10 ns a reading on the development VM against ~25 for `Instant::now`,
        /// and producers read it once per item.
        clock: quanta::Clock,
        raw: u64,
    }

    static EPOCH: OnceLock<Epoch> = OnceLock::new();

    fn epoch() -> &'static Epoch {
        EPOCH.get_or_init(|| {
            let clock = quanta::Clock::new();
            let raw = clock.raw();
            Epoch { at: Instant::now(), clock, raw }
        })
    }

    /// Now, from the fast clock: queue waits, batch delays, batch timings.
    pub(crate) fn now_ns() -> u64 {
        let e = epoch();
        e.clock.delta_as_nanos(e.raw, e.clock.raw())
    }

    /// An `Instant` on the same scale (deadlines, compared with `Instant::now()` as the
    /// timer thread does).
    pub(super) fn ns(t: Instant) -> u64 {
        super::nanos(t.saturating_duration_since(epoch().at))
    }

    /// A deadline as a non-zero timestamp (one before the epoch reads as 1 ns: passed).
    pub(super) fn deadline_ns(t: Instant) -> NonZeroU64 {
        NonZeroU64::new(ns(t)).unwrap_or(NonZeroU64::MIN)
    }

    pub(super) fn instant(ns: u64) -> Instant {
        epoch().at + Duration::from_nanos(ns)
    }
}

fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}

/// Builds a list that takes ownership of `objects` without touching reference counts.
fn new_list(py: Python<'_>, objects: Vec<Py<PyAny>>) -> Bound<'_, PyAny> {
    // SAFETY: GIL held (py). PyList_New returns a new list of len objects.len() with NULL
    // slots; PyList_SET_ITEM steals each reference, filling every slot exactly once.
    unsafe {
        let list = ffi::PyList_New(objects.len() as ffi::Py_ssize_t);
        if list.is_null() {
            // Out of memory: PyList_New set MemoryError; let pyo3 raise it on call.
            return Bound::from_owned_ptr(py, ffi::compat::Py_NewRef(ffi::Py_None()));
        }
        for (i, obj) in objects.into_iter().enumerate() {
            ffi::PyList_SET_ITEM(list, i as ffi::Py_ssize_t, obj.into_ptr());
        }
        Bound::from_owned_ptr(py, list)
    }
}

/// The function's result, checked to be a sequence of exactly `n` items (list or tuple,
/// or any other sequence, materialized once).
struct ResultSeq<'py> {
    seq: Bound<'py, PyAny>,
}

impl<'py> ResultSeq<'py> {
    fn new(py: Python<'py>, result: Bound<'py, PyAny>, n: usize, name: &str) -> Result<Self> {
        // SAFETY: GIL held; the checks only read the object's type.
        let fast =
            unsafe { ffi::PyList_Check(result.as_ptr()) != 0 || ffi::PyTuple_Check(result.as_ptr()) != 0 };
        let seq = if fast {
            result
        } else {
            // SAFETY: GIL held; PySequence_Check only inspects the type.
            let is_seq = unsafe { ffi::PySequence_Check(result.as_ptr()) } != 0
                && !result.is_instance_of::<pyo3::types::PyString>()
                && !result.is_instance_of::<pyo3::types::PyBytes>();
            if !is_seq {
                return Err(Error::new(
                    ErrorKind::PythonException,
                    format!(
                        "{name} must return a sequence of {n} results (one per item of the batch), got {}",
                        type_name(&result)
                    ),
                ));
            }
            pyo3::types::PyList::type_object(py).call1((&result,)).map_err(|e| {
                Error::from_pyerr_context(py, &e, ErrorKind::PythonException, "reading the results")
            })?
        };
        let len = seq.len().map_err(|e| Error::from_pyerr(py, &e, ErrorKind::PythonException))?;
        if len != n {
            return Err(Error::new(
                ErrorKind::PythonException,
                format!(
                    "{name} must return a sequence of {n} results (one per item of the batch), got a {} of length {len}",
                    type_name(&seq)
                ),
            ));
        }
        Ok(ResultSeq { seq })
    }

    fn get(&self, py: Python<'py>, i: usize) -> Bound<'py, PyAny> {
        let p = self.seq.as_ptr();
        let index = i as ffi::Py_ssize_t;
        // SAFETY: GIL held (or, free-threaded, the interpreter attached); `seq` is a list
        // or tuple (subclasses included) checked in `new` to hold n > i items. A tuple
        // cannot change. A list could be shrunk by Python code run from an earlier item's
        // completion (or, free-threaded, by another thread): PyList_GetItemRef checks the
        // index and returns a new reference under the list's lock, which makes it safe
        // without a GIL; a missing element reads as None.
        unsafe {
            if ffi::PyList_Check(p) != 0 {
                let item = ffi::compat::PyList_GetItemRef(p, index);
                if item.is_null() {
                    ffi::PyErr_Clear();
                    return Bound::from_owned_ptr(py, ffi::compat::Py_NewRef(ffi::Py_None()));
                }
                Bound::from_owned_ptr(py, item)
            } else {
                Bound::from_borrowed_ptr(py, ffi::PyTuple_GET_ITEM(p, index))
            }
        }
    }
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type().qualname().map(|n| n.to_string()).unwrap_or_else(|_| "<unknown>".into())
}

use pyo3::types::{PyAnyMethods, PyTypeMethods};
use pyo3::PyTypeInfo;

enum Task {
    /// A run of the handler; `true` for the primary run (owner of `scheduled`).
    Run(Arc<HandlerCore>, bool),
    /// Help prepare a batch's items.
    Prepare(Arc<HandlerCore>, Arc<PrepareWork>),
    Stop,
}

/// The worker threads shared by every handler of the interpreter, and the timer.
///
/// Tasks are taken in submission order (FIFO); idle workers are woken in the opposite
/// order, the most recently idle first (LIFO). A worker that has just finished is the
/// one whose caches, allocator pages and Python thread state are warm, and the workers
/// the load does not need stay asleep and never touch memory: with a FIFO wake-up (the
/// crossbeam channel this replaced wakes the longest-waiting receiver) every batch went
/// to a different, cold worker in turn, and a pool of 16 kept 16 allocator heaps busy for
/// a load that needs two or three threads at a time (measured: +140 KB of peak RSS per
/// extra worker, `--rss-child held --workers N`).
pub(crate) struct Pool {
    shared: Arc<PoolShared>,
    threads: usize,
    pub(crate) timer: Arc<Timer>,
}

struct PoolShared {
    ready: Mutex<Ready>,
    /// `ready.tasks.len()`, readable without the lock.
    pending: AtomicUsize,
    workers: Box<[WorkerSlot]>,
}

#[derive(Default)]
struct Ready {
    tasks: std::collections::VecDeque<Task>,
    /// Idle workers (indices into `workers`), the most recently idle last.
    idle: Vec<usize>,
}

#[derive(Default)]
struct WorkerSlot {
    /// Set (with `ready` locked) by the submitter that took this worker off `idle`.
    woken: AtomicBool,
    thread: std::sync::OnceLock<std::thread::Thread>,
}

/// How many times an idle worker looks at `pending` before it parks (a few hundred
/// nanoseconds): a batch handed over right after it finished needs no wake-up.
const IDLE_SPINS: u32 = 64;

/// How long a worker sleeps without work before it returns its allocator's free pages
/// (`release_idle_memory`).
const IDLE_BEFORE_COLLECT: Duration = Duration::from_millis(5);

impl Pool {
    pub(crate) fn new(threads: usize) -> Result<Arc<Pool>> {
        let timer = Timer::start()?;
        let shared = Arc::new(PoolShared {
            ready: Mutex::new(Ready { tasks: Default::default(), idle: Vec::with_capacity(threads) }),
            pending: AtomicUsize::new(0),
            workers: (0..threads).map(|_| WorkerSlot::default()).collect(),
        });
        // Dropped on a failed start: stops the workers started so far and the timer.
        let mut pool = Pool { shared: shared.clone(), threads: 0, timer };
        for i in 0..threads {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("pysched-worker-{i}"))
                .spawn(move || worker_main(&shared, i))
                .map_err(|e| Error::internal(format!("cannot start worker thread: {e}")))?;
            // Counted as started, so that dropping the pool stops exactly these.
            pool.threads = i + 1;
        }
        Ok(Arc::new(pool))
    }

    pub(crate) fn threads(&self) -> usize {
        self.threads
    }

    fn submit(&self, handler: Arc<HandlerCore>, primary: bool) {
        self.shared.push(Task::Run(handler, primary));
    }

    fn submit_prepare(&self, handler: Arc<HandlerCore>, work: Arc<PrepareWork>) {
        self.shared.push(Task::Prepare(handler, work));
    }

    fn others_waiting(&self) -> bool {
        self.shared.pending.load(Relaxed) > 0
    }
}

impl PoolShared {
    fn lock(&self) -> MutexGuard<'_, Ready> {
        self.ready.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a task and wakes the most recently idle worker, if any is idle (a busy
    /// worker takes the task when it finishes).
    fn push(&self, task: Task) {
        let mut ready = self.lock();
        ready.tasks.push_back(task);
        self.pending.store(ready.tasks.len(), Relaxed);
        let worker = ready.idle.pop();
        if let Some(w) = worker {
            self.workers[w].woken.store(true, Release);
        }
        drop(ready);
        if let Some(w) = worker {
            if let Some(thread) = self.workers[w].thread.get() {
                thread.unpark();
            }
        }
    }

    /// The next task for worker `me`; parks while there is none. `ran`: whether this
    /// worker has run a task since it last returned its free memory (a worker that has
    /// not has nothing to return and sleeps without a timeout).
    fn next(&self, me: usize, ran: &mut bool) -> Task {
        loop {
            for _ in 0..IDLE_SPINS {
                if self.pending.load(Relaxed) > 0 {
                    break;
                }
                std::hint::spin_loop();
            }
            let mut ready = self.lock();
            if let Some(task) = ready.tasks.pop_front() {
                self.pending.store(ready.tasks.len(), Relaxed);
                *ran = true;
                return task;
            }
            self.workers[me].woken.store(false, Relaxed);
            ready.idle.push(me);
            drop(ready);
            // A submitter takes us off `idle` and sets `woken` before it unparks us
            // (unpark before park makes park return at once).
            while !self.workers[me].woken.load(Acquire) {
                if !*ran || !cfg!(feature = "mimalloc") {
                    std::thread::park();
                } else {
                    std::thread::park_timeout(IDLE_BEFORE_COLLECT);
                    if !self.workers[me].woken.load(Acquire) {
                        release_idle_memory();
                        *ran = false;
                    }
                }
            }
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        for _ in 0..self.threads {
            self.shared.push(Task::Stop);
        }
        self.timer.stop();
    }
}

/// Returns the free memory this thread's allocator heap keeps (pages its batches used)
/// to the OS. mimalloc keeps freed pages per thread and purges them only when that
/// thread allocates again later, so each worker that ran once held on to its pages while
/// it slept: ~150 KB per worker, which a pool of 16 multiplied (`--rss-child free
/// --workers 16`: 141-157 bytes per item without this, 123-131 with it, against 134-149
/// with 2 workers). Called only after `IDLE_BEFORE_COLLECT` without work, so a busy pool
/// pays nothing (collecting at every park looked slower in the noisy runs here, as the
/// next batch faults the pages in again, and did little more for the peak).
fn release_idle_memory() {
    #[cfg(feature = "mimalloc")]
    // SAFETY: mi_collect only touches this thread's heap and the allocator's own locked
    // structures; it may be called at any time.
    unsafe {
        libmimalloc_sys::mi_collect(true)
    };
}

fn worker_main(shared: &PoolShared, me: usize) {
    let _ = shared.workers[me].thread.set(std::thread::current());
    crate::runtime::persist_current_thread_state();
    let mut ran = false;
    loop {
        match shared.next(me, &mut ran) {
            Task::Run(handler, primary) => handler.run(primary),
            Task::Prepare(handler, work) => handler.prepare_some(&work),
            Task::Stop => return,
        }
    }
}

pub(crate) enum TimerTarget {
    Handler(Weak<HandlerCore>),
    Item(Weak<Item>),
}

struct TimerEntry {
    at: Instant,
    seq: u64,
    target: TimerTarget,
}

impl PartialEq for TimerEntry {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for TimerEntry {}
impl PartialOrd for TimerEntry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for TimerEntry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

#[derive(Default)]
struct TimerState {
    heap: BinaryHeap<Reverse<TimerEntry>>,
    seq: u64,
    stopped: bool,
}

/// One thread that fires batch-delay and deadline events at their time; sleeps on a
/// condvar until the earliest one (no polling).
pub(crate) struct Timer {
    state: Mutex<TimerState>,
    wake: Condvar,
}

impl Timer {
    fn start() -> Result<Arc<Timer>> {
        let timer = Arc::new(Timer { state: Mutex::new(TimerState::default()), wake: Condvar::new() });
        let t = timer.clone();
        std::thread::Builder::new()
            .name("pysched-timer".into())
            .spawn(move || t.run())
            .map_err(|e| Error::internal(format!("cannot start timer thread: {e}")))?;
        Ok(timer)
    }

    pub(crate) fn add(&self, at: Instant, target: TimerTarget) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.seq += 1;
        let seq = st.seq;
        let earliest = st.heap.peek().is_none_or(|Reverse(e)| at < e.at);
        st.heap.push(Reverse(TimerEntry { at, seq, target }));
        if earliest {
            self.wake.notify_one();
        }
    }

    fn stop(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).stopped = true;
        self.wake.notify_one();
    }

    fn run(&self) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if st.stopped {
                return;
            }
            let now = Instant::now();
            match st.heap.peek() {
                None => st = self.wake.wait(st).unwrap_or_else(|p| p.into_inner()),
                Some(Reverse(e)) if e.at > now => {
                    let wait = e.at - now;
                    st = self.wake.wait_timeout(st, wait).unwrap_or_else(|p| p.into_inner()).0;
                }
                Some(_) => {
                    let Some(Reverse(entry)) = st.heap.pop() else {
                        continue;
                    };
                    drop(st);
                    match entry.target {
                        TimerTarget::Handler(h) => {
                            if let Some(h) = h.upgrade() {
                                h.on_delay_timer();
                            }
                        }
                        TimerTarget::Item(i) => {
                            if let Some(i) = i.upgrade() {
                                let handler = i.handler.upgrade();
                                i.finish_unstarted(ErrorKind::TimedOut, handler.as_deref());
                            }
                        }
                    }
                    st = self.state.lock().unwrap_or_else(|p| p.into_inner());
                }
            }
        }
    }
}

impl BatchSource for HandlerCore {
    fn next_batch(&self) -> Option<Vec<Entry>> {
        let mut expired = Vec::new();
        let mut pipe = self.lock();
        loop {
            if pipe.batches_in_flight < self.replicas && self.claimable_locked(&mut pipe) {
                let batch = self.claim_locked(&mut pipe, &mut expired);
                if !expired.is_empty() {
                    drop(pipe);
                    for item in expired.drain(..) {
                        item.finish_unstarted(ErrorKind::TimedOut, Some(self));
                    }
                    pipe = self.lock();
                }
                if batch.is_empty() {
                    continue;
                }
                pipe.batches_in_flight += 1;
                drop(pipe);
                // Another replica may take the next batch meanwhile.
                self.kick();
                return Some(self.prepare_serial(batch));
            }
            if self.flow.closed.load(Acquire) && self.flow.queued.load(Acquire) == 0 {
                self.replica_wake.notify_all();
                return None;
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

    fn complete_item(&self, item: &Entry, job: Box<dyn Job>, outcome: Result<()>) {
        self.leave_batch();
        drop(job);
        self.resolve_started(item, outcome.map(|()| None));
    }

    fn fail_item(&self, item: &Entry, job: Option<Box<dyn Job>>, error: Error) {
        self.fail_started(item, job.map(JobSlot::Boxed), error);
    }

    fn record_timings(&self, items: usize, commit_ns: u64, execute_ns: u64, executed: usize) {
        HandlerCore::record_timings(self, items, commit_ns, execute_ns, executed);
    }

    fn finish_batch(&self, items: usize) {
        self.lock().batches_in_flight -= 1;
        self.finish_items(items);
        self.kick();
    }

    fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A queued fire-and-forget item costs one slot of `Incoming`'s blocks (its entry
    /// plus the slot's state word): keep it within 56 + 8 bytes, so that a block of 31
    /// slots and its next pointer (1992 bytes) stays in mimalloc's 2048-byte size class
    /// (issue 16's peak-RSS row); an item for a future keeps its `ArcInner<Item>` within
    /// the 112-byte allocator bin.
    #[test]
    fn entries_stay_small() {
        assert!(std::mem::size_of::<Entry>() <= 56, "Entry is {} bytes", std::mem::size_of::<Entry>());
        let arc_inner = std::mem::size_of::<Item>() + 2 * std::mem::size_of::<usize>();
        assert!(arc_inner <= 112, "ArcInner<Item> is {arc_inner} bytes");
    }

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
