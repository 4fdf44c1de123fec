//! A bound Python callable: synchronous calls, and queued items that flow through the
//! handler's batch pipeline (see `scheduler`). Dropping a handler drains its queue.

use crate::core::{HandlerCore, ItemOptions, Job, JobSlot};
use crate::error::{Error, ErrorKind, Result};
use crate::future::ItemFuture;
use crate::python_err::report_stray;
use crate::shared::Shared;
use crate::stats::{HandlerStats, LatencySummary};
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use std::sync::Arc;

pub use crate::core::{FullPolicy, HandlerOptions};

/// A handle on a Python function with its own queue. Cheap to share across threads by
/// reference (`&Handler` is `Sync`); dropping it waits until everything queued on it
/// has finished.
pub struct Handler {
    core: Arc<HandlerCore>,
    /// Sub-interpreter replica threads; they end once the handler is drained and closed.
    replica_threads: Vec<std::thread::JoinHandle<()>>,
    /// Keeps the process-wide state (worker pool, module cache) alive and counted.
    _shared: Arc<Shared>,
}

impl Handler {
    pub(crate) fn new(
        core: Arc<HandlerCore>,
        shared: Arc<Shared>,
        replica_threads: Vec<std::thread::JoinHandle<()>>,
    ) -> Self {
        Handler { core, replica_threads, _shared: shared }
    }

    /// "module.entry_point", or the name given in the options.
    pub fn name(&self) -> &str {
        &self.core.name
    }

    pub(crate) fn name_c(&self) -> &std::ffi::CStr {
        &self.core.name_c
    }

    pub fn options(&self) -> &HandlerOptions {
        &self.core.options
    }

