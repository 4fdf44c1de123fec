//! Handlers whose batches run in own-GIL sub-interpreter replicas, through the public
//! API: exactly-once completion under many producers, per-batch and per-item errors,
//! load-time errors, the C ABI's items, and (where a free-threaded CPython is the build
//! target) the shared pool running Python in parallel.
//!
//! Needs a CPython 3.12+ build for the replica tests:
//! `PYO3_PYTHON=$HOME/.pyenv/versions/3.12.1/bin/python3 cargo test --target-dir target/py312 --test subinterp`.
//! Built against an older CPython (pyo3's `Py_3_12` cfg unset), they are `#[ignore]`d,
//! so `cargo test` reports them as ignored rather than passed; `load_errors_name_their_cause`
//! checks the Unsupported error there instead.

mod cdylib;
mod common;

use pyo3::ffi;
use pyo3::prelude::*;
use pyscheduler::ffi::handler::{pysched_handler_queue, pysched_item};
use pyscheduler::{Error, ErrorKind, HandlerOptions, ItemOptions, Job, Manager};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MODULE: &str = "subinterp_testmod";

fn python_minor() -> u32 {
    Python::attach(|py| py.version_info().minor as u32)
}

/// Tests of this file run one at a time: they count replica threads, and on a small
/// machine several handlers' replicas at once only compete for the same cores.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn replicated(replicas: usize, batch_size: usize) -> HandlerOptions {
    HandlerOptions { batch_size, subinterpreters: replicas, ..Default::default() }
}

/// Exactly-once bookkeeping shared by the jobs of one test.
#[derive(Default)]
struct Ledger {
    /// value -> the int its completion received, once per completion.
    completed: Mutex<Vec<(i64, i64)>>,
    failed: Mutex<Vec<(i64, ErrorKind)>>,
    dropped: AtomicUsize,
}

/// A job with raw C-API callbacks, as the C ABI's items have: commits `value` as an int
/// (or fails its commit with a ValueError when `fail_commit`), records what comes back.
struct RawJob {
    value: i64,
    fail_commit: bool,
    ledger: Arc<Ledger>,
}

impl RawJob {
    fn boxed(value: i64, ledger: &Arc<Ledger>) -> Box<dyn Job> {
        Box::new(RawJob { value, fail_commit: false, ledger: ledger.clone() })
    }
}

impl Job for RawJob {
    fn commit(&mut self, py: Python<'_>) -> pyscheduler::Result<Py<PyAny>> {
        Ok(self.value.into_pyobject(py).unwrap().into_any().unbind())
    }
    fn complete(&mut self, _py: Python<'_>, result: &Bound<'_, PyAny>) -> pyscheduler::Result<()> {
        self.ledger.completed.lock().unwrap().push((self.value, result.extract::<i64>().unwrap_or(i64::MIN)));
        Ok(())
    }
    fn fail(&mut self, error: &Error) {
        self.ledger.failed.lock().unwrap().push((self.value, error.kind()));
    }
    fn supports_raw(&self) -> bool {
        true
    }
    fn commit_raw(&mut self) -> *mut ffi::PyObject {
        // SAFETY: called on a replica's thread with its GIL held (the Job contract).
        unsafe {
            if self.fail_commit {
                ffi::PyErr_SetString(ffi::PyExc_ValueError, c"commit refused".as_ptr());
                return std::ptr::null_mut();
            }
            ffi::PyLong_FromLongLong(self.value)
        }
    }
    fn complete_raw(&mut self, result: *mut ffi::PyObject) -> pyscheduler::Result<()> {
        // SAFETY: as above; `result` is borrowed for the call.
        let got = unsafe {
            let v = ffi::PyLong_AsLongLong(result);
            if v == -1 && !ffi::PyErr_Occurred().is_null() {
                ffi::PyErr_Clear();
                i64::MIN
            } else {
                v
            }
        };
        self.ledger.completed.lock().unwrap().push((self.value, got));
        Ok(())
    }
}

impl Drop for RawJob {
    fn drop(&mut self) {
        self.ledger.dropped.fetch_add(1, SeqCst);
    }
}

#[test]
#[cfg_attr(not(Py_3_12), ignore = "needs CPython 3.12+ (own-GIL sub-interpreters)")]
fn many_producers_every_item_exactly_once() {
    let _serial = serial();
    let m = common::manager();
    let h = m.load(MODULE, "double", replicated(4, 16)).unwrap();
    let ledger = Arc::new(Ledger::default());
    const THREADS: i64 = 8;
    const PER: i64 = 2500;
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (h, ledger) = (&h, &ledger);
            s.spawn(move || {
                let futures: Vec<_> = (0..PER)
                    .map(|i| h.queue_job(RawJob::boxed(t * PER + i, ledger), ItemOptions::default()))
                    .collect();
                for f in futures {
                    assert!(matches!(f.wait(), Ok(None)), "replica futures resolve without a value");
                }
            });
        }
    });
    let total = (THREADS * PER) as usize;
    let mut completed = ledger.completed.lock().unwrap().clone();
    completed.sort_unstable();
    assert_eq!(completed.len(), total, "each item completed exactly once");
    for (i, &(value, got)) in completed.iter().enumerate() {
        assert_eq!((value, got), (i as i64, 2 * i as i64));
    }
    assert!(ledger.failed.lock().unwrap().is_empty());
    assert_eq!(ledger.dropped.load(SeqCst), total);
    let s = h.stats();
    assert_eq!((s.total_enqueued as usize, s.completed as usize, s.failed), (total, total, 0));
    assert_eq!((s.commit_queue_size, s.execute_queue_size), (0, 0));
    assert!(s.execute_batch_size_ema > 0.0 && s.execute_batch_size_ema <= 16.0);
}

