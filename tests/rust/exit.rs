//! A process that exits with work in flight exits cleanly: status 0, no crash, no hang.
//! Each test re-runs this test binary as a subprocess (the `helper` test, told what to
//! do through an environment variable), which sets up handlers with queued items, a
//! worker inside a long Python call, or a thread inside a long synchronous call, and
//! then returns from the test harness's `main` or calls `std::process::exit(0)`. The
//! handlers are leaked on purpose: dropping one would drain it, which is not exiting
//! with work in flight.

mod common;

use pyo3::prelude::*;
use pyscheduler::{HandlerOptions, ItemOptions, Job, Manager};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const HELPER_ENV: &str = "PYSCHED_EXIT_HELPER";
const READY: &str = "PYSCHED_HELPER_READY";

fn int(py: Python<'_>, v: i64) -> PyResult<Py<PyAny>> {
    Ok(v.into_pyobject(py)?.into_any().unbind())
}

/// Counts commits, so the helper knows a worker has entered Python.
struct Started {
    value: i64,
    commits: Arc<AtomicUsize>,
}

impl Job for Started {
    fn commit(&mut self, py: Python<'_>) -> pyscheduler::Result<Py<PyAny>> {
        self.commits.fetch_add(1, Ordering::SeqCst);
        Ok(int(py, self.value).unwrap())
    }
    fn complete(&mut self, _py: Python<'_>, _result: &Bound<'_, PyAny>) -> pyscheduler::Result<()> {
        Ok(())
    }
    fn fail(&mut self, _error: &pyscheduler::Error) {}
}

/// Queues `value` on `handler` and waits until its batch has entered Python.
fn start_call(handler: &pyscheduler::Handler, value: i64) {
    let commits = Arc::new(AtomicUsize::new(0));
    let f = handler.queue_job(Box::new(Started { value, commits: commits.clone() }), ItemOptions::default());
    std::mem::forget(f);
    let give_up = Instant::now() + Duration::from_secs(10);
    while commits.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < give_up, "the call never started");
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(30));
}

fn leak<T>(v: T) -> &'static T {
    Box::leak(Box::new(v))
}

fn load(m: &Manager, entry: &str, batch_size: usize) -> &'static pyscheduler::Handler {
    leak(m.load("pysched_testmod", entry, HandlerOptions { batch_size, ..Default::default() }).unwrap())
}

/// The subprocess side. A no-op in a normal test run.
#[test]
fn helper() {
    let Ok(mode) = std::env::var(HELPER_ENV) else {
        return;
    };
    let m = leak(common::manager());
    let mut exit_now = false;
    match mode.as_str() {
        "queued" => {
            let slow = load(m, "sleep_ms", 1);
            let fast = load(m, "double", 8);
            start_call(slow, 5);
            for i in 0..2000 {
                std::mem::forget(slow.queue(|py| int(py, 5)));
                std::mem::forget(fast.queue(move |py| int(py, i)));
            }
        }
        "long_call" => {
            let slow = load(m, "sleep_ms", 1);
            start_call(slow, 120_000);
            std::mem::forget(slow.queue(|py| int(py, 1)));
        }
        "spin_exit" => {
            // A worker runs pure-Python bytecode (holding the GIL) while the process exits.
            let spin = load(m, "spin", 1);
            start_call(spin, 2_000_000_000);
            exit_now = true;
        }
        "sync_call_thread" => {
            // The Python function writes a byte to `signal` once it runs, then sleeps.
            let (mut started, signal) = std::os::unix::net::UnixStream::pair().unwrap();
            let sleeper = load(m, "signal_then_sleep", 1);
            std::thread::spawn(move || {
                let fd = signal.as_raw_fd();
                let _ = sleeper.call(|py| (fd, 120.0f64).into_pyobject(py));
                eprintln!("the 120 s call returned: the process did not exit");
                drop(signal);
            });
            started.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut byte = [0u8; 1];
            started.read_exact(&mut byte).expect("the synchronous call never entered Python");
        }
        "gil_held" => {
            // The exiting thread holds the GIL that queued items wait for.
            let fast = load(m, "double", 4);
            pyscheduler::runtime::attach(|_py| {
                for i in 0..100 {
                    std::mem::forget(fast.queue(move |py| int(py, i)));
                }
                println!("{READY} {mode}");
                std::process::exit(0);
            });
        }
        "manager_dropped" => {
            let slow = load(m, "sleep_ms", 1);
            let m2 = common::manager();
            let slow2 = m2.load("pysched_testmod", "sleep_ms", HandlerOptions::default()).unwrap();
            for _ in 0..100 {
                std::mem::forget(slow.queue(|py| int(py, 10)));
                std::mem::forget(slow2.queue(|py| int(py, 10)));
            }
            std::mem::forget(slow2);
            drop(m2);
        }
        other => panic!("unknown helper mode {other}"),
    }
    println!("{READY} {mode}");
    if exit_now {
        std::process::exit(0);
    }
}

/// Runs the helper in `mode` and checks that it exits 0 promptly and quietly.
fn exits_cleanly(mode: &str) {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args(["--exact", "helper", "--nocapture", "--test-threads=1"])
        .env(HELPER_ENV, mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let limit = Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{mode}: the process did not exit within {limit:?} (hang)");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = start.elapsed();
    let mut out = String::new();
    let mut err = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(status.success(), "{mode}: exit status {status:?}\nstdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.contains(&format!("{READY} {mode}")),
        "{mode}: the helper did not reach its exit point\nstdout:\n{out}\nstderr:\n{err}"
    );
    for bad in ["panicked", "Fatal Python error", "did not exit", "Segmentation"] {
        assert!(!err.contains(bad), "{mode}: stderr mentions {bad:?}:\n{err}");
    }
    // Python sleeps 120 s in some modes: a clean exit does not wait for it.
    assert!(elapsed < Duration::from_secs(30), "{mode}: took {elapsed:?} to exit");
}

#[test]
fn main_returns_with_thousands_of_items_queued() {
    exits_cleanly("queued");
}

#[test]
fn main_returns_while_a_worker_is_inside_a_long_python_call() {
    exits_cleanly("long_call");
}

#[test]
fn process_exit_while_a_worker_runs_python_bytecode() {
    exits_cleanly("spin_exit");
}

#[test]
fn main_returns_while_another_thread_is_in_a_synchronous_call() {
    exits_cleanly("sync_call_thread");
}

#[test]
fn process_exit_while_holding_the_gil_with_items_waiting_for_it() {
    exits_cleanly("gil_held");
}

#[test]
fn main_returns_after_the_managers_were_dropped_under_live_handlers() {
    exits_cleanly("manager_dropped");
}
