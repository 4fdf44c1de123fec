//! One CPU-bound pure-Python function (tests/python/subinterp_cpu.py) served by the shared
//! interpreter and by 1..N own-GIL sub-interpreter replicas: items/s, and the speedup over
//! one replica and over the shared interpreter, all measured in the same run.
//!
//! Run: `PYO3_PYTHON=$HOME/.pyenv/versions/3.12.1/bin/python3 cargo bench --target-dir target/py312
//! --bench subinterp -- [--replicas 1,2,4] [--items-per-replica 150] [--loop 20000] [--runs 5] [--batch 1]`
//! (a plain program: `harness = false`).
//!
//! Every configuration runs the same work: `items-per-replica * max(replicas)` items, each
//! a pure-Python loop of `loop` iterations, queued at once; the table shows the median
//! of `runs` timed runs (after one warm-up run) per configuration.

use pyo3::ffi;
use pyo3::prelude::*;
use pyscheduler::{Error, Handler, HandlerOptions, ItemOptions, Job, Manager, ManagerOptions};
use std::time::{Duration, Instant};

struct Args {
    replicas: Vec<usize>,
    items_per_replica: usize,
    loop_count: i64,
    runs: usize,
    batch: usize,
}

fn parse_args() -> Args {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let mut default_replicas: Vec<usize> =
        std::iter::successors(Some(1usize), |r| Some(r * 2)).take_while(|&r| r <= cpus).collect();
    if default_replicas.last() != Some(&cpus) {
        default_replicas.push(cpus);
    }
    let mut args =
        Args { replicas: default_replicas, items_per_replica: 150, loop_count: 20_000, runs: 5, batch: 1 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--bench" {
            continue; // added by `cargo bench`
        }
        let value = it.next().unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        let number = |v: &str| v.parse::<usize>().unwrap_or_else(|_| usage(&format!("bad number {v:?}")));
        match flag.as_str() {
            "--replicas" => args.replicas = value.split(',').map(number).collect(),
            "--items-per-replica" => args.items_per_replica = number(&value),
            "--loop" => args.loop_count = number(&value) as i64,
            "--runs" => args.runs = number(&value).max(1),
            "--batch" => args.batch = number(&value).max(1),
            _ => usage(&format!("unknown flag {flag}")),
        }
    }
    if args.replicas.is_empty() || args.replicas.contains(&0) {
        usage("--replicas takes a list of counts >= 1");
    }
    args
}

fn usage(problem: &str) -> ! {
    eprintln!("subinterp_bench: {problem}");
    eprintln!(
        "usage: subinterp_bench [--replicas 1,2,4] [--items-per-replica N] [--loop N] [--runs N] [--batch N]"
    );
    std::process::exit(2)
}

/// One item: a loop count, committed as a Python int (through pyo3 in the shared
/// interpreter, through the raw C-API in a replica).
struct Work(i64);

impl Job for Work {
    fn commit(&mut self, py: Python<'_>) -> pyscheduler::Result<Py<PyAny>> {
        Ok(self.0.into_pyobject(py).expect("int").into_any().unbind())
    }
    fn complete(&mut self, _py: Python<'_>, _result: &Bound<'_, PyAny>) -> pyscheduler::Result<()> {
        Ok(())
    }
    fn fail(&mut self, error: &Error) {
        panic!("benchmark item failed: {error}");
    }
    fn supports_raw(&self) -> bool {
        true
    }
    fn commit_raw(&mut self) -> *mut ffi::PyObject {
        // SAFETY: called in a replica with its GIL held (the Job contract).
        unsafe { ffi::PyLong_FromLongLong(self.0) }
    }
}