#[test]
#[cfg_attr(not(Py_3_12), ignore = "needs CPython 3.12+ (own-GIL sub-interpreters)")]
fn batches_run_in_the_replicas_not_the_main_interpreter() {
    let _serial = serial();
    let m = common::manager();
    let main_marker: i64 = Python::attach(|py| {
        py.eval(c"id(__import__('sys').modules)", None, None).unwrap().extract().unwrap()
    });
    const REPLICAS: usize = 3;
    let h = m.load(MODULE, "interpreter_marker", replicated(REPLICAS, 2)).unwrap();
    let ledger = Arc::new(Ledger::default());
    let futures: Vec<_> =
        (0..600).map(|v| h.queue_job(RawJob::boxed(v, &ledger), ItemOptions::default())).collect();
    for f in futures {
        f.wait().unwrap();
    }
    let markers: std::collections::HashSet<i64> =
        ledger.completed.lock().unwrap().iter().map(|&(_, marker)| marker).collect();
    assert!(!markers.contains(&main_marker), "a batch ran in the main interpreter");
    assert!(
        (2..=REPLICAS).contains(&markers.len()),
        "{} distinct interpreters served 300 sleeping batches",
        markers.len()
    );
}

#[test]
#[cfg_attr(not(Py_3_12), ignore = "needs CPython 3.12+ (own-GIL sub-interpreters)")]
fn python_errors_fail_their_batch_only() {
    let _serial = serial();
    let m = common::manager();
    // One item per batch: exactly the negative items fail.
    let h = m.load(MODULE, "raise_for_negative", replicated(2, 1)).unwrap();
    let ledger = Arc::new(Ledger::default());
    let futures: Vec<_> =
        (-50..50).map(|v| (v, h.queue_job(RawJob::boxed(v, &ledger), ItemOptions::default()))).collect();
    for (v, f) in futures {
        match f.wait() {
            Ok(_) => assert!(v >= 0, "{v} succeeded"),
            Err(e) => {
                assert!(v < 0, "{v} failed: {e}");
                assert_eq!(e.kind(), ErrorKind::PythonException);
                assert!(
                    e.message().starts_with(
                        "subinterp_testmod.raise_for_negative raised: ValueError: negative item"
                    ),
                    "{}",
                    e.message()
                );
            }
        }
    }
    assert_eq!(ledger.failed.lock().unwrap().len(), 50);
    assert_eq!(ledger.completed.lock().unwrap().len(), 50);
    // A batch of several items fails as a whole.
    let h = m.load(MODULE, "raise_for_negative", replicated(1, 64)).unwrap();
    let futures: Vec<_> = Python::attach(|py| {
        // Queued while this thread holds the main GIL (which replicas never need), so the
        // items are most likely batched together; every one must fail either way.
        py.detach(|| ());
        (0..32).map(|v| h.queue_job(RawJob::boxed(-1 - v, &ledger), ItemOptions::default())).collect()
    });
    for f in futures {
        assert_eq!(f.wait().unwrap_err().kind(), ErrorKind::PythonException);
    }
}

#[test]
#[cfg_attr(not(Py_3_12), ignore = "needs CPython 3.12+ (own-GIL sub-interpreters)")]
fn commit_errors_stay_with_their_item() {
    let _serial = serial();
    let m = common::manager();
    let h = m.load(MODULE, "double", replicated(2, 8)).unwrap();
    let ledger = Arc::new(Ledger::default());
    let futures: Vec<_> = (0..200i64)
        .map(|v| {
            let job = RawJob { value: v, fail_commit: v % 7 == 0, ledger: ledger.clone() };
            (v, h.queue_job(Box::new(job), ItemOptions::default()))
        })
        .collect();
    for (v, f) in futures {
        match f.wait() {
            Ok(_) => assert_ne!(v % 7, 0),
            Err(e) => {
                assert_eq!(v % 7, 0, "{v}: {e}");
                assert_eq!(e.kind(), ErrorKind::Commit);
                assert!(e.message().contains("ValueError: commit refused"), "{}", e.message());
            }
        }
    }
    let mut completed = ledger.completed.lock().unwrap().clone();
    completed.sort_unstable();
    let expected: Vec<_> = (0..200i64).filter(|v| v % 7 != 0).map(|v| (v, 2 * v)).collect();
    assert_eq!(completed, expected);
    assert_eq!(ledger.dropped.load(SeqCst), 200);
}

#[test]
#[cfg_attr(not(Py_3_12), ignore = "needs CPython 3.12+ (own-GIL sub-interpreters)")]
fn wrong_results_and_exits_fail_with_clear_messages() {
    let _serial = serial();
    let m = common::manager();
    for (entry, needle) in [
        (
            "wrong_length",
            "must return a sequence of 1 results (one per item of the batch), got a list of length 2",
        ),
        ("not_a_sequence", "must return a sequence of 1 results (one per item of the batch), got int"),
        (
            "returns_generator",
            "must return a sequence of 1 results (one per item of the batch), got generator",
        ),
        ("call_sys_exit", "SystemExit: 3"),
    ] {
        let h = m.load(MODULE, entry, replicated(1, 1)).unwrap();
        let ledger = Arc::new(Ledger::default());
        let e = h.queue_job(RawJob::boxed(1, &ledger), ItemOptions::default()).wait().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PythonException, "{entry}");
        assert!(e.message().contains(needle), "{entry}: {}", e.message());
    }
    for (entry, expected) in [("returns_tuple", 2), ("Model.predict", 3)] {
        let h = m.load(MODULE, entry, replicated(1, 4)).unwrap();
        let ledger = Arc::new(Ledger::default());
        h.queue_job(RawJob::boxed(1, &ledger), ItemOptions::default()).wait().unwrap();
        assert_eq!(ledger.completed.lock().unwrap()[0], (1, expected), "{entry}");
    }
}

