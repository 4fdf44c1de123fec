//! `pysched_handler`: synchronous calls, queued items with C callbacks, stats and drain.

use super::future::pysched_future;
use super::{boundary, handle, opt_utf8, out_ptr, pysched_error, pysched_status};
use crate::core::job::CallbackJob;
use crate::core::{ItemOptions, Job, JobSlot};
use crate::error::{Error, ErrorKind, Result};
use crate::handler::{FullPolicy, Handler, HandlerOptions};
use crate::stats::{HandlerStats, LatencySummary};
use pyo3::ffi::PyObject;
use pyo3::prelude::*;
use std::ffi::{c_char, c_int, c_void};
use std::time::{Duration, Instant};

/// A handler handle: a bound Python function with its own queue. Single owner; free
/// with `pysched_handler_free`, which drains the queue first.
pub struct pysched_handler {
    pub(crate) inner: Handler,
}

/// What to do when a bounded queue is full.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum pysched_full_policy {
    /// Wait for room (up to `block_timeout_us` when non-zero), then fail with QUEUE_FULL.
    PYSCHED_FULL_BLOCK = 0,
    /// Fail the item at once with QUEUE_FULL.
    PYSCHED_FULL_REJECT = 1,
}

/// Options for `pysched_manager_load`. Start from `pysched_handler_options_default()`:
/// a zero `batch_size` or `prefetch_depth` is rejected as invalid.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct pysched_handler_options {
    /// Most items per Python call, 1..=1000000.
    pub batch_size: u32,
    /// Batches that may be taken and prepared ahead of execution, 1..=4096.
    pub prefetch_depth: u32,
    /// Wait up to this long after the oldest queued item for a fuller batch; 0 means
    /// opportunistic batching (take whatever is queued). At most 60 s.
    pub max_batch_delay_us: u64,
    /// Most items waiting to be batched; 0 means unbounded.
    pub max_queue: u64,
    /// A `pysched_full_policy` value; others are rejected.
    pub full_policy: u32,
    /// For PYSCHED_FULL_BLOCK: give up after this long; 0 waits indefinitely.
    pub block_timeout_us: u64,
    /// Label for metrics (NULL: "module.entry_point"). Copied.
    pub name: *const c_char,
    /// Batches that may execute at once, 1..=1024 (default 1). Above 1 batches start in
    /// order but may finish out of order: for functions that release the GIL, or
    /// free-threaded CPython.
    pub concurrency: u32,
    /// Own-GIL sub-interpreter replicas (CPython 3.12+) that run this handler, each on a
    /// thread of its own; 0 (default): the main interpreter and the shared pool. The
    /// callbacks of such a handler run with the replica's interpreter current.
    pub subinterpreters: u32,
}

/// The default handler options: batch 1, prefetch 1, no delay, unbounded queue.
/// Thread-safe. Never blocks.
#[no_mangle]
pub extern "C" fn pysched_handler_options_default() -> pysched_handler_options {
    pysched_handler_options {
        batch_size: 1,
        prefetch_depth: 1,
        max_batch_delay_us: 0,
        max_queue: 0,
        full_policy: pysched_full_policy::PYSCHED_FULL_BLOCK as u32,
        block_timeout_us: 0,
        name: std::ptr::null(),
        concurrency: 1,
        subinterpreters: 0,
    }
}

pub(crate) fn handler_options(o: Option<&pysched_handler_options>) -> Result<HandlerOptions> {
    let Some(o) = o else {
        return Ok(HandlerOptions::default());
    };
    let full_policy = match o.full_policy {
        0 => FullPolicy::Block,
        1 => FullPolicy::Reject,
        other => {
            return Err(Error::invalid_argument(format!("full_policy {other} is not a pysched_full_policy")))
        }
    };
    let options = HandlerOptions {
        batch_size: o.batch_size as usize,
        prefetch_depth: o.prefetch_depth as usize,
        max_batch_delay: Duration::from_micros(o.max_batch_delay_us.min(u64::MAX / 2)),
        max_queue: usize::try_from(o.max_queue).unwrap_or(usize::MAX),
        full_policy,
        block_timeout: (o.block_timeout_us > 0).then(|| Duration::from_micros(o.block_timeout_us)),
        name: opt_utf8(o.name, "options->name")?.map(str::to_owned),
        concurrency: o.concurrency as usize,
        subinterpreters: o.subinterpreters as usize,
    };
    options.validate()?;
    Ok(options)
}