    /// The bound callable.
    pub fn function<'py>(&self, py: Python<'py>) -> Bound<'py, PyAny> {
        self.core.function.bind(py).clone()
    }

    /// Calls the function directly on this thread with `args`. Blocks for the call;
    /// attaches through a persistent thread state (no per-call allocation). A Python
    /// error that the caller's own code left set before the call, or that a destructor
    /// left set when the arguments were released, is not this call's error: it goes to
    /// `sys.unraisablehook` and is cleared (see `python_err`).
    pub fn call(
        &self,
        args: impl for<'py> FnOnce(Python<'py>) -> PyResult<Bound<'py, PyTuple>>,
    ) -> Result<Py<PyAny>> {
        crate::runtime::attach(|py| {
            report_stray(py, &self.core.name, "code run on this thread before a synchronous call");
            let args = args(py).map_err(|e| {
                Error::from_pyerr_context(py, &e, ErrorKind::InvalidArgument, "building the arguments")
            })?;
            let called = self.core.function.bind(py).call1(args);
            report_stray(
                py,
                &self.core.name,
                "a destructor run as a synchronous call's arguments were released",
            );
            called.map(Bound::unbind).map_err(|e| {
                Error::from_pyerr_context(
                    py,
                    &e,
                    ErrorKind::PythonException,
                    &format!("{} raised", self.core.name),
                )
            })
        })
    }

    /// Runs `f` attached to the interpreter with the bound function; for callers that
    /// convert arguments and results themselves (the C++ wrapper's synchronous invoke).
    /// An error left set before `f` (by the caller's code) or by `f` when it returns is
    /// reported through `sys.unraisablehook` and cleared; inside `f`, between the call
    /// and the conversion of its result, [`Handler::report_stray_error`] does the same.
    pub fn with_function<R>(&self, f: impl for<'py> FnOnce(Python<'py>, &Bound<'py, PyAny>) -> R) -> R {
        crate::runtime::attach(|py| {
            report_stray(py, &self.core.name, "code run on this thread before a synchronous call");
            let r = f(py, self.core.function.bind(py));
            report_stray(py, &self.core.name, "a synchronous call's code, which returned normally");
            r
        })
    }

    /// Reports a Python error left set by code that returned normally (`left_by` says
    /// which) through `sys.unraisablehook`, naming this handler, and clears it; no-op when
    /// none is set. For wrappers that call the function themselves: between the call (whose
    /// argument destructors may leave an error) and the conversion of its result.
    pub fn report_stray_error(&self, py: Python<'_>, left_by: &str) {
        report_stray(py, &self.core.name, left_by);
    }

    /// Queues one item whose Python object is built by `commit` (GIL held, on a worker).
    /// The future yields the item's element of the function's result.
    pub fn queue<F>(&self, commit: F) -> ItemFuture
    where
        F: for<'py> FnOnce(Python<'py>) -> PyResult<Py<PyAny>> + Send + 'static,
    {
        self.queue_job(
            Box::new(ClosureJob { commit: Some(commit) }),
            ItemOptions { keep_value: true, ..Default::default() },
        )
    }

    /// Queues a job with full control over its callbacks. The job is always consumed
    /// (refusals reach its `fail`). Blocks only on a full bounded queue with the block
    /// policy (releasing the GIL if held).
    pub fn queue_job(&self, job: Box<dyn Job>, options: ItemOptions) -> ItemFuture {
        ItemFuture::new(self.core.enqueue(job.into(), options).0)
    }

    /// As [`Handler::queue_job`], telling a refusal (shut down, full queue) apart: then
    /// the job's `fail` has already run and the error is returned.
    pub fn try_queue_job(&self, job: Box<dyn Job>, options: ItemOptions) -> Result<ItemFuture> {
        self.try_queue_slot(job.into(), options)
    }

    /// Queues a job nobody waits for but through its own callbacks (the C ABI without a
    /// future handle); a refusal is returned after the job's `fail` ran.
    pub(crate) fn queue_detached(&self, job: JobSlot, options: ItemOptions) -> Result<()> {
        match self.core.enqueue_detached(job, options) {
            None => Ok(()),
            Some(error) => Err(error),
        }
    }

    pub(crate) fn try_queue_slot(&self, job: JobSlot, options: ItemOptions) -> Result<ItemFuture> {
        match self.core.enqueue(job, options) {
            (item, None) => Ok(ItemFuture::new(item)),
            (_, Some(error)) => Err(error),
        }
    }

    /// Blocks until every item queued so far has finished. Releases the GIL if held.
    pub fn drain(&self) {
        self.core.drain(false);
    }

    pub fn stats(&self) -> HandlerStats {
        self.core.stats()
    }

    pub fn latency_summary(&self) -> LatencySummary {
        self.core.histograms.summary()
    }

    /// This handler's metrics in Prometheus text exposition format.
    pub fn prometheus_text(&self) -> String {
        let mut out = String::new();
        crate::stats::write_prometheus(&mut out, &self.core.name, &self.stats(), &self.core.histograms);
        out
    }
}

impl Drop for Handler {
    fn drop(&mut self) {
        self.core.drain(true);
        let threads = std::mem::take(&mut self.replica_threads);
        if !threads.is_empty() {
            let me = std::thread::current().id();
            crate::runtime::without_gil(move || {
                for t in threads {
                    // Dropped from inside one of its own replica's callbacks: that thread
                    // cannot join itself; it ends on its own once the callback returns
                    // (the handler is closed), so its handle is just released.
                    if t.thread().id() != me {
                        let _ = t.join();
                    }
                }
            });
        }
    }
}

struct ClosureJob<F> {
    commit: Option<F>,
}

impl<F> Job for ClosureJob<F>
where
    F: for<'py> FnOnce(Python<'py>) -> PyResult<Py<PyAny>> + Send + 'static,
{
    fn commit(&mut self, py: Python<'_>) -> Result<Py<PyAny>> {
        let f = self.commit.take().ok_or_else(|| Error::internal("commit called twice"))?;
        f(py).map_err(|e| Error::from_pyerr_context(py, &e, ErrorKind::Commit, "commit failed"))
    }
    fn complete(&mut self, _py: Python<'_>, _result: &Bound<'_, PyAny>) -> Result<()> {
        Ok(())
    }
    fn fail(&mut self, _error: &Error) {}
}
