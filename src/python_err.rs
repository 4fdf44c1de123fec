//! Stray Python errors: an exception left set by user code that returned normally (a
//! commit that returned its object, a GIL-free stage, a completion callback, a destructor
//! run when pyscheduler drops a reference, code the caller ran before a synchronous
//! call). Wherever the core regains control under the GIL it calls [`report_stray`]:
//! the error goes to `sys.unraisablehook` (`PyErr_WriteUnraisable`: printed to stderr by
//! default) with a context naming the handler, and is cleared, so it never fails another
//! item or call and never reaches a caster (pybind11 asserts on one in Debug builds).
//!
//! It does not change the outcome of the code that left it: that code reported success,
//! so a commit that returned an object proceeds with that object, and a callback that
//! returned 0 has completed its item. An error that a callback *reports* (a commit
//! returning NULL, a non-zero status) is that item's error as before.

use pyo3::ffi;
use pyo3::Python;

/// Reports and clears the error set on this thread, if any. `left_by` says which code
/// ran last ("the commit callback", ...), `handler` names the handler. Cheap when no
/// error is set (one thread-state read).
#[inline]
pub(crate) fn report_stray(_py: Python<'_>, handler: &str, left_by: &str) {
    // SAFETY: `_py` proves this thread is attached to the interpreter.
    unsafe { report_stray_attached(handler, left_by) }
}

/// [`report_stray`] for code that holds no `Python` token (sub-interpreter replicas).
///
/// # Safety
/// The calling thread must be attached to an interpreter (its thread state current, with
/// the GIL held on GIL builds).
#[inline]
pub(crate) unsafe fn report_stray_attached(handler: &str, left_by: &str) {
    if !ffi::PyErr_Occurred().is_null() {
        write_unraisable(handler, left_by);
    }
}

#[cold]
#[inline(never)]
unsafe fn write_unraisable(handler: &str, left_by: &str) {
    let text = format!(
        "pyscheduler handler '{handler}': a Python error left set by {left_by}, which returned normally"
    );
    // The context string is built with the error fetched, so that a failure to build it
    // (MemoryError) cannot replace the error being reported.
    #[allow(deprecated)] // PyErr_GetRaisedException is 3.12+ only; Fetch/Restore work everywhere.
    {
        let (mut ty, mut value, mut tb) = (std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut());
        ffi::PyErr_Fetch(&mut ty, &mut value, &mut tb);
        let context = ffi::PyUnicode_FromStringAndSize(text.as_ptr().cast(), text.len() as ffi::Py_ssize_t);
        if context.is_null() {
            ffi::PyErr_Clear();
        }
        ffi::PyErr_Restore(ty, value, tb);
        // Calls sys.unraisablehook with the error and `context` (NULL is allowed) and
        // clears the error; an exception raised by the hook is itself printed and cleared.
        ffi::PyErr_WriteUnraisable(context);
        ffi::Py_XDECREF(context);
    }
}
