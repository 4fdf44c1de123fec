//! Error objects of the C ABI: owned by the caller once handed out, readable from any
//! thread without the GIL.

use super::pysched_status;
use crate::error::Error;
use std::ffi::c_char;

pub use crate::error::pysched_error;

pub(crate) fn new(error: Error) -> pysched_error {
    pysched_error::new(error)
}

pub(crate) fn into_raw(error: Error) -> *mut pysched_error {
    Box::into_raw(Box::new(new(error)))
}

/// The error's kind (never `PYSCHED_OK`); `PYSCHED_INVALID_ARGUMENT` for NULL.
/// Thread-safe. Never blocks.
#[no_mangle]
pub extern "C" fn pysched_error_kind(error: *const pysched_error) -> pysched_status {
    // SAFETY: NULL or a live error handle (documented).
    match unsafe { error.as_ref() } {
        Some(e) => e.error.kind().into(),
        None => pysched_status::PYSCHED_INVALID_ARGUMENT,
    }
}

/// The message ("TypeError: ..." for Python exceptions). Valid until the error is freed;
/// "" for NULL. Never NULL.
/// Thread-safe. Never blocks.
#[no_mangle]
pub extern "C" fn pysched_error_message(error: *const pysched_error) -> *const c_char {
    // SAFETY: NULL or a live error handle (documented).
    unsafe { error.as_ref() }.map_or(c"".as_ptr(), |e| e.message.as_ptr())
}

/// Qualified name of the Python exception type ("ValueError"), or "" when the error is
/// not a Python exception. Valid until the error is freed. Never NULL.
/// Thread-safe. Never blocks.
#[no_mangle]
pub extern "C" fn pysched_error_python_type(error: *const pysched_error) -> *const c_char {
    // SAFETY: NULL or a live error handle (documented).
    unsafe { error.as_ref() }.map_or(c"".as_ptr(), |e| e.python_type.as_ptr())
}

/// The formatted Python traceback, or "" when there is none. Valid until the error is
/// freed. Never NULL.
/// Thread-safe. Never blocks.
#[no_mangle]
pub extern "C" fn pysched_error_traceback(error: *const pysched_error) -> *const c_char {
    // SAFETY: NULL or a live error handle (documented).
    unsafe { error.as_ref() }.map_or(c"".as_ptr(), |e| e.traceback.as_ptr())
}

/// A copy of `error` (to keep an error passed to a callback beyond the callback); NULL
/// for NULL. Free the copy with `pysched_error_free`.
/// Thread-safe. Never blocks.
#[no_mangle]
pub extern "C" fn pysched_error_clone(error: *const pysched_error) -> *mut pysched_error {
    // SAFETY: NULL or a live error handle (documented).
    super::boundary_value(std::ptr::null_mut(), || match unsafe { error.as_ref() } {
        Some(e) => into_raw(e.error.clone()),
        None => std::ptr::null_mut(),
    })
}

/// Releases an error handed out by the library. NULL is a no-op.
/// Thread-safe. Never blocks.
#[no_mangle]
pub extern "C" fn pysched_error_free(error: *mut pysched_error) {
    if !error.is_null() {
        // SAFETY: errors are created by into_raw (Box) and freed exactly once by the owner.
        drop(unsafe { Box::from_raw(error) });
    }
}
