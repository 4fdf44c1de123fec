//! Execution of one batch on the main interpreter: commit each item, call the function
//! once with a list, read the results, fan them out; all under one GIL hold. Returns the
//! detached C callback jobs whose finalizers the runner then runs without the GIL.
//!
//! May call: `item`, `job`, `clock`, `accounting`, `crate::runtime` (attach),
//! `crate::python_err`, `crate::tensor::execute` (a tensor handler's batches).

use super::clock;
use super::handler::HandlerCore;
use super::item::Entry;
use super::job::{guarded, JobSlot};
use crate::error::{Error, ErrorKind, Result};
use crate::python_err::report_stray;
use crate::stats::LocalHistogram;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyAnyMethods, PyTypeMethods};
use pyo3::PyTypeInfo;
use std::sync::atomic::Ordering::Relaxed;

impl HandlerCore {
    /// Commits each item, calls Python once with the list, fans the results out; all
    /// under one GIL hold. Returns the C ABI jobs of the detached items that completed
    /// (no future handle), whose finalizers (`drop` callbacks) the caller runs once the
    /// GIL is released: the C++ wrapper fulfils its `std::promise` there, a futex syscall
    /// per item in glibc.
    pub(super) fn execute_batch(&self, batch: Vec<Entry>) -> Vec<JobSlot> {
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

    pub(super) fn execute_locked(&self, py: Python<'_>, batch: Vec<Entry>, gil_asked: u64) -> Vec<JobSlot> {
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
                JobSlot::Callback(ref c) if !item.has_completion() && c.has_finalizer() => {
                    completed.push(job)
                }
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
    pub(super) fn new(py: Python<'py>, result: Bound<'py, PyAny>, n: usize, name: &str) -> Result<Self> {
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

    pub(super) fn get(&self, py: Python<'py>, i: usize) -> Bound<'py, PyAny> {
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
