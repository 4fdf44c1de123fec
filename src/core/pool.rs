//! The worker threads shared by every handler of the interpreter: a FIFO of tasks (runs
//! of a handler, preparation help), idle workers woken LIFO, and the timer they share.
//!
//! Generic over what its workers run ([`PoolWork`]: `HandlerCore`, implemented in
//! `driver`; `handler::Pool` fixes it), statically dispatched, so that it names nothing
//! above `timer`.
//!
//! May call: `timer`, its work (`PoolWork`), `crate::runtime` (each worker keeps a
//! persistent Python thread state).

use super::timer::{Timer, TimerEvents};
use crate::error::{Error, Result};
use std::sync::atomic::{
    AtomicBool, AtomicUsize, Ordering::Acquire, Ordering::Relaxed, Ordering::Release, Ordering::SeqCst,
};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// What the pool's workers run: a handler. Its timer events fire on the pool's timer.
pub(crate) trait PoolWork: TimerEvents {
    /// A batch whose preparation several workers share.
    type Prepare: Send + Sync + 'static;
    /// A run of the handler; `primary`: the primary run (owner of `scheduled`).
    fn run_on_worker(self: &Arc<Self>, primary: bool);
    /// Help prepare a batch's items.
    fn prepare_on_worker(&self, work: &Self::Prepare);
}

pub(super) enum Task<W: PoolWork> {
    /// A run of the handler; `true` for the primary run (owner of `scheduled`).
    Run(Arc<W>, bool),
    /// Help prepare a batch's items.
    Prepare(Arc<W>, Arc<W::Prepare>),
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
pub(crate) struct Pool<W: PoolWork> {
    shared: Arc<PoolShared<W>>,
    threads: usize,
    /// Joined when the pool is dropped (see `Drop`).
    handles: Vec<std::thread::JoinHandle<()>>,
    pub(crate) timer: Arc<Timer<W>>,
}

struct PoolShared<W: PoolWork> {
    ready: Mutex<Ready<W>>,
    /// `ready.tasks.len()`, readable without the lock.
    pending: AtomicUsize,
    /// Workers spinning on `pending` before they park: each will take a task without
    /// being woken.
    spinning: AtomicUsize,
    workers: Box<[WorkerSlot]>,
}

struct Ready<W: PoolWork> {
    tasks: std::collections::VecDeque<Task<W>>,
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

impl<W: PoolWork> Pool<W> {
    pub(crate) fn new(threads: usize) -> Result<Arc<Pool<W>>> {
        let timer = Timer::start()?;
        let shared = Arc::new(PoolShared {
            ready: Mutex::new(Ready { tasks: Default::default(), idle: Vec::with_capacity(threads) }),
            pending: AtomicUsize::new(0),
            spinning: AtomicUsize::new(0),
            workers: (0..threads).map(|_| WorkerSlot::default()).collect(),
        });
        // Dropped on a failed start: stops the workers started so far and the timer.
        let mut pool =
            Pool { shared: shared.clone(), threads: 0, handles: Vec::with_capacity(threads), timer };
        for i in 0..threads {
            let shared = shared.clone();
            let handle = std::thread::Builder::new()
                .name(format!("pysched-worker-{i}"))
                .spawn(move || worker_main(&shared, i))
                .map_err(|e| Error::internal(format!("cannot start worker thread: {e}")))?;
            // Counted as started, so that dropping the pool stops exactly these.
            pool.handles.push(handle);
            pool.threads = i + 1;
        }
        Ok(Arc::new(pool))
    }

    pub(crate) fn threads(&self) -> usize {
        self.threads
    }

    pub(super) fn submit(&self, handler: Arc<W>, primary: bool) {
        self.shared.push(Task::Run(handler, primary));
    }

    pub(super) fn submit_prepare(&self, handler: Arc<W>, work: Arc<W::Prepare>) {
        self.shared.push(Task::Prepare(handler, work));
    }

    pub(super) fn others_waiting(&self) -> bool {
        self.shared.pending.load(Relaxed) > 0
    }
}

impl<W: PoolWork> PoolShared<W> {
    fn lock(&self) -> MutexGuard<'_, Ready<W>> {
        self.ready.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a task and wakes the most recently idle worker, if any is idle and no
    /// spinning worker is left to take the task (a busy worker takes it when it finishes).
    /// A spinner stops counting itself before it locks the ready queue and looks at the
    /// tasks, so a task pushed meanwhile is still taken (or its pusher, seeing no spinner,
    /// wakes a parked worker).
    fn push(&self, task: Task<W>) {
        let mut ready = self.lock();
        ready.tasks.push_back(task);
        self.pending.store(ready.tasks.len(), Relaxed);
        let worker = if self.spinning.load(SeqCst) >= ready.tasks.len() { None } else { ready.idle.pop() };
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
    fn next(&self, me: usize, ran: &mut bool) -> Task<W> {
        loop {
            self.spinning.fetch_add(1, SeqCst);
            for _ in 0..IDLE_SPINS {
                if self.pending.load(Relaxed) > 0 {
                    break;
                }
                std::hint::spin_loop();
            }
            self.spinning.fetch_sub(1, SeqCst);
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

impl<W: PoolWork> Drop for Pool<W> {
    fn drop(&mut self) {
        for _ in 0..self.threads {
            self.shared.push(Task::Stop);
        }
        self.timer.stop();
        // Wait until every worker has exited, thread-local destructors included (each
        // gives back its Python thread state, taking the GIL: released here if this
        // thread holds it). A worker still exiting while the process runs its exit
        // handlers raced them: OpenSSL's atexit cleanup (libcrypto, loaded by Python's
        // hashlib) against a worker's own OpenSSL thread state corrupted the heap
        // ("malloc_consolidate(): invalid chunk size" in examples/quickstart, ~1 run in
        // 50). No handler exists by now, so the workers are idle or about to take their
        // Stop; one of them may be this thread (it dropped the last handler), which is
        // not waited for.
        let me = std::thread::current().id();
        let handles: Vec<_> =
            std::mem::take(&mut self.handles).into_iter().filter(|h| h.thread().id() != me).collect();
        crate::runtime::without_gil(move || {
            for handle in handles {
                let _ = handle.join();
            }
        });
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

fn worker_main<W: PoolWork>(shared: &PoolShared<W>, me: usize) {
    let _ = shared.workers[me].thread.set(std::thread::current());
    crate::runtime::persist_current_thread_state();
    let mut ran = false;
    loop {
        match shared.next(me, &mut ran) {
            Task::Run(handler, primary) => handler.run_on_worker(primary),
            Task::Prepare(handler, work) => handler.prepare_on_worker(&work),
            Task::Stop => return,
        }
    }
}
