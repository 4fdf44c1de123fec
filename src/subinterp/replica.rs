//! A replica thread's life: start its interpreter, report start-up, serve batches through
//! the core's batch harness (as [`Replica`], the harness's interpreter for raw C-API
//! jobs), finalize each batch's detached jobs without its GIL, and end the interpreter.
//!
//! May call: `interpreter`, `crate::core` (the handler's replica driver, the batch
//! harness), `crate::python_err`.

use super::interpreter::{bind_entry_point, create_interpreter, end_interpreter, ReplicaSpec};
use super::{interpreter_exiting_error, EXITING};
use crate::core::batch::Interpreter;
use crate::core::job::guarded;
use crate::core::raw::{self, Owned};
use crate::core::{Entry, HandlerCore, JobSlot};
use crate::error::{Error, ErrorKind, Result};
use crate::python_err::report_stray_attached;
use crossbeam_channel::{Receiver, Sender};
use pyo3::ffi::{self, PyObject};
use pyo3::{Py, PyAny};
use std::sync::atomic::Ordering::SeqCst;

/// Body of a replica thread. Reports start-up on `ready`, waits for `go` (dropped: the
/// load failed elsewhere), serves batches, and ends its interpreter on every path.
pub(super) fn replica_main(
    spec: &ReplicaSpec,
    source: &HandlerCore,
    ready: &Sender<Result<()>>,
    go: &Receiver<()>,
) {
    if EXITING.load(SeqCst) {
        let _ = ready.send(Err(interpreter_exiting_error()));
        return;
    }
    let tstate = match create_interpreter() {
        Ok(t) => t,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    // SAFETY: create_interpreter left `tstate` current on this thread with the new
    // interpreter's GIL held; everything below runs in that state until the interpreter
    // is ended, and only raw C-API calls touch its objects.
    unsafe {
        match bind_entry_point(spec) {
            Err(e) => {
                end_interpreter(tstate);
                let _ = ready.send(Err(e));
            }
            Ok(function) => {
                let saved = ffi::PyEval_SaveThread();
                let _ = ready.send(Ok(()));
                let serve = go.recv().is_ok();
                ffi::PyEval_RestoreThread(saved);
                if serve {
                    serve_batches(function.as_ptr(), source);
                }
                drop(function);
                end_interpreter(tstate);
            }
        }
    }
}

/// Fails every item of a batch claimed after the exit hook ran.
fn shut_down_batch(source: &HandlerCore, batch: Vec<Entry>) {
    let items = batch.len();
    let error = Error::new(
        ErrorKind::ShutDown,
        format!("handler {} is shut down: the Python interpreter is exiting", source.name.as_str()),
    );
    for item in batch {
        let job = item.take_slot();
        source.fail_started(&item, job, error.clone());
    }
    source.finish_batch(items);
}

/// Serves batches until the source is closed and empty. PRECONDITION: the replica's
/// thread state is current with its GIL held; it is again when this returns.
unsafe fn serve_batches(function: *mut PyObject, source: &HandlerCore) {
    let replica = Replica { function };
    // The batch that ran last: its items, and its detached C callback jobs, whose
    // finalizers run without the replica's GIL before its items count as finished.
    let mut finished: Option<(usize, Vec<JobSlot>)> = None;
    loop {
        // Waiting for work must not hold the replica's GIL: Python threads the handler
        // started keep running meanwhile.
        let saved = ffi::PyEval_SaveThread();
        if let Some((items, finalizers)) = finished.take() {
            source.as_executing_batch(|| drop(finalizers));
            source.finish_batch(items);
        }
        let batch = source.next_batch();
        ffi::PyEval_RestoreThread(saved);
        match batch {
            // Marked as the pool's workers are while they execute a batch: a drain called
            // from one of its callbacks must not wait for the batch it is part of.
            Some(batch) if EXITING.load(SeqCst) => {
                source.as_executing_batch(|| shut_down_batch(source, batch))
            }
            Some(batch) => {
                let items = batch.len();
                let finalizers = source.as_executing_batch(|| {
                    report_stray_attached(&source.name, "code run earlier on this replica's thread");
                    let finalizers = source.execute_on(&replica, batch, None);
                    // Destructors of the batch's results and of failed items' jobs ran last.
                    report_stray_attached(
                        &source.name,
                        "a destructor run as the batch's references were released",
                    );
                    finalizers
                });
                finished = Some((items, finalizers));
            }
            None => return,
        }
    }
}

/// A replica's interpreter, current on its thread with its GIL held: jobs run their raw
/// C-API callbacks (`Job::commit_raw`, `Job::complete_raw`), and no value leaves it.
struct Replica {
    /// The handler's function, imported in this interpreter (borrowed).
    function: *mut PyObject,
}

impl Interpreter for Replica {
    fn commit(&self, job: &mut JobSlot) -> Result<Owned> {
        if !job.supports_raw() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "this item's job cannot run in a sub-interpreter replica (only jobs with raw \
                 C-API callbacks, such as the C ABI's, can)",
            ));
        }
        match guarded("commit", || Ok(job.commit_raw())) {
            // SAFETY: commit_raw returns a new reference or NULL with an exception set;
            // the replica's GIL is held. As in the main interpreter, the item proceeds
            // with the object it returned; an error left set beside it is reported after.
            Ok(ptr) => unsafe { Owned::new(ptr) }
                .ok_or_else(|| unsafe { raw::fetch_error(ErrorKind::Commit, "commit callback failed") }),
            Err(panic) => {
                // SAFETY: the replica's GIL is held; whatever the panicking callback left
                // set must not reach the next item.
                unsafe { ffi::PyErr_Clear() };
                Err(panic)
            }
        }
    }

    fn complete(&self, job: &mut JobSlot, value: *mut PyObject) -> Result<()> {
        guarded("complete", || job.complete_raw(value))
    }

    fn function(&self) -> *mut PyObject {
        self.function
    }

    fn fetch_error(&self, kind: ErrorKind, context: &str) -> Error {
        // SAFETY: the replica's GIL is held (the harness's precondition).
        unsafe {
            match raw::fetch() {
                Some(fetched) if context.is_empty() => {
                    Error::from_python_parts(kind, fetched.python_type, &fetched.text, fetched.traceback)
                }
                Some(fetched) => raw::python_error(kind, context, fetched),
                None => Error::internal(format!("{context}: failed without a Python exception set")),
            }
        }
    }

    fn report_stray(&self, name: &str, what: &str) {
        // SAFETY: the replica's thread state is current with its GIL held.
        unsafe { report_stray_attached(name, what) };
    }

    fn keep(&self, _value: Owned) -> Option<Py<PyAny>> {
        // The replica's objects must not reach the main interpreter's futures.
        None
    }
}