#[test]
fn load_errors_name_their_cause() {
    let _serial = serial();
    let m = common::manager();
    if python_minor() < 12 {
        let e = m.load(MODULE, "double", replicated(2, 1)).err().expect("replicas on CPython < 3.12");
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        let expected = format!("own-GIL sub-interpreters need CPython 3.12+, this is 3.{}", python_minor());
        assert!(e.message().contains(&expected), "{}", e.message());
    } else {
        let e = m.load(MODULE, "no_such_function", replicated(2, 1)).err().unwrap();
        assert_eq!(e.kind(), ErrorKind::Attribute, "{e}");
        assert!(e.message().contains("no_such_function"), "{e}");
        let e = m.load(MODULE, "not_callable", replicated(2, 1)).err().unwrap();
        assert_eq!(e.kind(), ErrorKind::Attribute, "{e}");
        let e = m.load("no_such_module_xyz", "f", replicated(2, 1)).err().unwrap();
        assert_eq!(e.kind(), ErrorKind::Import, "{e}");
    }
    let too_many = pyscheduler::subinterp::MAX_REPLICAS + 1;
    let e = m.load(MODULE, "double", replicated(too_many, 1)).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(e.message().contains("replicas"), "{e}");
}

#[test]
#[cfg_attr(not(Py_3_12), ignore = "needs CPython 3.12+ (own-GIL sub-interpreters)")]
fn module_refusing_subinterpreters_fails_the_load_with_its_name() {
    let _serial = serial();
    let m = common::manager();
    let (refused, skip): (Option<String>, Option<String>) = Python::attach(|py| {
        let module = py.import("subinterp_refuses").unwrap();
        (
            module.getattr("REFUSED").unwrap().extract().unwrap(),
            module.getattr("SKIP_REASON").unwrap().extract().unwrap(),
        )
    });
    let Some(refused) = refused else {
        eprintln!("module_refusing_subinterpreters...: skipped, {}", skip.unwrap_or_default());
        return;
    };
    let e = m.load("subinterp_refuses", "invoke", replicated(2, 1)).err().expect("load must fail");
    assert_eq!(e.kind(), ErrorKind::Import, "{e}");
    for needle in ["\"subinterp_refuses\"", refused.as_str(), "does not support loading in subinterpreters"] {
        assert!(e.message().contains(needle), "missing {needle:?} in: {}", e.message());
    }
    // The same module still loads in the shared interpreter.
    m.load("subinterp_refuses", "invoke", HandlerOptions::default()).unwrap();
}

#[test]
#[cfg_attr(not(Py_3_12), ignore = "needs CPython 3.12+ (own-GIL sub-interpreters)")]
fn dropping_the_handler_drains_and_ends_its_replicas() {
    let _serial = serial();
    let m = common::manager();
    let before = replica_threads();
    let h = m.load(MODULE, "double", replicated(3, 4)).unwrap();
    assert_eq!(replica_threads(), before + 3);
    let ledger = Arc::new(Ledger::default());
    for v in 0..3000 {
        drop(h.queue_job(RawJob::boxed(v, &ledger), ItemOptions::default()));
    }
    drop(h);
    assert_eq!(ledger.completed.lock().unwrap().len(), 3000, "drop drains");
    assert_eq!(ledger.dropped.load(SeqCst), 3000);
    let deadline = Instant::now() + Duration::from_secs(10);
    while replica_threads() > before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(replica_threads(), before, "replica threads still running after drop");
}

/// Threads of this process named like replica threads.
fn replica_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| {
            tasks
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .filter(|name| name.starts_with("pysched-sub"))
                .count()
        })
        .unwrap_or(0)
}

/// The C ABI's items (commit/complete/drop function pointers) in replicas: each item's
/// callbacks run once, with the replica's interpreter current.
#[test]
#[cfg_attr(not(Py_3_12), ignore = "needs CPython 3.12+ (own-GIL sub-interpreters)")]
fn c_abi_items_run_in_replicas() {
    let _serial = serial();
    let m = common::manager();
    let h = c_handler(&m, MODULE, "double", 2, 8);
    struct Slot {
        value: i64,
        got: Mutex<Option<i64>>,
        in_main: Mutex<Option<bool>>,
        drops: AtomicUsize,
    }
    unsafe extern "C" fn commit(user_data: *mut c_void) -> *mut ffi::PyObject {
        let slot = &*(user_data as *const Slot);
        ffi::PyLong_FromLongLong(slot.value)
    }
    unsafe extern "C" fn complete(
        user_data: *mut c_void,
        result: *mut ffi::PyObject,
        _error: *const pyscheduler::ffi::pysched_error,
    ) -> i32 {
        let slot = &*(user_data as *const Slot);
        if !result.is_null() {
            *slot.got.lock().unwrap() = Some(ffi::PyLong_AsLongLong(result));
            let here = ffi::PyInterpreterState_Get();
            *slot.in_main.lock().unwrap() = Some(here == ffi::PyInterpreterState_Main());
        }
        0
    }
    unsafe extern "C" fn drop_slot(user_data: *mut c_void) {
        (*(user_data as *const Slot)).drops.fetch_add(1, SeqCst);
    }
    let slots: Vec<Arc<Slot>> = (0..300)
        .map(|value| {
            Arc::new(Slot {
                value,
                got: Mutex::new(None),
                in_main: Mutex::new(None),
                drops: AtomicUsize::new(0),
            })
        })
        .collect();
    for slot in &slots {
        let item = pysched_item {
            user_data: Arc::as_ptr(slot) as *mut c_void,
            commit: Some(commit),
            prepare: None,
            complete: Some(complete),
            drop: Some(drop_slot),
            timeout_us: 0,
        };
        let status = pysched_handler_queue(h.0, &item, std::ptr::null_mut(), std::ptr::null_mut());
        assert_eq!(status as i32, 0);
    }
    drop(h); // drains
    for slot in &slots {
        assert_eq!(*slot.got.lock().unwrap(), Some(2 * slot.value));
        assert_eq!(*slot.in_main.lock().unwrap(), Some(false), "callbacks run in the replica");
        assert_eq!(slot.drops.load(SeqCst), 1);
    }
}

