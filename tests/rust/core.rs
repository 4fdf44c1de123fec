//! Tests of the core through the Rust API: batching, exactly-once completion under many
//! threads, per-item errors, drain, queue control and the interpreter's set-up.

mod common;

use pyo3::prelude::*;
use pyo3::types::{PyAnyMethods, PyTuple};
use pyscheduler::{ErrorKind, FullPolicy, HandlerOptions, ItemOptions, Job};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

fn opts(batch: usize) -> HandlerOptions {
    HandlerOptions { batch_size: batch, ..Default::default() }
}

fn int(py: Python<'_>, v: i64) -> PyResult<Py<PyAny>> {
    Ok(v.into_pyobject(py)?.into_any().unbind())
}

fn extract_i64(obj: &Py<PyAny>) -> i64 {
    Python::attach(|py| obj.bind(py).extract::<i64>().unwrap())
}

#[test]
fn queued_items_resolve_with_their_own_results() {
    let m = common::manager();
    let h = m.load("pysched_testmod", "double", opts(16)).unwrap();
    let futures: Vec<_> = (0..200i64).map(|i| h.queue(move |py| int(py, i))).collect();
    for (i, f) in futures.into_iter().enumerate() {
        let v = f.wait().unwrap().unwrap();
        assert_eq!(extract_i64(&v), 2 * i as i64);
    }
    let s = h.stats();
    assert_eq!(s.total_enqueued, 200);
    assert_eq!(s.completed, 200);
    assert_eq!(s.commit_queue_size, 0);
    assert_eq!(s.execute_queue_size, 0);
    assert!(s.execute_batch_size_ema > 0.0 && s.execute_batch_size_ema <= 16.0);
}

#[test]
fn batches_never_exceed_batch_size_and_do_form() {
    let m = common::manager();
    let h = m.load("pysched_testmod", "batch_sizes", opts(8)).unwrap();
    // Hold the GIL while queueing so items pile up, then let them run.
    let futures = Python::attach(|py| {
        py.detach(|| ());
        (0..100i64).map(|i| h.queue(move |py| int(py, i))).collect::<Vec<_>>()
    });
    let sizes: Vec<i64> = futures.into_iter().map(|f| extract_i64(&f.wait().unwrap().unwrap())).collect();
    assert!(sizes.iter().all(|&s| (1..=8).contains(&s)), "{sizes:?}");
    assert!(sizes.iter().any(|&s| s > 1), "no batching happened: {sizes:?}");
}

/// Counts how each item ended, to prove exactly-once resolution.
struct CountingJob {
    value: i64,
    completed: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    dropped: Arc<AtomicUsize>,
    fail_commit: bool,
}

impl Job for CountingJob {
    fn commit(&mut self, py: Python<'_>) -> pyscheduler::Result<Py<PyAny>> {
        if self.fail_commit {
            return Err(pyscheduler::Error::new(ErrorKind::Commit, "commit refused"));
        }
        Ok(int(py, self.value).unwrap())
    }
    fn complete(&mut self, _py: Python<'_>, result: &Bound<'_, PyAny>) -> pyscheduler::Result<()> {
        assert_eq!(result.extract::<i64>().unwrap(), self.value);
        self.completed.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn fail(&mut self, _error: &pyscheduler::Error) {
        self.failed.fetch_add(1, Ordering::SeqCst);
    }
}

impl Drop for CountingJob {
    fn drop(&mut self) {
        self.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn eight_producers_every_item_exactly_once() {
    let m = common::manager();
    let h = m.load("pysched_testmod", "identity", opts(32)).unwrap();
    let completed = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicUsize::new(0));
    const THREADS: i64 = 8;
    const PER: i64 = 5000;
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (h, completed, failed, dropped) = (&h, completed.clone(), failed.clone(), dropped.clone());
            s.spawn(move || {
                let futures: Vec<_> = (0..PER)
                    .map(|i| {
                        let value = t * PER + i;
                        let job = CountingJob {
                            value,
                            completed: completed.clone(),
                            failed: failed.clone(),
                            dropped: dropped.clone(),
                            fail_commit: value % 97 == 0,
                        };
                        (
                            value,
                            h.queue_job(
                                Box::new(job),
                                ItemOptions { keep_value: true, ..Default::default() },
                            ),
                        )
                    })
                    .collect();
                for (value, f) in futures {
                    match f.wait() {
                        Ok(Some(v)) => assert_eq!(extract_i64(&v), value),
                        Ok(None) => panic!("value not kept"),
                        Err(e) => {
                            assert_eq!(value % 97, 0, "unexpected failure {e}");
                            assert_eq!(e.kind(), ErrorKind::Commit);
                        }
                    }
                }
            });
        }
    });
    let total = (THREADS * PER) as usize;
    let expected_failed = (0..THREADS * PER).filter(|v| v % 97 == 0).count();
    assert_eq!(completed.load(Ordering::SeqCst), total - expected_failed);
    assert_eq!(failed.load(Ordering::SeqCst), expected_failed);
    assert_eq!(dropped.load(Ordering::SeqCst), total);
    let s = h.stats();
    assert_eq!(s.total_enqueued as usize, total);
    assert_eq!(s.completed as usize, total - expected_failed);
    assert_eq!(s.failed as usize, expected_failed);
}

