//! Property tests of the Rust API: random batch sizes, prefetch depths, concurrency,
//! batch delays, queue bounds, item counts and failure patterns (failing commits,
//! Python exceptions, cancellations, deadlines, refusals). Every item ends exactly once
//! (one of complete/fail, then drop), its future agrees with its callbacks and carries
//! the right value or error, and after a drain the counters add up:
//! completed + failed + cancelled + expired + rejected == total_enqueued.

mod common;

use proptest::prelude::*;
use pyo3::prelude::*;
use pyo3::types::PyAnyMethods;
use pyscheduler::{ErrorKind, FullPolicy, HandlerOptions, ItemOptions, Job, Manager};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

fn manager() -> &'static Manager {
    static MANAGER: OnceLock<Manager> = OnceLock::new();
    MANAGER.get_or_init(common::manager)
}

/// How one item is meant to go.
#[derive(Debug, Clone)]
struct Spec {
    /// The item's value; a negative one makes `raise_for_negative` fail its whole batch.
    value: i64,
    fail_commit: bool,
    cancel: bool,
    /// Deadline after queueing, in microseconds.
    deadline_us: Option<u64>,
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        prop_oneof![19 => 0i64..1000, 1 => -5i64..0],
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.1),
        prop::option::weighted(0.1, 0u64..3000),
    )
        .prop_map(|(value, fail_commit, cancel, deadline_us)| Spec {
            value,
            fail_commit,
            cancel,
            deadline_us,
        })
}

#[derive(Debug, Clone)]
struct Config {
    batch_size: usize,
    prefetch_depth: usize,
    concurrency: usize,
    max_batch_delay_us: u64,
    /// (max_queue, reject) for a bounded queue.
    bound: Option<(usize, bool)>,
}

fn config() -> impl Strategy<Value = Config> {
    (
        1usize..=32,
        1usize..=4,
        1usize..=3,
        prop_oneof![3 => Just(0u64), 1 => 1u64..2000],
        prop::option::weighted(0.25, (1usize..=40, any::<bool>())),
    )
        .prop_map(|(batch_size, prefetch_depth, concurrency, max_batch_delay_us, bound)| Config {
            batch_size,
            prefetch_depth,
            concurrency,
            max_batch_delay_us,
            bound,
        })
}

/// What the callbacks saw for one item.
#[derive(Debug, Default)]
struct Seen {
    commits: usize,
    completes: Vec<i64>,
    fails: Vec<ErrorKind>,
    drops: usize,
    /// A callback ran after drop, or drop ran before the outcome.
    out_of_order: bool,
}

struct RecordingJob {
    spec: Spec,
    seen: Arc<Mutex<Seen>>,
}

impl Job for RecordingJob {
    fn commit(&mut self, py: Python<'_>) -> pyscheduler::Result<Py<PyAny>> {
        let mut seen = self.seen.lock().unwrap();
        seen.commits += 1;
        if self.spec.fail_commit {
            return Err(pyscheduler::Error::new(ErrorKind::Commit, "commit refused"));
        }
        Ok(self.spec.value.into_pyobject(py).unwrap().into_any().unbind())
    }

    fn complete(&mut self, _py: Python<'_>, result: &Bound<'_, PyAny>) -> pyscheduler::Result<()> {
        let mut seen = self.seen.lock().unwrap();
        seen.out_of_order |= seen.drops > 0;
        seen.completes.push(result.extract::<i64>().unwrap_or(i64::MIN));
        Ok(())
    }

    fn fail(&mut self, error: &pyscheduler::Error) {
        let mut seen = self.seen.lock().unwrap();
        seen.out_of_order |= seen.drops > 0;
        seen.fails.push(error.kind());
    }
}

impl Drop for RecordingJob {
    fn drop(&mut self) {
        let mut seen = self.seen.lock().unwrap();
        seen.out_of_order |= seen.completes.len() + seen.fails.len() != 1;
        seen.drops += 1;
    }
}