/// Queues `items` items at once and waits for all of them.
fn run_once(handler: &Handler, items: usize, loop_count: i64) -> Duration {
    let start = Instant::now();
    let futures: Vec<_> =
        (0..items).map(|_| handler.queue_job(Box::new(Work(loop_count)), ItemOptions::default())).collect();
    for f in futures {
        f.wait().expect("item");
    }
    start.elapsed()
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// A configuration's result: median items/s, and the moving average of one Python call's
/// duration (from the handler's stats; `None` for the direct call).
struct Row {
    name: String,
    items_per_s: f64,
    call_ms: Option<f64>,
}

/// Median items/s of a handler over `runs` timed runs, after one warm-up run.
fn measure(name: String, handler: &Handler, args: &Args, items: usize) -> Row {
    run_once(handler, items.min(4 * args.replicas.iter().max().unwrap()), args.loop_count);
    let samples = (0..args.runs).map(|_| run_once(handler, items, args.loop_count)).collect();
    Row {
        name,
        items_per_s: items as f64 / median(samples).as_secs_f64(),
        call_ms: Some(handler.stats().execute_ns_per_batch_ema / 1e6),
    }
}

/// The same loop called directly from one thread (`invoke([n] * items)`), no scheduler.
fn measure_direct(handler: &Handler, args: &Args, items: usize) -> Row {
    let samples = (0..args.runs)
        .map(|_| {
            let start = Instant::now();
            handler
                .call(|py| pyo3::types::PyTuple::new(py, [vec![args.loop_count; items]]))
                .expect("direct call");
            start.elapsed()
        })
        .collect();
    Row {
        name: "direct call, one thread".into(),
        items_per_s: items as f64 / median(samples).as_secs_f64(),
        call_ms: None,
    }
}

/// Where subinterp_cpu.py is: `$PYSCHED_TEST_PYTHON_DIR`, else this source tree's
/// tests/python, else tests/python under the working directory (a copied tree).
fn python_dir() -> String {
    if let Ok(dir) = std::env::var("PYSCHED_TEST_PYTHON_DIR") {
        return dir;
    }
    let built = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python");
    if std::path::Path::new(built).join("subinterp_cpu.py").exists() {
        return built.to_owned();
    }
    let cwd = std::env::current_dir().expect("working directory");
    cwd.join("tests/python").to_string_lossy().into_owned()
}

fn main() {
    let args = parse_args();
    let manager = Manager::new(ManagerOptions::default()).expect("manager");
    manager.add_path(&python_dir()).expect("add_path");
    let max_replicas = *args.replicas.iter().max().unwrap();
    let items = args.items_per_replica * max_replicas;
    let version = Python::version_str().split_whitespace().next().unwrap_or("?").to_owned();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    println!(
        "pyscheduler sub-interpreter benchmark: CPython {version}, {cpus} CPUs, {} worker threads; \
         {items} items of a {}-iteration pure-Python loop per run, batch {}, median of {} runs",
        manager.worker_threads(),
        args.loop_count,
        args.batch,
        args.runs
    );
    let options = |replicas: usize, concurrency: usize| HandlerOptions {
        batch_size: args.batch,
        subinterpreters: replicas,
        concurrency,
        ..Default::default()
    };

    let mut rows = Vec::new();
    let shared = manager.load("subinterp_cpu", "invoke", options(0, 1)).expect("shared handler");
    rows.push(measure_direct(&shared, &args, items));
    rows.push(measure("shared interpreter".into(), &shared, &args, items));
    let shared_rate = rows[1].items_per_s;
    drop(shared);
    let wide = manager.load("subinterp_cpu", "invoke", options(0, max_replicas)).expect("shared handler");
    rows.push(measure(format!("shared interpreter, concurrency {max_replicas}"), &wide, &args, items));
    drop(wide);

    let mut one_replica_rate = None;
    for &replicas in &args.replicas {
        let handler = match manager.load("subinterp_cpu", "invoke", options(replicas, 1)) {
            Ok(h) => h,
            Err(e) => {
                println!("replicas {replicas}: cannot load: {e}");
                std::process::exit(1);
            }
        };
        let row = measure(format!("replicas {replicas}"), &handler, &args, items);
        if replicas == 1 {
            one_replica_rate = Some(row.items_per_s);
        }
        rows.push(row);
    }

    println!(
        "{:<36} {:>10} {:>14} {:>11} {:>15}",
        "configuration", "items/s", "vs 1 replica", "vs shared", "call ms (EMA)"
    );
    for row in &rows {
        let rate = row.items_per_s;
        let vs_one = one_replica_rate.map(|r| format!("{:.2}x", rate / r)).unwrap_or_else(|| "-".into());
        let call = row.call_ms.map(|ms| format!("{ms:.2}")).unwrap_or_else(|| "-".into());
        println!("{:<36} {rate:>10.1} {vs_one:>14} {:>10.2}x {call:>15}", row.name, rate / shared_rate);
    }
}