#[test]
fn python_exception_fails_the_batch_with_type_and_traceback() {
    let m = common::manager();
    let h = m.load("pysched_testmod", "raise_value_error", opts(4)).unwrap();
    let e = h.queue(|py| int(py, 1)).wait().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PythonException);
    assert_eq!(e.python_type(), "ValueError");
    assert!(e.message().contains("bad batch of 1"), "{}", e.message());
    assert!(e.traceback().contains("raise_value_error"), "{}", e.traceback());
}

#[test]
fn wrong_results_fail_with_a_clear_message() {
    let m = common::manager();
    for (entry, needle) in [
        ("wrong_length", "of length 2"),
        ("not_a_sequence", "got int"),
        ("call_sys_exit", "SystemExit"),
        ("raise_keyboard_interrupt", "KeyboardInterrupt"),
    ] {
        let h = m.load("pysched_testmod", entry, opts(1)).unwrap();
        let e = h.queue(|py| int(py, 1)).wait().unwrap_err();
        assert!(e.message().contains(needle), "{entry}: {}", e.message());
    }
    let h = m.load("pysched_testmod", "returns_tuple", opts(4)).unwrap();
    assert_eq!(extract_i64(&h.queue(|py| int(py, 1)).wait().unwrap().unwrap()), 2);
    let h = m.load("pysched_testmod", "returns_generator", opts(4)).unwrap();
    assert!(h.queue(|py| int(py, 1)).wait().is_err());
}

#[test]
fn load_errors_are_reported_by_kind() {
    let m = common::manager();
    let e = m.load("no_such_module_xyz", "f", opts(1)).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Import);
    assert!(e.message().contains("No module named"), "{}", e.message());
    let e = m.load("pysched_testmod", "missing", opts(1)).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Attribute);
    let e = m.load("pysched_testmod", "not_callable", opts(1)).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Attribute);
    for bad in ["", "a..b", "os/path", "1abc"] {
        assert_eq!(m.load(bad, "f", opts(1)).err().unwrap().kind(), ErrorKind::InvalidArgument);
    }
    for (b, p) in [(0, 1), (1, 0), (2_000_000, 1), (1, 100_000)] {
        let o = HandlerOptions { batch_size: b, prefetch_depth: p, ..Default::default() };
        assert_eq!(
            m.load("pysched_testmod", "identity", o).err().unwrap().kind(),
            ErrorKind::InvalidArgument
        );
    }
    let h = m.load("pysched_testmod", "Model.predict", opts(2)).unwrap();
    assert_eq!(extract_i64(&h.queue(|py| int(py, 5)).wait().unwrap().unwrap()), 15);
}

#[test]
fn sync_call_and_errors() {
    let m = common::manager();
    let h = m.load("pysched_testmod", "add", opts(1)).unwrap();
    let v = h.call(|py| PyTuple::new(py, [3000i64, -1234])).unwrap();
    assert_eq!(extract_i64(&v), 1766);
    let h = m.load("pysched_testmod", "raise_error", opts(1)).unwrap();
    let e = h.call(|py| PyTuple::new(py, ["boom"])).unwrap_err();
    assert_eq!(e.python_type(), "RuntimeError");
    assert!(e.message().contains("boom"));
}

#[test]
fn drop_drains_every_queued_item() {
    let m = common::manager();
    let done = Arc::new(AtomicUsize::new(0));
    let h = m.load("pysched_testmod", "sleep_ms", opts(4)).unwrap();
    let mut futures = Vec::new();
    for _ in 0..40 {
        futures.push(h.queue(|py| int(py, 1)));
    }
    drop(h);
    for f in futures {
        assert!(f.is_ready(), "drop returned before the item finished");
        f.wait().unwrap();
        done.fetch_add(1, Ordering::SeqCst);
    }
    assert_eq!(done.load(Ordering::SeqCst), 40);
}

