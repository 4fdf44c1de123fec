//! The C ABI: a thin translation layer over the Rust API. Opaque handles, a status enum
//! with stable numbers, detailed error objects, and one panic boundary around every
//! exported body. One file per concept, mirroring the Rust modules.

#![allow(non_camel_case_types)]
// The exported functions take raw pointers from C callers whose contract (NULL or a live
// handle) is documented on each; every dereference is checked for NULL first.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

pub mod alloc;
pub mod error;
pub mod future;
pub mod handler;
pub mod manager;
#[cfg(feature = "cuda")]
pub mod tensor;
pub mod tensor_handler;

use crate::error::{Error, ErrorKind, Result};
pub use error::pysched_error;
use std::ffi::{c_char, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Result of every fallible call. The numbers are stable. `PYSCHED_OK` is success; any
/// other value is also the kind of the error object handed back.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum pysched_status {
    PYSCHED_OK = 0,
    PYSCHED_INVALID_ARGUMENT = 1,
    PYSCHED_IMPORT = 2,
    PYSCHED_ATTRIBUTE = 3,
    PYSCHED_PYTHON_EXCEPTION = 4,
    PYSCHED_CANCELLED = 5,
    PYSCHED_TIMED_OUT = 6,
    PYSCHED_QUEUE_FULL = 7,
    PYSCHED_SHUT_DOWN = 8,
    PYSCHED_INTERNAL = 9,
    PYSCHED_NOT_READY = 10,
    PYSCHED_CUDA = 11,
    PYSCHED_UNSUPPORTED = 12,
    PYSCHED_COMMIT = 13,
    PYSCHED_CALLBACK = 14,
}

impl From<ErrorKind> for pysched_status {
    fn from(kind: ErrorKind) -> Self {
        use pysched_status::*;
        match kind {
            ErrorKind::Ok => PYSCHED_OK,
            ErrorKind::InvalidArgument => PYSCHED_INVALID_ARGUMENT,
            ErrorKind::Import => PYSCHED_IMPORT,
            ErrorKind::Attribute => PYSCHED_ATTRIBUTE,
            ErrorKind::PythonException => PYSCHED_PYTHON_EXCEPTION,
            ErrorKind::Cancelled => PYSCHED_CANCELLED,
            ErrorKind::TimedOut => PYSCHED_TIMED_OUT,
            ErrorKind::QueueFull => PYSCHED_QUEUE_FULL,
            ErrorKind::ShutDown => PYSCHED_SHUT_DOWN,
            ErrorKind::Internal => PYSCHED_INTERNAL,
            ErrorKind::NotReady => PYSCHED_NOT_READY,
            ErrorKind::Cuda => PYSCHED_CUDA,
            ErrorKind::Unsupported => PYSCHED_UNSUPPORTED,
            ErrorKind::Commit => PYSCHED_COMMIT,
            ErrorKind::Callback => PYSCHED_CALLBACK,
        }
    }
}

/// Runs an exported body: a returned error or a caught panic becomes a status, and the
/// error object is written to `out_error` when that is not NULL.
pub(crate) fn boundary(
    out_error: *mut *mut pysched_error,
    body: impl FnOnce() -> Result<()>,
) -> pysched_status {
    let error = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => return pysched_status::PYSCHED_OK,
        Ok(Err(e)) => e,
        Err(panic) => Error::internal(format!("panic inside pyscheduler: {}", panic_message(&panic))),
    };
    let status = pysched_status::from(error.kind());
    if !out_error.is_null() {
        // SAFETY: the caller passes either NULL or a pointer to writable storage for one
        // error pointer (documented on every function taking `out_error`).
        unsafe { *out_error = error::into_raw(error) };
    }
    status
}

/// Like [`boundary`] for functions that cannot report an error: a panic yields `fallback`.
pub(crate) fn boundary_value<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(fallback)
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_owned()
    }
}

/// Borrows a required handle, or fails with an invalid-argument error naming it.
pub(crate) fn handle<'a, T>(ptr: *const T, what: &str) -> Result<&'a T> {
    // SAFETY: non-NULL handles come from this library's constructors and stay valid
    // until their `_free`, which the caller must not race with other calls (documented).
    unsafe { ptr.as_ref() }.ok_or_else(|| Error::invalid_argument(format!("{what} is NULL")))
}

/// Checks an out-parameter before any work is done.
pub(crate) fn out_ptr<T>(ptr: *mut T, what: &str) -> Result<*mut T> {
    if ptr.is_null() {
        Err(Error::invalid_argument(format!("{what} is NULL")))
    } else {
        Ok(ptr)
    }
}

/// Reads a required UTF-8 string argument.
pub(crate) fn utf8<'a>(ptr: *const c_char, what: &str) -> Result<&'a str> {
    if ptr.is_null() {
        return Err(Error::invalid_argument(format!("{what} is NULL")));
    }
    // SAFETY: non-NULL string arguments are NUL-terminated and outlive the call (documented).
    unsafe { CStr::from_ptr(ptr) }
        .to_str()
        .map_err(|_| Error::invalid_argument(format!("{what} is not valid UTF-8")))
}

/// Reads an optional UTF-8 string argument (NULL is `None`).
pub(crate) fn opt_utf8<'a>(ptr: *const c_char, what: &str) -> Result<Option<&'a str>> {
    if ptr.is_null() {
        Ok(None)
    } else {
        utf8(ptr, what).map(Some)
    }
}

/// Version of the library, e.g. "0.1.0". Static storage; never NULL.
/// Thread-safe. Never blocks.
#[no_mangle]
pub extern "C" fn pysched_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// A short static name for a status ("ok", "import", "queue_full", ...); "unknown" for
/// values outside the enum. Never NULL.
/// Thread-safe. Never blocks.
#[no_mangle]
pub extern "C" fn pysched_status_name(status: i32) -> *const c_char {
    let kind = ErrorKind::ALL.iter().find(|k| **k as i32 == status);
    kind.map_or(c"unknown", |k| k.c_name()).as_ptr()
}

/// Address of the process-wide state shared by all managers and handlers (0 when none is
/// alive). Equal in every plugin of a process that uses the same libpyscheduler.
/// Thread-safe. Never blocks on Python.
#[no_mangle]
pub extern "C" fn pysched_debug_shared_state_address() -> usize {
    boundary_value(0, crate::manager::debug_shared_state_address)
}

/// Number of live managers plus live handlers (each keeps the shared state alive).
/// Thread-safe. Never blocks on Python.
#[no_mangle]
pub extern "C" fn pysched_debug_arc_count() -> u64 {
    boundary_value(0, crate::manager::debug_arc_count)
}
