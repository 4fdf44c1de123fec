//! Faults and load: nothing is lost, nothing hangs. A handler dropped with a deep queue,
//! a manager dropped under live handlers, a blocking callback beside another handler,
//! and a soak of a million items with random failures through bounded queues.

mod common;

use pyo3::prelude::*;
use pyo3::types::PyAnyMethods;
use pyscheduler::{Error, ErrorKind, FullPolicy, HandlerOptions, ItemOptions, Job};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn int(py: Python<'_>, v: i64) -> PyResult<Py<PyAny>> {
    Ok(v.into_pyobject(py)?.into_any().unbind())
}

/// Records how it ended; panics if it ends twice.
struct Tracked {
    value: i64,
    fail_commit: bool,
    ended: Arc<[AtomicUsize]>,
    /// How long `complete` blocks, and whom it tells once it has started to.
    block_in_callback: Option<(Duration, std::sync::mpsc::Sender<()>)>,
}

impl Tracked {
    fn end(&self) {
        let prev = self.ended[self.value as usize].fetch_add(1, SeqCst);
        assert_eq!(prev, 0, "item {} ended twice", self.value);
    }
}

impl Job for Tracked {
    fn commit(&mut self, py: Python<'_>) -> pyscheduler::Result<Py<PyAny>> {
        if self.fail_commit {
            return Err(Error::new(ErrorKind::Commit, "injected commit failure"));
        }
        Ok(int(py, self.value).unwrap())
    }
    fn complete(&mut self, py: Python<'_>, result: &Bound<'_, PyAny>) -> pyscheduler::Result<()> {
        self.end();
        if let Some((d, started)) = self.block_in_callback.take() {
            started.send(()).unwrap();
            py.detach(|| std::thread::sleep(d));
        }
        let v: i64 = result.extract().map_err(|_| Error::new(ErrorKind::Callback, "not an int"))?;
        if v != self.value {
            return Err(Error::new(ErrorKind::Callback, format!("got {v} for item {}", self.value)));
        }
        Ok(())
    }
    fn fail(&mut self, _error: &Error) {
        self.end();
    }
}

fn tracker(n: usize) -> Arc<[AtomicUsize]> {
    (0..n).map(|_| AtomicUsize::new(0)).collect::<Vec<_>>().into()
}

fn job(value: i64, ended: &Arc<[AtomicUsize]>) -> Box<Tracked> {
    Box::new(Tracked { value, fail_commit: false, ended: ended.clone(), block_in_callback: None })
}

#[test]
fn handler_dropped_with_100k_items_queued_finishes_them_all() {
    let m = common::manager();
    let h = m
        .load("pysched_testmod", "identity", HandlerOptions { batch_size: 64, ..Default::default() })
        .unwrap();
    let ended = tracker(100_000);
    let futures: Vec<_> = (0..100_000).map(|i| h.queue_job(job(i, &ended), ItemOptions::default())).collect();
    drop(h);
    assert!(ended.iter().all(|e| e.load(SeqCst) == 1));
    assert!(futures.iter().all(|f| f.is_ready()));
}

#[test]
fn handlers_outlive_their_manager() {
    let m = common::manager();
    let h = m.load("pysched_testmod", "double", HandlerOptions::default()).unwrap();
    drop(m);
    let v = h.queue(|py| int(py, 21)).wait().unwrap().unwrap();
    assert_eq!(Python::attach(|py| v.bind(py).extract::<i64>().unwrap()), 42);
}

#[test]
fn a_blocking_callback_does_not_stall_other_handlers() {
    let m = common::manager();
    let slow = m.load("pysched_testmod", "identity", HandlerOptions::default()).unwrap();
    let fast = m.load("pysched_testmod", "identity", HandlerOptions::default()).unwrap();
    let ended = tracker(101);
    let (started_tx, started) = std::sync::mpsc::channel();
    let blocked = slow.queue_job(
        Box::new(Tracked {
            value: 100,
            fail_commit: false,
            ended: ended.clone(),
            block_in_callback: Some((Duration::from_millis(600), started_tx)),
        }),
        ItemOptions::default(),
    );
    // The slow handler's callback is blocking (it said so from inside) before the fast
    // handler's items are queued and timed.
    started.recv_timeout(Duration::from_secs(10)).expect("the blocking callback never started");
    let start = Instant::now();
    let futures: Vec<_> = (0..100).map(|i| fast.queue_job(job(i, &ended), ItemOptions::default())).collect();
    for f in futures {
        f.wait().unwrap();
    }
    assert!(start.elapsed() < Duration::from_millis(400), "stalled: {:?}", start.elapsed());
    assert!(!blocked.is_ready());
    blocked.wait().unwrap();
}