/// Runs one case; returns a description of the first violated property.
fn run_case(cfg: &Config, specs: &[Spec]) -> Result<(), TestCaseError> {
    let mut options = HandlerOptions {
        batch_size: cfg.batch_size,
        prefetch_depth: cfg.prefetch_depth,
        concurrency: cfg.concurrency,
        max_batch_delay: Duration::from_micros(cfg.max_batch_delay_us),
        ..Default::default()
    };
    if let Some((max_queue, reject)) = cfg.bound {
        options.max_queue = max_queue;
        options.full_policy = if reject { FullPolicy::Reject } else { FullPolicy::Block };
        options.block_timeout = (!reject).then(|| Duration::from_millis(2));
    }
    let handler = manager()
        .load("pysched_testmod", "raise_for_negative", options)
        .map_err(|e| TestCaseError::fail(format!("load: {e}")))?;

    let seen: Vec<Arc<Mutex<Seen>>> = specs.iter().map(|_| Arc::default()).collect();
    let mut futures = Vec::with_capacity(specs.len());
    let mut cancelled_by_us = vec![false; specs.len()];
    for (i, s) in specs.iter().enumerate() {
        let job = RecordingJob { spec: s.clone(), seen: seen[i].clone() };
        let opts = ItemOptions {
            deadline: s.deadline_us.map(|us| Instant::now() + Duration::from_micros(us)),
            keep_value: true,
        };
        let f = handler.queue_job(Box::new(job), opts);
        if s.cancel {
            cancelled_by_us[i] = f.cancel();
        }
        futures.push(f);
    }
    handler.drain();
    let outcomes: Vec<_> = futures
        .into_iter()
        .map(|f| {
            prop_assert!(f.is_ready(), "a future is not ready after drain");
            Ok(f.wait())
        })
        .collect::<Result<_, TestCaseError>>()?;
    let stats = handler.stats();
    drop(handler);

    let any_negative_run = specs.iter().any(|s| s.value < 0);
    let (mut ok, mut failed, mut cancelled, mut expired, mut rejected) = (0u64, 0u64, 0u64, 0u64, 0u64);
    for (i, (s, outcome)) in specs.iter().zip(outcomes).enumerate() {
        let seen = seen[i].lock().unwrap();
        let ctx = || format!("item {i} {s:?}: {seen:?}");
        prop_assert_eq!(seen.completes.len() + seen.fails.len(), 1, "{}", ctx());
        prop_assert_eq!(seen.drops, 1, "{}", ctx());
        prop_assert!(!seen.out_of_order, "{}", ctx());
        prop_assert!(seen.commits <= 1, "{}", ctx());
        match outcome {
            Ok(Some(obj)) => {
                ok += 1;
                let v = Python::attach(|py| obj.bind(py).extract::<i64>().unwrap());
                prop_assert_eq!(v, s.value, "{}", ctx());
                prop_assert_eq!(&seen.completes, &vec![s.value], "{}", ctx());
                prop_assert!(s.value >= 0 && !s.fail_commit, "{}", ctx());
                prop_assert!(!cancelled_by_us[i], "cancel() returned true: {}", ctx());
            }
            Ok(None) => prop_assert!(false, "value not kept: {}", ctx()),
            Err(e) => {
                prop_assert_eq!(&seen.fails, &vec![e.kind()], "{}", ctx());
                prop_assert!(!e.message().is_empty());
                match e.kind() {
                    ErrorKind::Cancelled => {
                        cancelled += 1;
                        prop_assert!(cancelled_by_us[i], "{}", ctx());
                        prop_assert_eq!(seen.commits, 0, "{}", ctx());
                    }
                    ErrorKind::TimedOut => {
                        expired += 1;
                        prop_assert!(s.deadline_us.is_some(), "{}", ctx());
                        prop_assert_eq!(seen.commits, 0, "{}", ctx());
                    }
                    ErrorKind::QueueFull => {
                        rejected += 1;
                        prop_assert!(cfg.bound.is_some(), "{}", ctx());
                        prop_assert_eq!(seen.commits, 0, "{}", ctx());
                    }
                    ErrorKind::Commit => {
                        failed += 1;
                        prop_assert!(s.fail_commit, "{}", ctx());
                    }
                    ErrorKind::PythonException => {
                        failed += 1;
                        prop_assert!(!s.fail_commit, "{}", ctx());
                        prop_assert!(e.message().contains("negative item"), "{}: {}", ctx(), e);
                        prop_assert_eq!(e.python_type(), "ValueError");
                        // A non-negative item fails only with a negative one in its batch.
                        prop_assert!(s.value < 0 || (cfg.batch_size > 1 && any_negative_run), "{}", ctx());
                    }
                    other => prop_assert!(false, "unexpected kind {other:?}: {}", ctx()),
                }
                if cancelled_by_us[i] {
                    prop_assert_eq!(e.kind(), ErrorKind::Cancelled, "{}", ctx());
                }
            }
        }
        if s.value < 0 && !s.fail_commit && seen.commits == 1 {
            prop_assert!(seen.fails == vec![ErrorKind::PythonException], "{}", ctx());
        }
    }
    let n = specs.len() as u64;
    prop_assert_eq!(stats.total_enqueued, n, "{:?}", stats);
    prop_assert_eq!(
        stats.completed + stats.failed + stats.cancelled + stats.expired + stats.rejected,
        stats.total_enqueued,
        "{:?}",
        stats
    );
    prop_assert_eq!(stats.completed, ok, "{:?}", stats);
    prop_assert_eq!(stats.failed, failed, "{:?}", stats);
    prop_assert_eq!(stats.cancelled, cancelled, "{:?}", stats);
    prop_assert_eq!(stats.expired, expired, "{:?}", stats);
    prop_assert_eq!(stats.rejected, rejected, "{:?}", stats);
    prop_assert_eq!(stats.commit_queue_size, 0, "{:?}", stats);
    prop_assert_eq!(stats.execute_queue_size, 0, "{:?}", stats);
    prop_assert!(stats.execute_batch_size_ema <= cfg.batch_size as f64, "{:?}", stats);
    if stats.batches > 0 {
        prop_assert!(stats.execute_batch_size_ema > 0.0, "{:?}", stats);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn every_item_ends_exactly_once_and_counters_add_up(
        cfg in config(),
        specs in prop::collection::vec(spec(), 0..160),
    ) {
        run_case(&cfg, &specs)?;
    }
}

/// Items queued from several threads at once, with random failures: the same
/// exactly-once and accounting properties.
#[derive(Debug, Clone)]
struct ThreadedCase {
    batch_size: usize,
    threads: usize,
    per_thread: Vec<Vec<i64>>,
}

fn threaded_case() -> impl Strategy<Value = ThreadedCase> {
    (1usize..=16, 2usize..=6).prop_flat_map(|(batch_size, threads)| {
        prop::collection::vec(
            prop::collection::vec(prop_oneof![19 => 0i64..1000, 1 => Just(-1i64)], 0..120),
            threads,
        )
        .prop_map(move |per_thread| ThreadedCase { batch_size, threads, per_thread })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, max_shrink_iters: 100, ..ProptestConfig::default() })]

    #[test]
    fn concurrent_producers_every_future_once(case in threaded_case()) {
        let handler = manager()
            .load(
                "pysched_testmod",
                "raise_for_negative",
                HandlerOptions { batch_size: case.batch_size, ..Default::default() },
            )
            .unwrap();
        let completed = AtomicUsize::new(0);
        let failed = AtomicUsize::new(0);
        let problems = Mutex::new(Vec::<String>::new());
        std::thread::scope(|scope| {
            for values in &case.per_thread {
                let handler = &handler;
                let (completed, failed, problems) = (&completed, &failed, &problems);
                scope.spawn(move || {
                    let futures: Vec<_> = values
                        .iter()
                        .map(|&v| (v, handler.queue(move |py| Ok(v.into_pyobject(py)?.into_any().unbind()))))
                        .collect();
                    for (v, f) in futures {
                        match f.wait() {
                            Ok(Some(obj)) => {
                                completed.fetch_add(1, Ordering::Relaxed);
                                let got = Python::attach(|py| obj.bind(py).extract::<i64>().unwrap());
                                if got != v || v < 0 {
                                    problems.lock().unwrap().push(format!("{v} -> {got}"));
                                }
                            }
                            Ok(None) => problems.lock().unwrap().push(format!("{v}: no value")),
                            Err(e) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                if e.kind() != ErrorKind::PythonException {
                                    problems.lock().unwrap().push(format!("{v}: {e}"));
                                }
                            }
                        }
                    }
                });
            }
        });
        let problems = problems.into_inner().unwrap();
        prop_assert!(problems.is_empty(), "{:?}", problems);
        let n: usize = case.per_thread.iter().map(Vec::len).sum();
        prop_assert_eq!(case.per_thread.len(), case.threads);
        prop_assert_eq!(completed.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed), n);
        let s = handler.stats();
        prop_assert_eq!(s.total_enqueued as usize, n);
        prop_assert_eq!(s.completed as usize, completed.load(Ordering::Relaxed));
        prop_assert_eq!(s.failed as usize, failed.load(Ordering::Relaxed));
        prop_assert_eq!(s.commit_queue_size + s.execute_queue_size, 0);
    }
}

