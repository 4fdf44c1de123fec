//! Errors of every layer: one kind enum with stable numbers (shared with the C ABI's
//! status codes) and an error value that owns plain strings, so it can be read, cloned
//! and dropped on any thread without the GIL.

use pyo3::prelude::*;
use pyo3::types::PyTracebackMethods;
use std::ffi::CString;
use std::fmt;

/// What went wrong. The numbers are part of the C ABI (`pysched_status`) and never change.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Not an error (the C ABI's `PYSCHED_OK`).
    Ok = 0,
    /// A caller passed a NULL pointer, an empty or malformed name, or an out-of-range option.
    InvalidArgument = 1,
    /// The Python module could not be imported.
    Import = 2,
    /// The module has no such attribute, or it is not callable.
    Attribute = 3,
    /// The Python function (or code it called) raised an exception.
    PythonException = 4,
    /// The item was cancelled before it started.
    Cancelled = 5,
    /// A deadline or a wait timeout passed.
    TimedOut = 6,
    /// The handler's bounded queue was full and the policy is to reject.
    QueueFull = 7,
    /// The handler or its worker pool is shutting down.
    ShutDown = 8,
    /// A bug or broken invariant inside pyscheduler, or a panic caught at the boundary.
    Internal = 9,
    /// The future has not completed yet.
    NotReady = 10,
    /// A CUDA driver call failed, or no driver/device is present.
    Cuda = 11,
    /// The running Python lacks a feature the request needs (e.g. own-GIL sub-interpreters).
    Unsupported = 12,
    /// The item's commit callback failed.
    Commit = 13,
    /// The item's completion callback reported a failure.
    Callback = 14,
}

impl ErrorKind {
    /// Every kind, in numeric order.
    pub const ALL: [ErrorKind; 15] = [
        ErrorKind::Ok,
        ErrorKind::InvalidArgument,
        ErrorKind::Import,
        ErrorKind::Attribute,
        ErrorKind::PythonException,
        ErrorKind::Cancelled,
        ErrorKind::TimedOut,
        ErrorKind::QueueFull,
        ErrorKind::ShutDown,
        ErrorKind::Internal,
        ErrorKind::NotReady,
        ErrorKind::Cuda,
        ErrorKind::Unsupported,
        ErrorKind::Commit,
        ErrorKind::Callback,
    ];

    /// A short lowercase name, used in messages and metrics labels.
    pub fn name(self) -> &'static str {
        self.c_name().to_str().unwrap_or("unknown")
    }

    /// [`ErrorKind::name`] as a NUL-terminated string (the C ABI's `pysched_status_name`).
    pub fn c_name(self) -> &'static std::ffi::CStr {
        match self {
            ErrorKind::Ok => c"ok",
            ErrorKind::InvalidArgument => c"invalid_argument",
            ErrorKind::Import => c"import",
            ErrorKind::Attribute => c"attribute",
            ErrorKind::PythonException => c"python_exception",
            ErrorKind::Cancelled => c"cancelled",
            ErrorKind::TimedOut => c"timed_out",
            ErrorKind::QueueFull => c"queue_full",
            ErrorKind::ShutDown => c"shut_down",
            ErrorKind::Internal => c"internal",
            ErrorKind::NotReady => c"not_ready",
            ErrorKind::Cuda => c"cuda",
            ErrorKind::Unsupported => c"unsupported",
            ErrorKind::Commit => c"commit",
            ErrorKind::Callback => c"callback",
        }
    }
}

