//! `pysched_future`: the completion of one queued item, as a handle.

use super::{boundary, handle, out_ptr, pysched_error, pysched_status};
use crate::error::Error;
use crate::future::ItemFuture;
use pyo3::ffi::PyObject;
use std::time::Duration;

/// The future of one queued item. Single owner; free with `pysched_future_free`.
/// Freeing does not cancel the item.
pub struct pysched_future {
    pub(crate) inner: ItemFuture,
    /// An item of a tensor handler: it succeeds without a Python value.
    pub(crate) tensor: bool,
}

/// Whether the item has finished (value or error); false for NULL.
/// Thread-safe. Never blocks.
#[no_mangle]
pub extern "C" fn pysched_future_is_ready(future: *const pysched_future) -> bool {
    super::boundary_value(false, || handle(future, "future").is_ok_and(|f| f.inner.is_ready()))
}

/// Blocks until the item finishes. `PYSCHED_OK` once it has (read the outcome with
/// `pysched_future_take`).
/// Thread-safe. Blocks; releases the GIL while waiting if the caller holds it.
#[no_mangle]
pub extern "C" fn pysched_future_wait(
    future: *const pysched_future,
    out_error: *mut *mut pysched_error,
) -> pysched_status {
    boundary(out_error, || {
        handle(future, "future")?.inner.wait_for(Duration::MAX);
        Ok(())
    })
}

/// Blocks until the item finishes or `timeout_us` passes: `PYSCHED_OK` or
/// `PYSCHED_TIMED_OUT` (the item is not affected).
/// Thread-safe. Blocks; releases the GIL while waiting if the caller holds it.
#[no_mangle]
pub extern "C" fn pysched_future_wait_for(
    future: *const pysched_future,
    timeout_us: u64,
    out_error: *mut *mut pysched_error,
) -> pysched_status {
    boundary(out_error, || {
        if handle(future, "future")?.inner.wait_for(Duration::from_micros(timeout_us)) {
            Ok(())
        } else {
            Err(Error::new(crate::error::ErrorKind::TimedOut, "the future did not finish in time"))
        }
    })
}

/// Takes the outcome of a finished item. On success `out_result` receives a new
/// reference to the item's Python result (the caller owns it; no GIL needed to receive
/// it, but it is needed to use or release it), or NULL for an item of a tensor handler
/// (it has no Python result: its rows went to its destinations). Otherwise the item's
/// error kind is returned with details in `out_error`; `PYSCHED_NOT_READY` if it has
/// not finished; `PYSCHED_INVALID_ARGUMENT` if the outcome was already taken.
///
/// `future` and `out_result` must not be NULL; `out_error` may be NULL.
/// Thread-safe. Never blocks.
#[no_mangle]
pub extern "C" fn pysched_future_take(
    future: *const pysched_future,
    out_result: *mut *mut PyObject,
    out_error: *mut *mut pysched_error,
) -> pysched_status {
    boundary(out_error, || {
        let f = handle(future, "future")?;
        let out = out_ptr(out_result, "out_result")?;
        let value = f.inner.take()?;
        let ptr = match value {
            Some(obj) => obj.into_ptr(),
            None if f.tensor => std::ptr::null_mut(),
            None => return Err(Error::internal("the item's result was not kept")),
        };
        // SAFETY: checked non-NULL; the new reference moves to the caller.
        unsafe { *out = ptr };
        Ok(())
    })
}

/// Cancels the item if it has not started: its callbacks and future then report
/// `PYSCHED_CANCELLED`. Returns true if this call cancelled it; false if it had already
/// started or finished (it then completes normally) or `future` is NULL.
/// Thread-safe. Never blocks on Python (the item's complete/drop run on this thread).
#[no_mangle]
pub extern "C" fn pysched_future_cancel(future: *const pysched_future) -> bool {
    super::boundary_value(false, || handle(future, "future").is_ok_and(|f| f.inner.cancel()))
}

/// Releases a future (not the item: it still runs). A result never taken is released
/// (taking the GIL briefly). NULL is a no-op.
/// Thread-safe.
#[no_mangle]
pub extern "C" fn pysched_future_free(future: *mut pysched_future) {
    if !future.is_null() {
        super::boundary_value((), || {
            // SAFETY: created by pysched_handler_queue (Box) and freed exactly once.
            drop(unsafe { Box::from_raw(future) })
        });
    }
}