/// Builds the item's Python object. Called on a worker thread WITH the GIL held, right
/// before the batch's Python call. Returns a new reference, or NULL with a Python
/// exception set (the item then fails with PYSCHED_COMMIT; other items still run).
pub type pysched_commit_fn = Option<unsafe extern "C" fn(user_data: *mut c_void) -> *mut PyObject>;
/// GIL-free staging (decoding, GPU uploads). Called on a worker thread WITHOUT the GIL,
/// ahead of execution (up to `prefetch_depth` batches). Returns 0 on success; non-zero
/// fails the item with PYSCHED_COMMIT.
pub type pysched_prepare_fn = Option<unsafe extern "C" fn(user_data: *mut c_void) -> c_int>;
/// Receives the outcome, exactly once per item. On success `result` is the item's element
/// of the function's result (borrowed, valid during the call) and `error` is NULL; the
/// call is made on a worker thread WITH the GIL held. On failure `result` is NULL and
/// `error` (borrowed; copy it with `pysched_error_clone`) says why; the call may come
/// from any thread, with or without the GIL. Return 0, or non-zero to count the item as
/// failed (its future then reports PYSCHED_CALLBACK).
pub type pysched_complete_fn = Option<
    unsafe extern "C" fn(user_data: *mut c_void, result: *mut PyObject, error: *const pysched_error) -> c_int,
>;
/// Releases `user_data`; called exactly once per item, after `complete`, on every path
/// (success, error, cancel, deadline, rejection, shutdown), and before the item counts as
/// finished (`pysched_handler_drain` waits for it) and before its future (if any)
/// resolves. Any thread. For an item queued without a future, on the success path it
/// runs on the worker WITHOUT the GIL, right after the batch's GIL hold (so slow
/// finalizers, such as fulfilling a C++ promise, do not hold up Python); otherwise the
/// GIL may or may not be held. A finalizer that releases Python objects must take the
/// GIL itself when `PyGILState_Check()` says it is not held.
pub type pysched_drop_fn = Option<unsafe extern "C" fn(user_data: *mut c_void)>;

/// One unit of queued work: callbacks sharing `user_data`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct pysched_item {
    /// Passed to every callback; must be usable from any thread.
    pub user_data: *mut c_void,
    /// Required.
    pub commit: pysched_commit_fn,
    /// Optional (NULL: commit does all the work under the GIL).
    pub prepare: pysched_prepare_fn,
    /// Optional.
    pub complete: pysched_complete_fn,
    /// Optional.
    pub drop: pysched_drop_fn,
    /// Fail the item with PYSCHED_TIMED_OUT if it has not started this many microseconds
    /// after queueing; 0 means no deadline.
    pub timeout_us: u64,
}

/// Queues one item: later, on a worker, `prepare` (if set, without the GIL), then
/// `commit` and one Python call with a list of up to `batch_size` committed objects,
/// then `complete` with this item's element of the result, then `drop`.
///
/// Ownership: once `item` is non-NULL, its callbacks are consumed: `complete` (if set)
/// and `drop` (if set) are each called exactly once, also when this function returns an
/// error (then before it returns, with the error). `item` itself is copied.
///
/// `handler` must not be NULL (else the item fails with PYSCHED_INVALID_ARGUMENT).
/// `out_future` may be NULL (fire-and-forget with callbacks); when not NULL it receives,
/// on success only, a future owned by the caller whose result is the item's Python
/// object. `out_error` may be NULL.
/// Thread-safe. Never blocks, except on a full bounded queue under PYSCHED_FULL_BLOCK
/// (the GIL is released while waiting if held).
#[no_mangle]
pub extern "C" fn pysched_handler_queue(
    handler: *const pysched_handler,
    item: *const pysched_item,
    out_future: *mut *mut pysched_future,
    out_error: *mut *mut pysched_error,
) -> pysched_status {
    boundary(out_error, || {
        // SAFETY: NULL or a readable item (documented).
        let Some(item) = (unsafe { item.as_ref() }).copied() else {
            return Err(Error::invalid_argument("item is NULL"));
        };
        let mut job = CallbackJob::new(item.user_data, item.commit, item.prepare, item.complete, item.drop);
        let h = match handle(handler, "handler") {
            Ok(h) => h,
            Err(e) => {
                job.fail(&e);
                return Err(e);
            }
        };
        if item.commit.is_none() {
            let e = Error::invalid_argument("item->commit is NULL");
            job.fail(&e);
            return Err(e);
        }
        let opts = ItemOptions {
            // A timeout too large for an Instant means no deadline.
            deadline: (item.timeout_us > 0)
                .then(|| Instant::now().checked_add(Duration::from_micros(item.timeout_us)))
                .flatten(),
            keep_value: !out_future.is_null(),
        };
        // Refused at once (full queue, shut down): the callbacks already saw the error.
        if out_future.is_null() {
            return h.inner.queue_detached(JobSlot::Callback(job), opts);
        }
        let future = h.inner.try_queue_slot(JobSlot::Callback(job), opts)?;
        // SAFETY: checked non-NULL; points to writable storage (documented).
        unsafe { *out_future = Box::into_raw(Box::new(pysched_future { inner: future, tensor: false })) };
        Ok(())
    })
}

