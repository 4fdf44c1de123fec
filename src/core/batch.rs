//! The batch harness: one batch, on any interpreter whose GIL this thread holds. Commit
//! each item, build the list, call the function once, read the results, fan them out;
//! the detached C callback jobs come back to the caller, which drops them (their
//! finalizers) after releasing the GIL. Written once for both executors: the shared
//! pool on the main interpreter (`execute::Main`) and the sub-interpreter replicas
//! (`subinterp`), generic over [`Interpreter`] so that the hot path has no dynamic call.
//!
//! May call: `item`, `job`, `clock`, `raw`, `accounting`, `crate::stats`.

use super::clock;
use super::handler::{Entry, HandlerCore};
use super::job::JobSlot;
use super::raw::{self, Owned};
use crate::error::{Error, ErrorKind, Result};
use crate::stats::LocalHistogram;
use pyo3::ffi::{self, PyObject};
use pyo3::prelude::*;
use std::ptr::NonNull;
use std::sync::atomic::Ordering::Relaxed;

/// An interpreter a batch executes on: the job callbacks it calls and how it reads a
/// Python error. Every method runs with its GIL held by this thread.
pub(crate) trait Interpreter {
    /// Commits one item's job: a new reference to its Python object.
    fn commit(&self, job: &mut JobSlot) -> Result<Owned>;
    /// Hands one item's element of the result (borrowed) to its job.
    fn complete(&self, job: &mut JobSlot, value: *mut PyObject) -> Result<()>;
    /// The handler's function in this interpreter (borrowed).
    fn function(&self) -> *mut PyObject;
    /// Takes the pending Python exception as an error of `kind`, its message prefixed
    /// with `context` unless that is empty.
    fn fetch_error(&self, kind: ErrorKind, context: &str) -> Error;
    /// Reports an exception that `what` left set, if any (`crate::python_err`).
    fn report_stray(&self, name: &str, what: &str);
    /// The value a future keeps (`ItemOptions::keep_value`); None where a value cannot
    /// leave the interpreter.
    fn keep(&self, value: Owned) -> Option<Py<PyAny>>;
}

impl HandlerCore {
    /// Runs one claimed batch under `interp`'s GIL (see the module doc) and returns the
    /// detached C callback jobs that completed, whose finalizers the caller runs once the
    /// GIL is released, before the items count as finished. `gil_asked`: when the caller
    /// asked for the GIL, for the GIL-wait histogram (None: it held it already).
    pub(crate) fn execute_on<I: Interpreter>(
        &self,
        interp: &I,
        batch: Vec<Entry>,
        gil_asked: Option<u64>,
    ) -> Vec<JobSlot> {
        let items = batch.len();
        let start_ns = clock::now_ns();
        if let Some(asked) = gil_asked {
            self.histograms.gil_wait_ns.record(start_ns.saturating_sub(asked));
        }
        let mut objects = Vec::with_capacity(items);
        let mut live = Vec::with_capacity(items);
        let mut waits = LocalHistogram::default();
        for item in batch {
            waits.record(start_ns.saturating_sub(item.enqueued_ns()));
            let Some(mut job) = item.take_slot() else {
                self.fail_started(&item, None, Error::internal("item has no job"));
                continue;
            };
            match interp.commit(&mut job) {
                Ok(obj) => {
                    objects.push(obj);
                    live.push((item, job));
                }
                Err(e) => self.fail_started(&item, Some(job), e),
            }
            interp.report_stray(&self.name, "the commit callback");
        }
        self.histograms.queue_wait_ns.merge(&waits);
        let committed = clock::now_ns();
        let commit_ns = committed.saturating_sub(start_ns);
        if live.is_empty() {
            self.record_timings(items, commit_ns, 0, 0);
            return Vec::new();
        }
        let n = live.len();
        let called = call_with_list(interp, objects, &self.name);
        // The list of committed objects is released by now (a capsule's destructor).
        interp.report_stray(&self.name, "a destructor run as the batch's arguments were released");
        self.record_timings(items, commit_ns, clock::now_ns().saturating_sub(committed), n);
        let seq = match called.and_then(|result| ResultSeq::new(interp, result, n, &self.name)) {
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
            let value = seq.get(i);
            let outcome = interp.complete(&mut job, value.as_ptr());
            match job {
                // A detached C callback item: its finalizer may run without the GIL (the
                // documented contract), and no future can observe it before it runs.
                JobSlot::Callback(ref c) if !item.has_completion() && c.has_finalizer() => {
                    completed.push(job)
                }
                // An item with a future is finalized before its future resolves; a Rust
                // job may own Python objects: both are dropped while the GIL is held.
                _ => drop(job),
            }
            interp.report_stray(&self.name, "the completion callback or the item's finalizer");
            if outcome.is_err() {
                self.counters.completed.fetch_sub(1, Relaxed);
                self.counters.failed.fetch_add(1, Relaxed);
            }
            item.resolve(outcome.map(|()| if item.keep_value() { interp.keep(value) } else { None }));
        }
        completed
    }
}

