//! Execution of one batch on the shared pool: the main interpreter's side of the batch
//! harness (`batch`), through pyo3, or the handler's own batch step (`BatchExec`, a
//! tensor handler's).
//!
//! May call: `batch`, `batch_exec`, `job`, `clock`, `raw`, `crate::runtime` (attach),
//! `crate::python_err`.

use super::batch::Interpreter;
use super::clock;
use super::handler::{Entry, HandlerCore};
use super::job::{guarded, JobSlot};
use super::raw::Owned;
use crate::error::{Error, ErrorKind, Result};
use crate::python_err::report_stray;
use pyo3::ffi::PyObject;
use pyo3::prelude::*;

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
        if let Some(exec) = &self.batch_exec {
            return self.as_executing_batch(|| exec.run_batch(self, batch));
        }
        let gil_asked = clock::now_ns();
        self.as_executing_batch(|| {
            crate::runtime::attach(|py| {
                // A stage that attached on this worker without the GIL held may have
                // left its error in the worker's thread state.
                report_stray(py, &self.name, "code run earlier on this worker (a GIL-free stage)");
                let main = Main { py, function: self.function.bind(py) };
                let finalized = self.execute_on(&main, batch, Some(gil_asked));
                // Destructors of the batch's results and of failed items' jobs ran last.
                report_stray(py, &self.name, "a destructor run as the batch's references were released");
                finalized
            })
        })
    }
}

/// The main interpreter, attached (`py`): jobs run their pyo3 callbacks.
struct Main<'a, 'py> {
    py: Python<'py>,
    function: &'a Bound<'py, PyAny>,
}

impl Interpreter for Main<'_, '_> {
    #[inline]
    fn commit(&self, job: &mut JobSlot) -> Result<Owned> {
        let obj = guarded("commit", || job.commit(self.py))?;
        // SAFETY: a new reference (owned by `obj`), handed on; the GIL is held.
        Ok(unsafe { Owned::new(obj.into_ptr()) }.expect("a Py<PyAny> is never NULL"))
    }

    #[inline]
    fn complete(&self, job: &mut JobSlot, value: *mut PyObject) -> Result<()> {
        // SAFETY: `value` is a live object the harness holds a reference to while this
        // runs; the GIL is held.
        let value = unsafe { pyo3::Borrowed::from_ptr(self.py, value) };
        guarded("complete", || job.complete(self.py, &value))
    }

    #[inline]
    fn function(&self) -> *mut PyObject {
        self.function.as_ptr()
    }

    fn fetch_error(&self, kind: ErrorKind, context: &str) -> Error {
        match PyErr::take(self.py) {
            Some(e) if context.is_empty() => Error::from_pyerr(self.py, &e, kind),
            Some(e) => Error::from_pyerr_context(self.py, &e, kind, context),
            None => Error::internal(format!("{context}: failed without a Python exception set")),
        }
    }

    #[inline]
    fn report_stray(&self, name: &str, what: &str) {
        report_stray(self.py, name, what);
    }

    #[inline]
    fn keep(&self, value: Owned) -> Option<Py<PyAny>> {
        // SAFETY: a new reference, handed to the Bound that owns it from here on.
        Some(unsafe { Bound::from_owned_ptr(self.py, value.into_ptr()) }.unbind())
    }
}