/// Calls the function synchronously on this thread: `function(*args, **kwargs)`.
///
/// `args` must be a tuple (borrowed); `kwargs` may be NULL or a dict (borrowed).
/// `out_result` receives a new reference on success only. `out_error` may be NULL.
/// Works with or without the GIL held (a persistent thread state is used, so repeated
/// calls from one thread allocate nothing). Blocks for the call.
#[no_mangle]
pub extern "C" fn pysched_handler_call(
    handler: *const pysched_handler,
    args: *mut PyObject,
    kwargs: *mut PyObject,
    out_result: *mut *mut PyObject,
    out_error: *mut *mut pysched_error,
) -> pysched_status {
    boundary(out_error, || {
        let h = handle(handler, "handler")?;
        let out = out_ptr(out_result, "out_result")?;
        if args.is_null() {
            return Err(Error::invalid_argument("args is NULL"));
        }
        h.inner.with_function(|py, f| {
            // SAFETY: args/kwargs are borrowed references owned by the caller.
            let args = unsafe { Bound::from_borrowed_ptr(py, args) };
            let args = args
                .cast_into::<pyo3::types::PyTuple>()
                .map_err(|_| Error::invalid_argument("args must be a tuple"))?;
            let kwargs = if kwargs.is_null() {
                None
            } else {
                // SAFETY: as above.
                let k = unsafe { Bound::from_borrowed_ptr(py, kwargs) };
                Some(
                    k.cast_into::<pyo3::types::PyDict>()
                        .map_err(|_| Error::invalid_argument("kwargs must be a dict"))?,
                )
            };
            let result = f.call(args, kwargs.as_ref()).map_err(|e| {
                Error::from_pyerr_context(
                    py,
                    &e,
                    ErrorKind::PythonException,
                    &format!("{} raised", h.inner.name()),
                )
            })?;
            // SAFETY: checked non-NULL; the new reference is handed to the caller.
            unsafe { *out = result.into_ptr() };
            Ok(())
        })
    })
}

/// Receives the handler's function (borrowed, valid during the call) with the GIL held.
/// Returns 0 on success; non-zero becomes PYSCHED_CALLBACK.
pub type pysched_with_function_fn =
    Option<unsafe extern "C" fn(user_data: *mut c_void, function: *mut PyObject) -> c_int>;

/// Runs `fn(user_data, function)` on this thread attached to the interpreter (GIL held),
/// through a persistent per-thread thread state: the building block of synchronous
/// invoke for wrappers that convert arguments and results themselves. A Python error
/// left set before `fn` runs (by the caller's own code) or when it returns is reported
/// through `sys.unraisablehook` and cleared (pysched_handler_report_stray_error), never
/// taken for the call's error.
///
/// `handler` and `fn` must not be NULL; `out_error` may be NULL. `fn` must not let a
/// C++ exception or longjmp escape.
/// Thread-safe. Blocks until the GIL is available and `fn` returns.
#[no_mangle]
pub extern "C" fn pysched_handler_with_function(
    handler: *const pysched_handler,
    r#fn: pysched_with_function_fn,
    user_data: *mut c_void,
    out_error: *mut *mut pysched_error,
) -> pysched_status {
    boundary(out_error, || {
        let h = handle(handler, "handler")?;
        let f = r#fn.ok_or_else(|| Error::invalid_argument("fn is NULL"))?;
        // SAFETY: the callback receives a borrowed function with the GIL held.
        let rc = h.inner.with_function(|_py, function| unsafe { f(user_data, function.as_ptr()) });
        match rc {
            0 => Ok(()),
            rc => Err(Error::new(ErrorKind::Callback, format!("callback failed (returned {rc})"))),
        }
    })
}