/// A C ABI handler, freed (drained) on drop.
struct CHandler(*mut pyscheduler::ffi::handler::pysched_handler);

impl Drop for CHandler {
    fn drop(&mut self) {
        pyscheduler::ffi::handler::pysched_handler_free(self.0);
    }
}

fn c_handler(_m: &Manager, module: &str, entry: &str, replicas: u32, batch_size: u32) -> CHandler {
    use pyscheduler::ffi::manager::*;
    let mut manager = std::ptr::null_mut();
    assert_eq!(pysched_manager_new(std::ptr::null(), &mut manager, std::ptr::null_mut()) as i32, 0);
    let mut opts = pyscheduler::ffi::handler::pysched_handler_options_default();
    opts.batch_size = batch_size;
    opts.subinterpreters = replicas;
    let module = std::ffi::CString::new(module).unwrap();
    let entry = std::ffi::CString::new(entry).unwrap();
    let mut handler = std::ptr::null_mut();
    let status = pysched_manager_load(
        manager,
        module.as_ptr(),
        entry.as_ptr(),
        &opts,
        &mut handler,
        std::ptr::null_mut(),
    );
    pysched_manager_free(manager);
    assert_eq!(status as i32, 0);
    CHandler(handler)
}

/// Built against a free-threaded CPython (3.14t), the shared pool runs one handler's
/// batches on several workers at once with no GIL: two CPU-bound batches finish in
/// clearly less than twice the time of one. Ignored (reported as such) on GIL builds.
#[test]
#[cfg_attr(not(Py_GIL_DISABLED), ignore = "needs a free-threaded CPython (3.14t)")]
fn free_threaded_pool_runs_python_in_parallel() {
    let _serial = serial();
    let m = common::manager();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    if cpus < 2 || m.worker_threads() < 2 {
        eprintln!("free_threaded_pool_runs_python_in_parallel: skipped, needs 2 CPUs and 2 workers");
        return;
    }
    let h = m
        .load(
            "subinterp_cpu",
            "invoke",
            HandlerOptions { batch_size: 1, concurrency: 2, ..Default::default() },
        )
        .unwrap();
    let run = |items: i64| {
        let t = Instant::now();
        let futures: Vec<_> =
            (0..items).map(|_| h.queue(|py| Ok(300_000i64.into_pyobject(py)?.into_any().unbind()))).collect();
        for f in futures {
            f.wait().unwrap();
        }
        t.elapsed()
    };
    let median = |items: i64| {
        let mut v: Vec<Duration> = (0..5).map(|_| run(items)).collect();
        v.sort();
        v[2]
    };
    let one = median(1);
    let two = median(2);
    assert!(two.as_secs_f64() < 1.5 * one.as_secs_f64(), "one batch {one:?}, two batches {two:?}");
}

#[test]
#[cfg_attr(not(Py_3_12), ignore = "needs CPython 3.12+ (own-GIL sub-interpreters)")]
fn replica_handlers_count_in_stats_and_metrics() {
    let _serial = serial();
    let m = common::manager();
    let h = m.load(MODULE, "double", replicated(2, 4)).unwrap();
    let ledger = Arc::new(Ledger::default());
    let futures: Vec<_> =
        (0..100).map(|v| h.queue_job(RawJob::boxed(v, &ledger), ItemOptions::default())).collect();
    let mut outcomes: HashMap<bool, usize> = HashMap::new();
    for f in futures {
        *outcomes.entry(f.wait().is_ok()).or_default() += 1;
    }
    assert_eq!(outcomes.get(&true), Some(&100));
    let s = h.stats();
    assert_eq!(s.completed, 100);
    assert!(s.batches >= 25 && s.batches <= 100, "{}", s.batches);
    assert!(s.execute_ns_per_batch_ema > 0.0 && s.commit_ns_per_batch_ema > 0.0);
    assert!(h.prometheus_text().contains("subinterp_testmod.double"));
}

#[test]
#[cfg_attr(not(Py_3_12), ignore = "needs CPython 3.12+ (own-GIL sub-interpreters)")]
fn batch_delay_and_deadlines_apply_to_replicas() {
    let _serial = serial();
    let m = common::manager();
    let options = HandlerOptions {
        batch_size: 8,
        max_batch_delay: Duration::from_millis(40),
        subinterpreters: 2,
        ..Default::default()
    };
    let h = m.load(MODULE, "batch_size", options).unwrap();
    let ledger = Arc::new(Ledger::default());
    let start = Instant::now();
    let futures: Vec<_> =
        (0..3).map(|v| h.queue_job(RawJob::boxed(v, &ledger), ItemOptions::default())).collect();
    for f in futures {
        f.wait().unwrap();
    }
    assert!(
        start.elapsed() >= Duration::from_millis(30),
        "the batch delay was not waited: {:?}",
        start.elapsed()
    );
    let sizes: Vec<i64> = ledger.completed.lock().unwrap().iter().map(|&(_, size)| size).collect();
    assert_eq!(sizes, vec![3, 3, 3], "the three items travel in one batch");

    let expired = h.queue_job(
        RawJob::boxed(7, &ledger),
        ItemOptions { deadline: Some(Instant::now()), ..Default::default() },
    );
    assert_eq!(expired.wait().unwrap_err().kind(), ErrorKind::TimedOut);
    assert!(ledger.failed.lock().unwrap().contains(&(7, ErrorKind::TimedOut)));
    assert_eq!(ledger.dropped.load(SeqCst), 4);
}