/// An error with its kind, a message, and for Python exceptions the exception's type
/// name and formatted traceback. Holds no Python objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    python_type: String,
    traceback: String,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error { kind, message: message.into(), python_type: String::new(), traceback: String::new() }
    }

    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::InvalidArgument, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Internal, message)
    }

    /// Converts a Python exception into an error of `kind`, formatting its traceback with
    /// the `traceback` module (never `PyErr_Print`, which exits on `SystemExit`).
    ///
    /// PRECONDITION: attached to the interpreter (implied by `py`).
    pub fn from_pyerr(py: Python<'_>, err: &PyErr, kind: ErrorKind) -> Self {
        let python_type =
            err.get_type(py).qualname().map(|n| n.to_string()).unwrap_or_else(|_| "<unknown>".to_owned());
        let value = err.value(py);
        let text =
            value.str().map(|s| s.to_string()).unwrap_or_else(|_| "<exception str() failed>".to_owned());
        let traceback = err.traceback(py).and_then(|tb| tb.format().ok()).unwrap_or_default();
        Error::from_python_parts(kind, python_type, &text, traceback)
    }

    /// Like [`Error::from_pyerr`], prefixing the message with what was being done.
    pub fn from_pyerr_context(py: Python<'_>, err: &PyErr, kind: ErrorKind, context: &str) -> Self {
        Error::from_pyerr(py, err, kind).with_context(context)
    }

    /// The error of a Python exception given as plain pieces, for code that reads the
    /// exception without pyo3 (inside a sub-interpreter, where pyo3's safe API must not
    /// run): `python_type` is the type's qualified name, `text` is `str(exception)` and
    /// `traceback` is formatted as `PyTraceBack_Print` writes it ("Traceback (most recent
    /// call last):\n" and the frames; "" when there is none). The message reads
    /// "Type: text" ("Type" alone when `text` is empty), as [`Error::from_pyerr`] writes it.
    /// Callable without the GIL.
    pub fn from_python_parts(
        kind: ErrorKind,
        python_type: impl Into<String>,
        text: &str,
        traceback: impl Into<String>,
    ) -> Self {
        let python_type = python_type.into();
        let message = if text.is_empty() { python_type.clone() } else { format!("{python_type}: {text}") };
        Error { kind, message, python_type, traceback: traceback.into() }
    }

    /// Prefixes the message with what was being done: "{context}: {message}".
    pub fn with_context(mut self, context: &str) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }

    /// Takes the pending Python exception (if any) as an error; a missing exception becomes
    /// an internal error naming `context`.
    pub fn fetch(py: Python<'_>, kind: ErrorKind, context: &str) -> Self {
        match PyErr::take(py) {
            Some(err) => Error::from_pyerr_context(py, &err, kind, context),
            None => Error::internal(format!("{context}: failed without a Python exception set")),
        }
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
    /// Human-readable message; for Python exceptions `"Type: message"`.
    pub fn message(&self) -> &str {
        &self.message
    }
    /// Qualified name of the Python exception type, or "" when not a Python error.
    pub fn python_type(&self) -> &str {
        &self.python_type
    }
    /// The formatted Python traceback ("Traceback (most recent call last): ..."), or "".
    pub fn traceback(&self) -> &str {
        &self.traceback
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} error: {}", self.kind.name(), self.message)
    }
}

impl std::error::Error for Error {}

/// A detailed error: kind, message, and for Python exceptions the type name and the
/// formatted traceback. Created by the library, released with `pysched_error_free`.
// An `Error` with its strings NUL-terminated, as C callers read it: here, beside `Error`,
// because the core hands one to C callbacks (`core::job::CallbackJob`) without depending
// on the C ABI; its functions live in `ffi::error`.
#[allow(non_camel_case_types)]
pub struct pysched_error {
    pub(crate) error: Error,
    pub(crate) message: CString,
    pub(crate) python_type: CString,
    pub(crate) traceback: CString,
}

fn c_string(s: &str) -> CString {
    CString::new(s.replace('\0', "\\0")).unwrap_or_default()
}

impl pysched_error {
    pub(crate) fn new(error: Error) -> pysched_error {
        pysched_error {
            message: c_string(error.message()),
            python_type: c_string(error.python_type()),
            traceback: c_string(error.traceback()),
            error,
        }
    }
}
