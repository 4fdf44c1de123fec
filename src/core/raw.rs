//! Raw CPython helpers for code that may run in any interpreter, the main one or an
//! own-GIL sub-interpreter replica's, where pyo3's safe API must not run: an owned
//! reference ([`Owned`]) and the reading of a pending exception into an [`Error`] with the
//! same text, type name and traceback as `Error::from_pyerr_context` gives in the main
//! interpreter. Every function needs the current interpreter's GIL (or, free-threaded, an
//! attached thread state).
//!
//! A leaf: uses only `crate::error` and pyo3's raw `ffi`.

use crate::error::{Error, ErrorKind};
use pyo3::ffi::{self, PyObject};
use std::ffi::CStr;
use std::ptr::NonNull;

/// A strong reference to an object of the interpreter current on this thread. Only created
/// and dropped on one thread with that interpreter's GIL held (it is neither `Send` nor
/// `Sync`), so it is valid in the main interpreter and in a replica's alike.
pub(crate) struct Owned(NonNull<PyObject>);

impl Owned {
    /// Takes ownership of a new reference; `None` for NULL (a Python error is then set).
    pub(crate) unsafe fn new(ptr: *mut PyObject) -> Option<Owned> {
        NonNull::new(ptr).map(Owned)
    }

    /// Takes a new reference to a borrowed object.
    pub(crate) unsafe fn borrowed(ptr: NonNull<PyObject>) -> Owned {
        ffi::Py_INCREF(ptr.as_ptr());
        Owned(ptr)
    }

    pub(crate) fn as_ptr(&self) -> *mut PyObject {
        self.0.as_ptr()
    }

    /// Hands the reference on (to a call that steals it).
    pub(crate) fn into_ptr(self) -> *mut PyObject {
        let ptr = self.0.as_ptr();
        std::mem::forget(self);
        ptr
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        // SAFETY: the reference is owned, and Owned lives only on its thread while that
        // interpreter's GIL is held.
        unsafe { ffi::Py_DECREF(self.0.as_ptr()) }
    }
}

/// A Python exception taken from the current interpreter, as plain strings.
pub(crate) struct Fetched {
    /// Qualified name of the exception's type.
    pub(crate) python_type: String,
    /// `str(exception)`.
    pub(crate) text: String,
    /// "Traceback (most recent call last):\n" and the frames, as the main interpreter's
    /// errors carry it (see `format_traceback`); "" when there is none.
    pub(crate) traceback: String,
}

/// Takes the pending exception, its traceback formatted in this interpreter as the main
/// interpreter formats it (never `PyErr_Print`, which exits the process on
/// `SystemExit`). Leaves no exception set. `None` when no exception was set.
pub(crate) unsafe fn fetch() -> Option<Fetched> {
    let (mut ty, mut value, mut tb) = (std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut());
    #[allow(deprecated)] // PyErr_GetRaisedException is 3.12+ only in pyo3-ffi's view.
    {
        ffi::PyErr_Fetch(&mut ty, &mut value, &mut tb);
        if ty.is_null() {
            return None;
        }
        ffi::PyErr_NormalizeException(&mut ty, &mut value, &mut tb);
    }
    let (ty, value, tb) = (Owned::new(ty), Owned::new(value), Owned::new(tb));
    if let (Some(v), Some(t)) = (&value, &tb) {
        ffi::PyException_SetTraceback(v.as_ptr(), t.as_ptr());
    }
    let python_type = ty
        .as_ref()
        .and_then(|t| attr_text(t.as_ptr(), c"__qualname__"))
        .unwrap_or_else(|| "<unknown>".to_owned());
    let text = value
        .as_ref()
        .and_then(|v| str_text(v.as_ptr()))
        .unwrap_or_else(|| "<exception str() failed>".to_owned());
    let traceback = tb.as_ref().and_then(|t| format_traceback(t.as_ptr())).unwrap_or_default();
    // Formatting failures must not leak into the next call.
    ffi::PyErr_Clear();
    Some(Fetched { python_type, text, traceback })
}

/// The traceback as the main interpreter's errors carry it (pyo3's `PyTraceback::format`):
/// what `PyTraceBack_Print` writes into an `io.StringIO`.
pub(crate) unsafe fn format_traceback(tb: *mut PyObject) -> Option<String> {
    let io = Owned::new(ffi::PyImport_ImportModule(c"io".as_ptr()))?;
    let string_io =
        Owned::new(ffi::PyObject_CallMethod(io.as_ptr(), c"StringIO".as_ptr(), std::ptr::null()))?;
    if ffi::PyTraceBack_Print(tb, string_io.as_ptr()) != 0 {
        return None;
    }
    let text =
        Owned::new(ffi::PyObject_CallMethod(string_io.as_ptr(), c"getvalue".as_ptr(), std::ptr::null()))?;
    utf8(text.as_ptr())
}

/// Builds the error of a Python exception: "{context}: Type: text", with the exception's
/// type name and traceback, exactly as `Error::from_pyerr_context` builds it in the main
/// interpreter.
pub(crate) fn python_error(kind: ErrorKind, context: &str, fetched: Fetched) -> Error {
    Error::from_python_parts(kind, fetched.python_type, &fetched.text, fetched.traceback)
        .with_context(context)
}

/// Takes the pending exception as an error of `kind`; a missing exception becomes an
/// internal error naming `context` (as `Error::fetch` does).
pub(crate) unsafe fn fetch_error(kind: ErrorKind, context: &str) -> Error {
    match fetch() {
        Some(fetched) => python_error(kind, context, fetched),
        None => Error::internal(format!("{context}: failed without a Python exception set")),
    }
}

/// The UTF-8 text of a `str`; clears the error and returns `None` when it is not one.
pub(crate) unsafe fn utf8(obj: *mut PyObject) -> Option<String> {
    let mut len: ffi::Py_ssize_t = 0;
    let data = ffi::PyUnicode_AsUTF8AndSize(obj, &mut len);
    if data.is_null() {
        ffi::PyErr_Clear();
        return None;
    }
    let bytes = std::slice::from_raw_parts(data.cast::<u8>(), len as usize);
    Some(String::from_utf8_lossy(bytes).into_owned())
}

/// `str(obj)`, or `None` (error cleared).
pub(crate) unsafe fn str_text(obj: *mut PyObject) -> Option<String> {
    match Owned::new(ffi::PyObject_Str(obj)) {
        Some(s) => utf8(s.as_ptr()),
        None => {
            ffi::PyErr_Clear();
            None
        }
    }
}

/// A string attribute of `obj`, or `None` (error cleared).
pub(crate) unsafe fn attr_text(obj: *mut PyObject, name: &CStr) -> Option<String> {
    match Owned::new(ffi::PyObject_GetAttrString(obj, name.as_ptr())) {
        Some(a) => utf8(a.as_ptr()),
        None => {
            ffi::PyErr_Clear();
            None
        }
    }
}

/// Qualified name of `obj`'s type.
pub(crate) unsafe fn type_name(obj: *mut PyObject) -> String {
    attr_text(ffi::Py_TYPE(obj).cast(), c"__qualname__").unwrap_or_else(|| "<unknown>".into())
}