/// A Python exception raised in a replica reaches the item with the same fields as in
/// the main interpreter: kind, message, exception type and traceback text, equal field
/// for field to the error of the same function run by the shared pool.
#[test]
#[cfg_attr(not(Py_3_12), ignore = "needs CPython 3.12+ (own-GIL sub-interpreters)")]
fn python_errors_carry_type_and_traceback_as_in_the_main_interpreter() {
    let _serial = serial();
    let m = common::manager();
    let ledger = Arc::new(Ledger::default());
    for (entry, python_type, frame) in [
        ("raise_for_negative", "ValueError", "in raise_for_negative"),
        ("call_sys_exit", "SystemExit", "in call_sys_exit"),
    ] {
        let shared = m.load(MODULE, entry, HandlerOptions { batch_size: 1, ..Default::default() }).unwrap();
        let replica = m.load(MODULE, entry, replicated(2, 1)).unwrap();
        let in_main =
            shared.queue_job(RawJob::boxed(-1, &ledger), ItemOptions::default()).wait().unwrap_err();
        let in_replica =
            replica.queue_job(RawJob::boxed(-1, &ledger), ItemOptions::default()).wait().unwrap_err();
        assert_eq!(in_replica.kind(), ErrorKind::PythonException, "{in_replica}");
        assert_eq!(in_replica.python_type(), python_type, "{in_replica}");
        let traceback = in_replica.traceback();
        assert!(traceback.starts_with("Traceback (most recent call last):\n"), "{entry}: {traceback:?}");
        assert!(
            traceback.contains("subinterp_testmod.py") && traceback.contains(frame),
            "{entry}: {traceback}"
        );
        assert_eq!(in_replica, in_main, "{entry}: the replica's error differs from the main interpreter's");
    }
    // A commit callback's exception keeps its type too (raised from C: no frames).
    let h = m.load(MODULE, "double", replicated(1, 1)).unwrap();
    let job = RawJob { value: 1, fail_commit: true, ledger: ledger.clone() };
    let e = h.queue_job(Box::new(job), ItemOptions::default()).wait().unwrap_err();
    assert_eq!((e.kind(), e.python_type(), e.traceback()), (ErrorKind::Commit, "ValueError", ""), "{e}");
    assert_eq!(e.message(), "commit callback failed: ValueError: commit refused");
}

/// Through the C ABI: the error handed to the item's `complete` callback and the one its
/// future holds carry the exception's type and traceback (`pysched_error_python_type`,
/// `pysched_error_traceback`), the same in a replica as in the shared pool.
#[test]
#[cfg_attr(not(Py_3_12), ignore = "needs CPython 3.12+ (own-GIL sub-interpreters)")]
fn c_abi_errors_carry_python_type_and_traceback() {
    use pyscheduler::ffi::error::*;
    use pyscheduler::ffi::future::*;
    use std::ffi::CStr;
    let _serial = serial();
    let m = common::manager();
    /// (kind, message, python type, traceback) of an error, read through the C ABI.
    type Fields = (i32, String, String, String);
    unsafe fn fields(error: *const pysched_error) -> Fields {
        let text = |p: *const std::ffi::c_char| CStr::from_ptr(p).to_string_lossy().into_owned();
        (
            pysched_error_kind(error) as i32,
            text(pysched_error_message(error)),
            text(pysched_error_python_type(error)),
            text(pysched_error_traceback(error)),
        )
    }
    #[derive(Default)]
    struct Slot {
        in_complete: Mutex<Option<Fields>>,
    }
    unsafe extern "C" fn commit(_user_data: *mut c_void) -> *mut ffi::PyObject {
        ffi::PyLong_FromLongLong(-5)
    }
    unsafe extern "C" fn complete(
        user_data: *mut c_void,
        result: *mut ffi::PyObject,
        error: *const pysched_error,
    ) -> i32 {
        let slot = &*(user_data as *const Slot);
        if result.is_null() && !error.is_null() {
            *slot.in_complete.lock().unwrap() = Some(fields(error));
        }
        0
    }
    let mut seen: Vec<(Fields, Fields)> = Vec::new();
    for replicas in [0, 2] {
        let h = c_handler(&m, MODULE, "raise_for_negative", replicas, 1);
        let slot = Slot::default();
        let item = pysched_item {
            user_data: &slot as *const Slot as *mut c_void,
            commit: Some(commit),
            prepare: None,
            complete: Some(complete),
            drop: None,
            timeout_us: 0,
        };
        let mut future = std::ptr::null_mut();
        let status = pysched_handler_queue(h.0, &item, &mut future, std::ptr::null_mut());
        assert_eq!(status as i32, 0);
        assert_eq!(pysched_future_wait(future, std::ptr::null_mut()) as i32, 0);
        let mut result = std::ptr::null_mut();
        let mut error = std::ptr::null_mut();
        let status = pysched_future_take(future, &mut result, &mut error);
        assert_eq!(status as i32, ErrorKind::PythonException as i32);
        assert!(result.is_null() && !error.is_null());
        // SAFETY: a live error handle from pysched_future_take.
        let from_future = unsafe { fields(error) };
        pysched_error_free(error);
        pysched_future_free(future);
        drop(h); // drains: the complete callback has run
        let in_complete = slot.in_complete.lock().unwrap().clone().expect("complete got the error");
        let (kind, message, python_type, traceback) = &from_future;
        assert_eq!(*kind, ErrorKind::PythonException as i32);
        assert!(
            message.starts_with("subinterp_testmod.raise_for_negative raised: ValueError: negative item"),
            "{replicas} replicas: {message}"
        );
        assert_eq!(python_type, "ValueError", "{replicas} replicas");
        assert!(
            traceback.starts_with("Traceback (most recent call last):\n")
                && traceback.contains("in raise_for_negative"),
            "{replicas} replicas: {traceback:?}"
        );
        assert_eq!(in_complete, from_future, "{replicas} replicas: complete and future disagree");
        seen.push((in_complete, from_future));
    }
    assert_eq!(seen[0], seen[1], "the replica's error differs from the shared pool's");
}

