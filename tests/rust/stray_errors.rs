//! Python errors left set by user code that returned normally (issue 15): a commit that
//! returned its object, a completion callback that succeeded, a job's finalizer run
//! under the GIL, code the caller ran before a synchronous call. None of them is another
//! item's or call's error: each is reported once through `sys.unraisablehook`, naming the
//! handler, and cleared. One test function: the hook is process-wide.

mod common;

use pyo3::exceptions::{PyKeyError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyAnyMethods, PyTuple};
use pyscheduler::{Error, ErrorKind, HandlerOptions, ItemOptions, Job};

/// (exception type, message, context) of every report since `watch`.
fn reports(py: Python<'_>) -> Vec<(String, String, String)> {
    py.import("pysched_compat").unwrap().call_method0("unraisable").unwrap().extract().unwrap()
}

fn watch() {
    pyscheduler::runtime::attach(|py| {
        py.import("pysched_compat").unwrap().call_method0("watch_unraisable").unwrap();
    });
}

/// An item that leaves an error set where `sloppy` says, and otherwise behaves.
struct Sloppy {
    value: i64,
    sloppy: Where,
}

#[derive(Clone, Copy, PartialEq)]
enum Where {
    Nowhere,
    Commit,
    Complete,
    Finalizer,
}

impl Job for Sloppy {
    fn commit(&mut self, py: Python<'_>) -> pyscheduler::Result<Py<PyAny>> {
        let obj = self.value.into_pyobject(py).unwrap().into_any().unbind();
        if self.sloppy == Where::Commit {
            PyRuntimeError::new_err("left set by a commit").restore(py);
        }
        Ok(obj)
    }
    fn complete(&mut self, py: Python<'_>, result: &Bound<'_, PyAny>) -> pyscheduler::Result<()> {
        // Before the fix an earlier item's stray error made this fail (or the call fail).
        let v: i64 = result.extract().map_err(|_| Error::new(ErrorKind::Callback, "not an int"))?;
        if v != 2 * self.value {
            return Err(Error::new(ErrorKind::Callback, format!("got {v} for {}", self.value)));
        }
        if self.sloppy == Where::Complete {
            PyKeyError::new_err("left set by a callback").restore(py);
        }
        Ok(())
    }
    fn fail(&mut self, _error: &Error) {
        // Its future carries the error, which the test reports.
    }
}

impl Drop for Sloppy {
    fn drop(&mut self) {
        if self.sloppy == Where::Finalizer {
            // Dropped by the worker with the GIL held (attach is re-entrant).
            pyscheduler::runtime::attach(|py| PyValueError::new_err("left set by a finalizer").restore(py));
        }
    }
}

fn sloppy_at(i: i64) -> Where {
    match i % 4 {
        1 => Where::Commit,
        2 => Where::Complete,
        3 => Where::Finalizer,
        _ => Where::Nowhere,
    }
}

#[test]
fn stray_errors_are_reported_once_and_fail_nothing() {
    let m = common::manager();
    watch();

    // Queued: batches of 8 from 4 producer threads; every item completes with its value.
    let opts = HandlerOptions { batch_size: 8, name: Some("stray.queued".into()), ..Default::default() };
    let h = m.load("pysched_testmod", "double", opts).unwrap();
    let items_per_thread = 100i64;
    std::thread::scope(|s| {
        for t in 0..4i64 {
            let h = &h;
            s.spawn(move || {
                let futures: Vec<_> = (0..items_per_thread)
                    .map(|k| {
                        let value = t * items_per_thread + k;
                        let job = Box::new(Sloppy { value, sloppy: sloppy_at(value) });
                        h.queue_job(job, ItemOptions { keep_value: true, ..Default::default() })
                    })
                    .collect();
                for (k, f) in futures.into_iter().enumerate() {
                    let v = f.wait().expect("every item completes").expect("kept value");
                    let v: i64 = pyscheduler::runtime::attach(|py| v.bind(py).extract().unwrap());
                    assert_eq!(v, 2 * (t * items_per_thread + k as i64));
                }
            });
        }
    });
    let total = 4 * items_per_thread;
    let s = h.stats();
    assert_eq!(s.completed as i64, total);
    assert_eq!(s.failed, 0);

    // Synchronous: an error the caller's own code left set is not the call's error.
    let sync = m
        .load(
            "pysched_testmod",
            "add",
            HandlerOptions { name: Some("stray.sync".into()), ..Default::default() },
        )
        .unwrap();
    for round in 0..3i64 {
        let v = pyscheduler::runtime::attach(|py| {
            PyValueError::new_err("left set before a synchronous call").restore(py);
            sync.call(|py| PyTuple::new(py, [round, 1])).expect("the call is not failed by it")
        });
        let v: i64 = pyscheduler::runtime::attach(|py| v.bind(py).extract().unwrap());
        assert_eq!(v, round + 1);
    }
    // with_function (the C++ wrapper's synchronous path) as well.
    let v: i64 = pyscheduler::runtime::attach(|py| {
        PyValueError::new_err("left set before with_function").restore(py);
        sync.with_function(|py, f| {
            assert!(PyErr::take(py).is_none(), "reported before the caller's code runs");
            f.call1((20, 22)).unwrap().extract().unwrap()
        })
    });
    assert_eq!(v, 42);

    pyscheduler::runtime::attach(|py| {
        assert!(PyErr::take(py).is_none());
        let seen = reports(py);
        let count = |kind: &str, handler: &str, left_by: &str| {
            seen.iter().filter(|(t, _, c)| t == kind && c.contains(handler) && c.contains(left_by)).count()
                as i64
        };
        assert_eq!(count("RuntimeError", "'stray.queued'", "commit callback"), total / 4, "{seen:?}");
        assert_eq!(count("KeyError", "'stray.queued'", "completion callback"), total / 4, "{seen:?}");
        assert_eq!(count("ValueError", "'stray.queued'", "finalizer"), total / 4, "{seen:?}");
        assert_eq!(count("ValueError", "'stray.sync'", "before a synchronous call"), 4, "{seen:?}");
        assert_eq!(seen.len() as i64, 3 * total / 4 + 4, "each reported exactly once: {seen:?}");
    });
}