/// Calls the function with a list of `objects` (the list steals the references).
fn call_with_list<I: Interpreter>(interp: &I, objects: Vec<Owned>, name: &str) -> Result<Owned> {
    // SAFETY: the interpreter's GIL is held (the harness's precondition). PyList_New
    // returns a new list of objects.len() NULL slots; PyList_SET_ITEM steals each
    // reference, filling every slot exactly once. The function is borrowed from `interp`.
    unsafe {
        let Some(list) = Owned::new(ffi::PyList_New(objects.len() as ffi::Py_ssize_t)) else {
            return Err(interp.fetch_error(ErrorKind::PythonException, "building the batch list"));
        };
        for (i, obj) in objects.into_iter().enumerate() {
            ffi::PyList_SET_ITEM(list.as_ptr(), i as ffi::Py_ssize_t, obj.into_ptr());
        }
        let result = ffi::PyObject_CallOneArg(interp.function(), list.as_ptr());
        drop(list);
        Owned::new(result)
            .ok_or_else(|| interp.fetch_error(ErrorKind::PythonException, &format!("{name} raised")))
    }
}

/// The function's result, checked to be a sequence of exactly `n` items: a list or tuple
/// as is, any other sequence (not str/bytes) materialized once as a list.
struct ResultSeq {
    seq: Owned,
}

impl ResultSeq {
    fn new<I: Interpreter>(interp: &I, result: Owned, n: usize, name: &str) -> Result<ResultSeq> {
        let p = result.as_ptr();
        let wrong = |what: String| {
            Error::new(
                ErrorKind::PythonException,
                format!(
                    "{name} must return a sequence of {n} results (one per item of the batch), got {what}"
                ),
            )
        };
        // SAFETY: the interpreter's GIL is held; the checks only read the object's type,
        // and PySequence_List/PySequence_Size return a new reference / a length, or fail
        // with an exception set.
        unsafe {
            let seq = if ffi::PyList_Check(p) != 0 || ffi::PyTuple_Check(p) != 0 {
                result
            } else {
                let is_seq = ffi::PySequence_Check(p) != 0
                    && ffi::PyUnicode_Check(p) == 0
                    && ffi::PyBytes_Check(p) == 0;
                if !is_seq {
                    return Err(wrong(raw::type_name(p)));
                }
                Owned::new(ffi::PySequence_List(p))
                    .ok_or_else(|| interp.fetch_error(ErrorKind::PythonException, "reading the results"))?
            };
            let len = ffi::PySequence_Size(seq.as_ptr());
            if len < 0 {
                return Err(interp.fetch_error(ErrorKind::PythonException, ""));
            }
            if len as usize != n {
                return Err(wrong(format!("a {} of length {len}", raw::type_name(seq.as_ptr()))));
            }
            Ok(ResultSeq { seq })
        }
    }

    /// A new reference to element `i` (`None` if a completion callback shrank the list).
    fn get(&self, i: usize) -> Owned {
        let p = self.seq.as_ptr();
        let index = i as ffi::Py_ssize_t;
        // SAFETY: the interpreter's GIL is held (or, free-threaded, a thread state is
        // attached); `seq` is a list or tuple (subclasses included) checked in `new` to
        // hold n > i items. A tuple cannot change: its borrowed element lives as long as
        // it does. A list could be shrunk by Python code run from an earlier item's
        // completion (or, free-threaded, by another thread): PyList_GetItemRef checks the
        // index and returns a new reference under the list's lock.
        unsafe {
            let item = if ffi::PyList_Check(p) != 0 {
                ffi::compat::PyList_GetItemRef(p, index)
            } else {
                ffi::compat::Py_NewRef(ffi::PyTuple_GET_ITEM(p, index))
            };
            Owned::new(item).unwrap_or_else(|| {
                ffi::PyErr_Clear();
                Owned::borrowed(NonNull::new_unchecked(ffi::Py_None()))
            })
        }
    }
}