/// A replica-capable job whose object is the int 1 and whose completion (in a replica
/// or in the main interpreter) runs `on_complete`.
struct RawOne<F: FnMut() + Send + 'static> {
    on_complete: F,
}

impl<F: FnMut() + Send + 'static> RawOne<F> {
    fn new(on_complete: F) -> Self {
        RawOne { on_complete }
    }
}

impl<F: FnMut() + Send + 'static> Job for RawOne<F> {
    fn commit(&mut self, py: Python<'_>) -> pyscheduler::Result<Py<PyAny>> {
        Ok(1i64.into_pyobject(py).unwrap().into_any().unbind())
    }
    fn complete(&mut self, _py: Python<'_>, _r: &Bound<'_, PyAny>) -> pyscheduler::Result<()> {
        (self.on_complete)();
        Ok(())
    }
    fn fail(&mut self, _error: &Error) {}
    fn supports_raw(&self) -> bool {
        true
    }
    fn commit_raw(&mut self) -> *mut ffi::PyObject {
        // SAFETY: called in the replica with its GIL held.
        unsafe { ffi::PyLong_FromLongLong(1) }
    }
    fn complete_raw(&mut self, _result: *mut ffi::PyObject) -> pyscheduler::Result<()> {
        (self.on_complete)();
        Ok(())
    }
}

/// `pysched_handler_drain` called from inside a replica's complete callback on its own
/// handler behaves as on the shared pool: it marks the handler as draining and returns
/// (it cannot wait for the batch it is called from) instead of deadlocking, and every
/// item still completes exactly once. Also `Handler::drain` from a Rust job.
#[test]
#[cfg_attr(not(Py_3_12), ignore = "needs CPython 3.12+ (own-GIL sub-interpreters)")]
fn drain_from_inside_a_replica_callback_returns() {
    use pyscheduler::ffi::handler::pysched_handler_drain;
    let _serial = serial();
    let m = common::manager();
    struct Slot {
        /// The `pysched_handler*` the item is queued on.
        handler: usize,
        value: i64,
        got: Mutex<Option<i64>>,
        drain_status: Mutex<Option<i32>>,
        drops: AtomicUsize,
    }
    unsafe extern "C" fn commit(user_data: *mut c_void) -> *mut ffi::PyObject {
        ffi::PyLong_FromLongLong((*(user_data as *const Slot)).value)
    }
    unsafe extern "C" fn complete(
        user_data: *mut c_void,
        result: *mut ffi::PyObject,
        _error: *const pyscheduler::ffi::pysched_error,
    ) -> i32 {
        let slot = &*(user_data as *const Slot);
        if !result.is_null() {
            *slot.got.lock().unwrap() = Some(ffi::PyLong_AsLongLong(result));
        }
        if slot.value % 10 == 0 {
            let status = pysched_handler_drain(slot.handler as *const _, std::ptr::null_mut());
            *slot.drain_status.lock().unwrap() = Some(status as i32);
        }
        0
    }
    unsafe extern "C" fn drop_slot(user_data: *mut c_void) {
        (*(user_data as *const Slot)).drops.fetch_add(1, SeqCst);
    }
    // Runs on a watchdog's clock: a deadlock fails the test instead of hanging it.
    fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| panic!("{what}: deadlocked"))
    }
    for replicas in [0u32, 2] {
        let h = c_handler(&m, MODULE, "double", replicas, 4);
        let handler = h.0 as usize;
        let slots: Vec<Arc<Slot>> = (0..200)
            .map(|value| {
                Arc::new(Slot {
                    handler,
                    value,
                    got: Mutex::new(None),
                    drain_status: Mutex::new(None),
                    drops: AtomicUsize::new(0),
                })
            })
            .collect();
        let shared: Vec<usize> = slots.iter().map(|s| Arc::as_ptr(s) as usize).collect();
        within(&format!("drain inside a callback, {replicas} replicas"), move || {
            for user_data in shared {
                let item = pysched_item {
                    user_data: user_data as *mut c_void,
                    commit: Some(commit),
                    prepare: None,
                    complete: Some(complete),
                    drop: Some(drop_slot),
                    timeout_us: 0,
                };
                let status = pysched_handler_queue(
                    handler as *const _,
                    &item,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                );
                assert_eq!(status as i32, 0);
            }
            // From outside: waits for everything, including the callbacks that drain.
            assert_eq!(pysched_handler_drain(handler as *const _, std::ptr::null_mut()) as i32, 0);
        });
        for slot in &slots {
            assert_eq!(*slot.got.lock().unwrap(), Some(2 * slot.value), "{replicas} replicas");
            assert_eq!(slot.drops.load(SeqCst), 1, "{replicas} replicas");
            let expected = (slot.value % 10 == 0).then_some(0);
            assert_eq!(
                *slot.drain_status.lock().unwrap(),
                expected,
                "{replicas} replicas, item {}",
                slot.value
            );
        }
        drop(h);
    }

    // The Rust API: a job whose completion drains its own handler.
    let handler = Arc::new(m.load(MODULE, "double", replicated(2, 1)).unwrap());
    let slot = Arc::new(Mutex::new(Some(handler.clone())));
    let drained = Arc::new(AtomicUsize::new(0));
    let (slot2, drained2, handler2) = (slot.clone(), drained.clone(), handler.clone());
    within("Handler::drain inside a replica callback", move || {
        let futures: Vec<_> = (0..20)
            .map(|_| {
                let (slot, drained) = (slot2.clone(), drained2.clone());
                let job = RawOne::new(move || {
                    let handler = slot.lock().unwrap().clone().expect("handler set before queueing");
                    handler.drain();
                    drained.fetch_add(1, SeqCst);
                });
                handler2.queue_job(Box::new(job), ItemOptions::default())
            })
            .collect();
        for f in futures {
            f.wait().unwrap();
        }
    });
    assert_eq!(drained.load(SeqCst), 20);
    slot.lock().unwrap().take();
    drop(Arc::try_unwrap(handler).ok().expect("the jobs released the handler"));
}