/// Reports a Python error that code which returned normally left set on this thread
/// through `sys.unraisablehook` (`PyErr_WriteUnraisable`, printed to stderr by default),
/// with a context naming the handler and `left_by` (e.g. "a destructor run as the
/// arguments were released"; NULL: "code run inside pysched_handler_with_function"),
/// and clears it; does nothing when no error is set. For the `fn` of
/// pysched_handler_with_function between the call and the conversion of its result:
/// the core itself does this before `fn` runs and after it returns, after every commit
/// and completion callback, and wherever it releases Python references.
///
/// `handler` must not be NULL; `left_by` may be NULL (else UTF-8, borrowed);
/// `out_error` may be NULL. The calling thread must hold the GIL (PYSCHED_INVALID_ARGUMENT
/// otherwise).
/// Thread-safe. Never blocks (runs sys.unraisablehook when an error is set).
#[no_mangle]
pub extern "C" fn pysched_handler_report_stray_error(
    handler: *const pysched_handler,
    left_by: *const c_char,
    out_error: *mut *mut pysched_error,
) -> pysched_status {
    boundary(out_error, || {
        let h = handle(handler, "handler")?;
        let left_by =
            opt_utf8(left_by, "left_by")?.unwrap_or("code run inside pysched_handler_with_function");
        if !crate::runtime::is_started() || !crate::runtime::is_attached() {
            return Err(Error::invalid_argument("the calling thread must hold the GIL"));
        }
        // SAFETY: this thread is attached (checked above), in whichever interpreter.
        unsafe { crate::python_err::report_stray_attached(h.inner.name(), left_by) };
        Ok(())
    })
}

/// Writes the handler's stats to `out_stats`. Both must not be NULL.
/// Thread-safe. Never blocks on Python.
#[no_mangle]
pub extern "C" fn pysched_handler_stats(
    handler: *const pysched_handler,
    out_stats: *mut HandlerStats,
    out_error: *mut *mut pysched_error,
) -> pysched_status {
    boundary(out_error, || {
        let h = handle(handler, "handler")?;
        let out = out_ptr(out_stats, "out_stats")?;
        // SAFETY: checked non-NULL; writable (documented).
        unsafe { *out = h.inner.stats() };
        Ok(())
    })
}

/// Writes the handler's latency and batch-size quantiles to `out_latency`.
/// Thread-safe. Never blocks on Python.
#[no_mangle]
pub extern "C" fn pysched_handler_latency(
    handler: *const pysched_handler,
    out_latency: *mut LatencySummary,
    out_error: *mut *mut pysched_error,
) -> pysched_status {
    boundary(out_error, || {
        let h = handle(handler, "handler")?;
        let out = out_ptr(out_latency, "out_latency")?;
        // SAFETY: checked non-NULL; writable (documented).
        unsafe { *out = h.inner.latency_summary() };
        Ok(())
    })
}

/// Writes the handler's metrics in Prometheus text format into `buffer` (snprintf
/// style: at most `capacity` bytes including the NUL; `buffer` may be NULL when
/// `capacity` is 0). Returns the full length excluding the NUL; 0 for a NULL handler.
/// Thread-safe. Never blocks on Python.
#[no_mangle]
pub extern "C" fn pysched_handler_metrics_text(
    handler: *const pysched_handler,
    buffer: *mut c_char,
    capacity: usize,
) -> usize {
    super::boundary_value(0, || {
        let Ok(h) = handle(handler, "handler") else {
            return 0;
        };
        let text = h.inner.prometheus_text();
        if !buffer.is_null() && capacity > 0 {
            let n = text.len().min(capacity - 1);
            // SAFETY: buffer has `capacity` writable bytes (documented); n + 1 <= capacity.
            unsafe {
                std::ptr::copy_nonoverlapping(text.as_ptr(), buffer.cast::<u8>(), n);
                *buffer.add(n) = 0;
            }
        }
        text.len()
    })
}

/// The handler's name ("module.entry_point" or the options' name). Valid until the
/// handler is freed; "" for NULL.
/// Thread-safe. Never blocks.
#[no_mangle]
pub extern "C" fn pysched_handler_name(handler: *const pysched_handler) -> *const c_char {
    super::boundary_value(c"".as_ptr(), || match handle(handler, "handler") {
        Ok(h) => h.inner.name_c().as_ptr(),
        Err(_) => c"".as_ptr(),
    })
}

/// Blocks until every item queued so far has finished (each future resolved).
/// Thread-safe. Blocks; releases the GIL while waiting if the caller holds it.
#[no_mangle]
pub extern "C" fn pysched_handler_drain(
    handler: *const pysched_handler,
    out_error: *mut *mut pysched_error,
) -> pysched_status {
    boundary(out_error, || {
        handle(handler, "handler")?.inner.drain();
        Ok(())
    })
}

/// Drains the handler (every queued item finishes and its callbacks run), then releases
/// it. Items queued concurrently with this call after the drain are refused with
/// PYSCHED_SHUT_DOWN. If no manager and no other handler is left, the worker pool stops
/// and this also waits until its threads have exited (see `pysched_manager_free`).
/// NULL is a no-op.
/// Blocks until drained; releases the GIL while waiting if the caller holds it.
#[no_mangle]
pub extern "C" fn pysched_handler_free(handler: *mut pysched_handler) {
    if !handler.is_null() {
        super::boundary_value((), || {
            // SAFETY: created by pysched_manager_load (Box) and freed exactly once.
            drop(unsafe { Box::from_raw(handler) })
        });
    }
}