fn rss_kib() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4
}

#[test]
fn soak_eight_producers_four_handlers_random_failures_bounded_memory() {
    let total: usize =
        std::env::var("PYSCHED_SOAK_ITEMS").ok().and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
    let m = common::manager();
    let entries = ["identity", "raise_for_negative", "identity", "raise_for_negative"];
    let handlers: Vec<_> = entries
        .iter()
        .map(|e| {
            m.load(
                "pysched_testmod",
                e,
                HandlerOptions {
                    batch_size: 64,
                    max_queue: 2048,
                    full_policy: FullPolicy::Block,
                    ..Default::default()
                },
            )
            .unwrap()
        })
        .collect();
    let ended = tracker(total);
    let ok = AtomicUsize::new(0);
    let failed = AtomicUsize::new(0);
    let baseline = rss_kib();
    let peak = AtomicUsize::new(baseline);
    std::thread::scope(|s| {
        for p in 0..8usize {
            let (handlers, ended, ok, failed, peak) = (&handlers, &ended, &ok, &failed, &peak);
            s.spawn(move || {
                let mut window = std::collections::VecDeque::new();
                let mut rng = 0x9E3779B97F4A7C15u64 ^ p as u64;
                for i in (p..total).step_by(8) {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    // Negative values make raise_for_negative fail the whole batch.
                    let negative = rng % 50 == 0;
                    let fail_commit = rng % 97 == 1;
                    let value = if negative { -(i as i64) - 1 } else { i as i64 };
                    let h = &handlers[(rng >> 32) as usize % handlers.len()];
                    let job = Tracked {
                        value: i as i64,
                        fail_commit,
                        ended: ended.clone(),
                        block_in_callback: None,
                    };
                    let job = if negative {
                        Box::new(NegativeJob(job, value)) as Box<dyn Job>
                    } else {
                        Box::new(job)
                    };
                    window.push_back(h.queue_job(job, ItemOptions::default()));
                    if window.len() > 4096 {
                        let f = window.pop_front().unwrap();
                        match f.wait() {
                            Ok(_) => ok.fetch_add(1, SeqCst),
                            Err(_) => failed.fetch_add(1, SeqCst),
                        };
                    }
                    if i % 65536 < 8 {
                        peak.fetch_max(rss_kib(), SeqCst);
                    }
                }
                for f in window {
                    match f.wait() {
                        Ok(_) => ok.fetch_add(1, SeqCst),
                        Err(_) => failed.fetch_add(1, SeqCst),
                    };
                }
            });
        }
    });
    assert_eq!(ok.load(SeqCst) + failed.load(SeqCst), total);
    let never_or_twice = ended.iter().filter(|e| e.load(SeqCst) != 1).count();
    assert_eq!(never_or_twice, 0);
    assert!(failed.load(SeqCst) > 0 && ok.load(SeqCst) > total / 2);
    let mut sum = 0;
    for h in &handlers {
        let s = h.stats();
        assert_eq!(s.completed + s.failed + s.cancelled + s.expired + s.rejected, s.total_enqueued);
        assert_eq!(s.commit_queue_size + s.execute_queue_size, 0);
        sum += s.total_enqueued;
    }
    assert_eq!(sum as usize, total);
    let grown_mib = peak.load(SeqCst).saturating_sub(baseline) / 1024;
    assert!(grown_mib < 64, "memory grew by {grown_mib} MiB with bounded queues");
}

/// A job whose Python value is negative (so the batch fails), checked against its id.
struct NegativeJob(Tracked, i64);

impl Job for NegativeJob {
    fn commit(&mut self, py: Python<'_>) -> pyscheduler::Result<Py<PyAny>> {
        self.0.commit(py)?;
        Ok(int(py, self.1).unwrap())
    }
    fn complete(&mut self, _py: Python<'_>, _result: &Bound<'_, PyAny>) -> pyscheduler::Result<()> {
        // On identity handlers a negative value simply comes back.
        self.0.end();
        Ok(())
    }
    fn fail(&mut self, error: &Error) {
        self.0.fail(error);
    }
}