/// `Py_FinalizeEx` of an interpreter pyscheduler adopted, with a replica handler alive
/// and items queued on it: the exit hook lets the batch inside Python finish, fails the
/// others with ShutDown (each exactly once), and ends the replicas first, so CPython 3.12
/// does not abort ("remaining subinterpreters") and 3.13 has nothing left to clean up.
#[test]
#[cfg_attr(not(Py_3_12), ignore = "needs CPython 3.12+ (own-GIL sub-interpreters)")]
fn finalizing_with_a_live_replica_handler_is_clean() {
    let _serial = serial();
    let _m = common::manager();
    let (status, stdout, stderr) = run_helper("finalize");
    assert!(status.success(), "helper exited with {status:?}\nstdout:\n{stdout}\nstderr:\n{stderr}");
    for bad in ["Fatal Python error", "remaining subinterpreters", "panicked"] {
        assert!(!stderr.contains(bad), "{bad:?} in the helper's stderr:\n{stderr}");
    }
    let verdict =
        stdout.lines().find_map(|l| l.find(FINALIZE_VERDICT).map(|at| &l[at..])).unwrap_or_default();
    assert_eq!(
        verdict,
        format!("{FINALIZE_VERDICT} finalize=0 completed=1 shut_down=20 dropped=21 resolved=21"),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
}

/// A Python program (CPython 3.12+) that loads pyscheduler with ctypes, queues items on
/// a replica handler and exits with the handler alive: it must exit 0 after every
/// future resolved (the running item normally, the queued ones with ShutDown).
#[test]
#[cfg_attr(not(Py_3_12), ignore = "needs CPython 3.12+ (own-GIL sub-interpreters)")]
fn python_program_exits_with_a_live_replica_handler() {
    let _serial = serial();
    let _m = common::manager();
    let lib = cdylib::path();
    let python = std::env::var("PYO3_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = std::process::Command::new(python)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/subinterp_exit.py"))
        .arg(&lib)
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{:?}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    assert!(!stderr.contains("remaining subinterpreters"), "{stderr}");
    assert!(
        stdout.contains("exit check: 21 ready, 1 ran, 20 shut down"),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
}

const HELPER_ENV: &str = "PYSCHED_SUBINTERP_HELPER";
const FINALIZE_VERDICT: &str = "PYSCHED_FINALIZE_VERDICT";

/// Runs this test binary's `helper` test in a subprocess in `mode`; (status, stdout,
/// stderr). Fails the test after 120 s.
fn run_helper(mode: &str) -> (std::process::ExitStatus, String, String) {
    use std::io::Read;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "helper", "--nocapture", "--test-threads=1"])
        .env(HELPER_ENV, mode)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("helper {mode} did not exit within 120 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (mut stdout, mut stderr) = (String::new(), String::new());
    child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    (status, stdout, stderr)
}