#[test]
fn two_handlers_that_release_the_gil_overlap() {
    let m = common::manager();
    let a = m.load("pysched_testmod", "sleep_ms", opts(1)).unwrap();
    let b = m.load("pysched_testmod", "sleep_ms", opts(1)).unwrap();
    let start = Instant::now();
    let fs: Vec<_> = (0..10).flat_map(|_| [a.queue(|py| int(py, 50)), b.queue(|py| int(py, 50))]).collect();
    for f in fs {
        f.wait().unwrap();
    }
    let elapsed = start.elapsed();
    // Serial would be 20 x 50 ms = 1000 ms; overlapped about 500 ms.
    assert!(elapsed < Duration::from_millis(800), "{elapsed:?}");
}

/// Waits (up to 10 s) until nothing of `h` waits to be taken into a batch.
fn wait_until_taken(h: &pyscheduler::Handler) {
    let give_up = Instant::now() + Duration::from_secs(10);
    while h.stats().commit_queue_size > 0 {
        assert!(Instant::now() < give_up, "the worker never took the item");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn cancel_and_deadline_and_bounded_queue() {
    let m = common::manager();
    let h = m.load("pysched_testmod", "sleep_ms", opts(1)).unwrap();
    let blocker = h.queue(|py| int(py, 1000));
    wait_until_taken(&h);
    let victim = h.queue(|py| int(py, 1));
    assert!(victim.cancel());
    assert!(!victim.cancel());
    assert_eq!(victim.wait().unwrap_err().kind(), ErrorKind::Cancelled);
    let late = h.queue_job(
        Box::new(CountingJob {
            value: 1,
            completed: Default::default(),
            failed: Default::default(),
            dropped: Default::default(),
            fail_commit: false,
        }),
        ItemOptions { deadline: Some(Instant::now() + Duration::from_millis(30)), keep_value: true },
    );
    let t = Instant::now();
    assert_eq!(late.wait().unwrap_err().kind(), ErrorKind::TimedOut);
    // Eager: long before the 1 s blocker lets the worker look at the queue again.
    assert!(t.elapsed() < Duration::from_millis(600), "deadline not eager: {:?}", t.elapsed());
    blocker.wait().unwrap();
    let s = h.stats();
    assert_eq!(s.cancelled, 1);
    assert_eq!(s.expired, 1);

    let bounded = m
        .load(
            "pysched_testmod",
            "sleep_ms",
            HandlerOptions { max_queue: 2, full_policy: FullPolicy::Reject, ..Default::default() },
        )
        .unwrap();
    let first = bounded.queue(|py| int(py, 100));
    wait_until_taken(&bounded);
    let q: Vec<_> = (0..2).map(|_| bounded.queue(|py| int(py, 1))).collect();
    let rejected = bounded.queue(|py| int(py, 1));
    assert_eq!(rejected.wait().unwrap_err().kind(), ErrorKind::QueueFull);
    first.wait().unwrap();
    for f in q {
        f.wait().unwrap();
    }
    assert_eq!(bounded.stats().rejected, 1);
}

#[test]
fn max_batch_delay_forms_fuller_batches() {
    let m = common::manager();
    let h = m
        .load(
            "pysched_testmod",
            "batch_sizes",
            HandlerOptions {
                batch_size: 8,
                max_batch_delay: Duration::from_millis(50),
                ..Default::default()
            },
        )
        .unwrap();
    let fs: Vec<_> = (0..8)
        .map(|i| {
            std::thread::sleep(Duration::from_millis(1));
            h.queue(move |py| int(py, i))
        })
        .collect();
    let sizes: Vec<i64> = fs.into_iter().map(|f| extract_i64(&f.wait().unwrap().unwrap())).collect();
    assert_eq!(sizes, vec![8; 8]);
    // A lone item waits at most about the delay.
    let t = Instant::now();
    h.queue(|py| int(py, 1)).wait().unwrap();
    let waited = t.elapsed();
    assert!(waited >= Duration::from_millis(45) && waited < Duration::from_millis(500), "{waited:?}");
}

#[test]
fn interpreter_setup_cwd_not_on_path_and_signal_handlers_absent() {
    let m = common::manager();
    let h = m.load("pysched_testmod", "sys_path", opts(1)).unwrap();
    let path: Vec<String> =
        Python::attach(|py| h.call(|py| Ok(PyTuple::empty(py))).unwrap().bind(py).extract().unwrap());
    let cwd = std::env::current_dir().unwrap().to_string_lossy().into_owned();
    assert!(!path.iter().any(|p| p.is_empty() || *p == cwd), "{path:?}");
}

#[test]
fn many_threads_race_to_start_and_share_state() {
    let barrier = Arc::new(Barrier::new(8));
    // Each thread keeps its manager until every address has been read, so that the
    // state cannot be freed and made again between two of them.
    let started: Vec<(pyscheduler::Manager, usize)> = (0..8)
        .map(|_| {
            let b = barrier.clone();
            std::thread::spawn(move || {
                b.wait();
                let m = common::manager();
                let a = pyscheduler::debug_shared_state_address();
                (m, a)
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    let shared = pyscheduler::debug_shared_state_address();
    assert_ne!(shared, 0);
    for (_, a) in &started {
        assert_eq!(*a, shared, "a manager started a second state");
    }
    drop(started);
}

#[test]
fn concurrency_runs_batches_of_one_handler_at_once() {
    let m = common::manager();
    let h = m
        .load("pysched_testmod", "sleep_ms", HandlerOptions { concurrency: 3, ..Default::default() })
        .unwrap();
    let start = Instant::now();
    let fs: Vec<_> = (0..12).map(|_| h.queue(|py| int(py, 60))).collect();
    for f in fs {
        f.wait().unwrap();
    }
    let elapsed = start.elapsed();
    // One batch at a time would take 12 x 60 ms = 720 ms; three at once about 240 ms.
    assert!(elapsed < Duration::from_millis(500), "{elapsed:?}");
    let s = h.stats();
    assert_eq!(s.completed, 12);
    assert_eq!(s.execute_queue_size, 0);
    assert_eq!(
        m.load("pysched_testmod", "identity", HandlerOptions { concurrency: 0, ..Default::default() })
            .err()
            .unwrap()
            .kind(),
        ErrorKind::InvalidArgument
    );
}

/// A job with GIL-free preparation that records where it ran.
struct StagedJob {
    value: i64,
    prepared: Option<i64>,
    threads: Arc<std::sync::Mutex<std::collections::HashSet<std::thread::ThreadId>>>,
    fail_prepare: bool,
}

impl Job for StagedJob {
    fn needs_prepare(&self) -> bool {
        true
    }
    fn prepare(&mut self) -> pyscheduler::Result<()> {
        // SAFETY-free check that no GIL is held here.
        assert!(!pyscheduler::runtime::is_attached(), "prepare ran with the GIL");
        self.threads.lock().unwrap().insert(std::thread::current().id());
        std::thread::sleep(Duration::from_millis(2));
        if self.fail_prepare {
            return Err(pyscheduler::Error::new(ErrorKind::Commit, "prepare refused"));
        }
        self.prepared = Some(self.value * 10);
        Ok(())
    }
    fn commit(&mut self, py: Python<'_>) -> pyscheduler::Result<Py<PyAny>> {
        Ok(int(py, self.prepared.expect("commit before prepare")).unwrap())
    }
    fn complete(&mut self, _py: Python<'_>, _r: &Bound<'_, PyAny>) -> pyscheduler::Result<()> {
        Ok(())
    }
    fn fail(&mut self, _e: &pyscheduler::Error) {}
}

#[test]
fn prepare_runs_without_the_gil_spread_over_workers_and_fails_per_item() {
    let m = common::manager();
    let h = m
        .load(
            "pysched_testmod",
            "identity",
            HandlerOptions { batch_size: 16, prefetch_depth: 2, ..Default::default() },
        )
        .unwrap();
    let threads = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let futures: Vec<_> = (0..64i64)
        .map(|i| {
            let job =
                StagedJob { value: i, prepared: None, threads: threads.clone(), fail_prepare: i % 13 == 5 };
            h.queue_job(Box::new(job), ItemOptions { keep_value: true, ..Default::default() })
        })
        .collect();
    for (i, f) in futures.into_iter().enumerate() {
        match f.wait() {
            Ok(v) => assert_eq!(extract_i64(&v.unwrap()), 10 * i as i64),
            Err(e) => {
                assert_eq!(i % 13, 5, "{e}");
                assert_eq!(e.kind(), ErrorKind::Commit);
            }
        }
    }
    assert!(threads.lock().unwrap().len() > 1, "preparation never spread over workers");
    let s = h.stats();
    assert_eq!(s.failed, 5);
    assert_eq!(s.completed, 59);
}

#[test]
fn sigint_stays_with_the_host_after_python_imports_signal() {
    fn sigint_disposition() -> libc::sighandler_t {
        // SAFETY: reads the current disposition only.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            libc::sigaction(libc::SIGINT, std::ptr::null(), &mut old);
            old.sa_sigaction
        }
    }
    // What the host had: SIG_DFL normally, SIG_IGN when started in the background by a
    // shell without job control. Python must leave it as it was.
    let host = sigint_disposition();
    // (Another test of this binary may have started the interpreter already: a handler
    // installed then would show here.)
    assert!(host == libc::SIG_DFL || host == libc::SIG_IGN, "SIGINT was taken before this test: {host:#x}");
    let m = common::manager();
    drop(m);
    Python::attach(|py| {
        py.import("signal").unwrap();
        py.import("asyncio").unwrap();
    });
    assert_eq!(sigint_disposition(), host, "Python took over SIGINT");
}