/// A minimal executor for `ItemFuture` as a `std::future::Future`.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        match f.as_mut().poll(&mut cx) {
            Poll::Ready(v) => return v,
            Poll::Pending => std::thread::park(),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Awaiting a future gives the same outcome as waiting on it.
    #[test]
    fn awaiting_matches_waiting(values in prop::collection::vec(-2i64..50, 1..60), batch in 1usize..8) {
        let handler = manager()
            .load("pysched_testmod", "raise_for_negative", HandlerOptions { batch_size: batch, ..Default::default() })
            .unwrap();
        let futures: Vec<_> = values
            .iter()
            .map(|&v| handler.queue(move |py| Ok(v.into_pyobject(py)?.into_any().unbind())))
            .collect();
        for (v, f) in values.iter().zip(futures) {
            match block_on(f) {
                Ok(Some(obj)) => {
                    prop_assert!(*v >= 0);
                    prop_assert_eq!(Python::attach(|py| obj.bind(py).extract::<i64>().unwrap()), *v);
                }
                Ok(None) => prop_assert!(false, "no value"),
                Err(e) => prop_assert_eq!(e.kind(), ErrorKind::PythonException),
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Option validation: out-of-range values are rejected with InvalidArgument, in-range
    /// ones load.
    #[test]
    fn handler_options_are_validated(
        batch_size in prop_oneof![Just(0usize), 1usize..=1_000_000, 1_000_001usize..usize::MAX],
        prefetch_depth in prop_oneof![Just(0usize), 1usize..=4096, 4097usize..usize::MAX],
        concurrency in prop_oneof![Just(0usize), 1usize..=1024, 1025usize..usize::MAX],
        delay_us in prop_oneof![0u64..=60_000_000, 60_000_001u64..u64::MAX / 2],
    ) {
        let options = HandlerOptions {
            batch_size,
            prefetch_depth,
            concurrency,
            max_batch_delay: Duration::from_micros(delay_us),
            ..Default::default()
        };
        let valid = (1..=1_000_000).contains(&batch_size)
            && (1..=4096).contains(&prefetch_depth)
            && (1..=1024).contains(&concurrency)
            && delay_us <= 60_000_000;
        match manager().load("pysched_testmod", "identity", options) {
            Ok(_handler) => prop_assert!(valid, "accepted invalid options"),
            Err(e) => {
                prop_assert!(!valid, "rejected valid options: {}", e);
                prop_assert_eq!(e.kind(), ErrorKind::InvalidArgument);
            }
        }
    }
}

/// Waits and timeouts too long for an `Instant` behave as "no limit" instead of
/// panicking: `wait_for(Duration::MAX)` once panicked (and pysched_future_wait with it).
#[test]
fn unbounded_durations_do_not_panic() {
    let handler = manager().load("pysched_testmod", "identity", HandlerOptions::default()).unwrap();
    let f = handler.queue(|py| Ok(1i64.into_pyobject(py)?.into_any().unbind()));
    assert!(f.wait_for(Duration::MAX));
    assert!(f.take().is_ok());
    drop(handler);

    // A bounded, full queue under the block policy with a huge block timeout.
    let handler = manager()
        .load(
            "pysched_testmod",
            "sleep_ms",
            HandlerOptions { max_queue: 1, block_timeout: Some(Duration::MAX), ..Default::default() },
        )
        .expect("a huge block timeout is either rejected here or works");
    let slow = handler.queue(|py| Ok(100i64.into_pyobject(py)?.into_any().unbind()));
    let queued: Vec<_> =
        (0..3).map(|_| handler.queue(|py| Ok(0i64.into_pyobject(py)?.into_any().unbind()))).collect();
    assert!(slow.wait().is_ok());
    for f in queued {
        assert!(f.wait().is_ok());
    }
}