/// The subprocess side of the exit tests; a no-op in a normal test run.
#[test]
fn helper() {
    let Ok(mode) = std::env::var(HELPER_ENV) else {
        return;
    };
    assert_eq!(mode, "finalize", "unknown helper mode");
    // Someone else's interpreter, which pyscheduler adopts and that someone finalizes.
    Python::initialize();
    let m = common::manager();
    assert_eq!(m.start_mode(), pyscheduler::StartMode::Adopted);
    let h = m.load(MODULE, "sleep_ms", replicated(1, 1)).unwrap();
    let ledger = Arc::new(Ledger::default());
    let first = h.queue_job(RawJob::boxed(1000, &ledger), ItemOptions::default());
    // Let the first batch enter Python, then queue 20 that cannot start before exit.
    std::thread::sleep(Duration::from_millis(100));
    let mut futures = vec![first];
    futures.extend((0..20).map(|_| h.queue_job(RawJob::boxed(300, &ledger), ItemOptions::default())));
    std::mem::forget(h);
    std::mem::forget(m);
    // SAFETY: the main thread takes the GIL and finalizes, as a Python program's exit
    // does; nothing touches Python afterwards.
    let finalize = unsafe {
        ffi::PyGILState_Ensure();
        ffi::Py_FinalizeEx()
    };
    let resolved = futures.iter().filter(|f| f.is_ready()).count();
    let mut outcomes: HashMap<&str, usize> = HashMap::new();
    for f in futures {
        let key = match f.take() {
            Ok(_) => "completed",
            Err(e) if e.kind() == ErrorKind::ShutDown => "shut_down",
            Err(e) => panic!("unexpected outcome {e}"),
        };
        *outcomes.entry(key).or_default() += 1;
    }
    let completed = ledger.completed.lock().unwrap().len();
    let failed = ledger.failed.lock().unwrap().clone();
    assert!(failed.iter().all(|&(_, kind)| kind == ErrorKind::ShutDown), "{failed:?}");
    assert_eq!(
        (outcomes.get("completed").copied().unwrap_or(0), outcomes.get("shut_down").copied().unwrap_or(0)),
        (completed, failed.len())
    );
    println!(
        "{FINALIZE_VERDICT} finalize={finalize} completed={completed} shut_down={} dropped={} resolved={resolved}",
        failed.len(),
        ledger.dropped.load(SeqCst)
    );
    std::process::exit(0);
}

/// Releasing the GIL inside a replica (a drain from a callback, as above) goes through
/// the C-API, not pyo3: pyo3's `attach` would run its deferred decrefs of main-interpreter
/// objects under the replica's GIL (racing the main interpreter, freeing into the wrong
/// allocator). A reference dropped without the GIL must still be pending afterwards.
#[test]
#[cfg_attr(not(Py_3_12), ignore = "needs CPython 3.12+ (own-GIL sub-interpreters)")]
fn draining_inside_a_replica_leaves_deferred_main_references_alone() {
    let _serial = serial();
    let m = common::manager();
    struct DrainsItsHandler(Arc<Mutex<Option<Arc<pyscheduler::Handler>>>>);
    impl Job for DrainsItsHandler {
        fn commit(&mut self, _py: Python<'_>) -> pyscheduler::Result<Py<PyAny>> {
            Err(Error::internal("replicas only"))
        }
        fn complete(&mut self, _py: Python<'_>, _r: &Bound<'_, PyAny>) -> pyscheduler::Result<()> {
            Ok(())
        }
        fn fail(&mut self, _error: &Error) {}
        fn supports_raw(&self) -> bool {
            true
        }
        fn commit_raw(&mut self) -> *mut ffi::PyObject {
            // SAFETY: called in the replica with its GIL held.
            unsafe { ffi::PyLong_FromLongLong(1) }
        }
        fn complete_raw(&mut self, _result: *mut ffi::PyObject) -> pyscheduler::Result<()> {
            if let Some(handler) = self.0.lock().unwrap().clone() {
                handler.drain();
            }
            Ok(())
        }
    }
    let handler = Arc::new(m.load(MODULE, "double", replicated(1, 1)).unwrap());
    let (object, extra) = Python::attach(|py| {
        let object = pyo3::types::PyList::empty(py).into_any().unbind();
        let extra = object.clone_ref(py);
        (object, extra)
    });
    let address = object.as_ptr() as usize;
    // SAFETY: a plain read of a live object's reference count; no thread attached to the
    // main interpreter touches it meanwhile (the test runs alone).
    let refcount = || unsafe { ffi::Py_REFCNT(address as *mut ffi::PyObject) };
    let before = refcount();
    // Dropped on a thread that is not attached: pyo3 defers the decref.
    std::thread::spawn(move || drop(extra)).join().unwrap();
    assert_eq!(refcount(), before, "the decref was not deferred");
    let slot = Arc::new(Mutex::new(Some(handler.clone())));
    handler.queue_job(Box::new(DrainsItsHandler(slot.clone())), ItemOptions::default()).wait().unwrap();
    assert_eq!(refcount(), before, "the deferred decref ran inside the replica");
    slot.lock().unwrap().take();
    // The next attach on a main-interpreter thread releases it.
    Python::attach(|_py| ());
    assert_eq!(refcount(), before - 1);
    drop(object);
}

/// The last reference to a replica handler dropped inside one of its own replica's
/// callbacks (as `pysched_handler_free` from a C callback does): the replica thread cannot
/// join itself, so its handle is released instead of panicking on a self-join; the
/// callback's item completes normally, the items queued behind it still run.
#[test]
#[cfg_attr(not(Py_3_12), ignore = "needs CPython 3.12+ (own-GIL sub-interpreters)")]
fn free_from_inside_a_replica_callback() {
    let _serial = serial();
    let m = common::manager();
    let slot = Arc::new(Mutex::new(Some(m.load(MODULE, "double", replicated(2, 1)).unwrap())));
    let futures: Vec<_> = {
        let guard = slot.lock().unwrap();
        let handler = guard.as_ref().unwrap();
        (0..40)
            .map(|_| {
                let slot = slot.clone();
                // The first item to complete drops the handler (the last reference to
                // it), outside the lock (dropping it joins the other replica, which
                // takes the lock too).
                let job = RawOne::new(move || {
                    let handler = slot.lock().unwrap().take();
                    drop(handler);
                });
                handler.queue_job(Box::new(job), ItemOptions::default())
            })
            .collect()
    };
    for (i, f) in futures.into_iter().enumerate() {
        assert!(f.wait_for(Duration::from_secs(60)), "item {i} never finished");
        assert!(f.take().is_ok(), "item {i}: {:?}", f.take());
    }
    assert!(slot.lock().unwrap().is_none(), "no callback dropped the handler");
}
