//! `pysched_manager`: starts or adopts the interpreter, owns a reference to the
//! process-wide state, loads handlers.

use super::handler::{handler_options, pysched_handler, pysched_handler_options};
use super::{boundary, handle, opt_utf8, out_ptr, pysched_error, pysched_status, utf8};
use crate::manager::{Manager, ManagerOptions};
use crate::runtime::RuntimeOptions;
use std::ffi::c_char;

/// A manager handle. Single owner; free with `pysched_manager_free`.
pub struct pysched_manager {
    pub(crate) inner: Manager,
}

/// Options for `pysched_manager_new`. All-zero (or a NULL pointer) means the defaults.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct pysched_manager_options {
    /// Python executable whose environment the interpreter should see (a virtualenv's
    /// `bin/python`). NULL: `$VIRTUAL_ENV/bin/python` if set, else the build interpreter.
    /// Only the first start in the process uses it.
    pub python_executable: *const c_char,
    /// Put the current working directory on `sys.path` (off by default).
    pub add_cwd_to_path: bool,
    /// Worker threads of the shared pool; 0 means the number of CPUs (at least 4). Only
    /// the manager that creates the process-wide state sets it.
    pub worker_threads: u32,
}

/// Creates a manager, starting the interpreter on first use in the process (or adopting
/// one that is already running). Python's signal handlers are not installed and the
/// interpreter is never finalized.
///
/// `options` may be NULL (defaults). `out_manager` must not be NULL; it is written only
/// on success. `out_error` may be NULL.
/// Thread-safe; concurrent first calls race safely. Blocks while Python starts. Must be
/// called WITHOUT the GIL held unless the interpreter is already running.
#[no_mangle]
pub extern "C" fn pysched_manager_new(
    options: *const pysched_manager_options,
    out_manager: *mut *mut pysched_manager,
    out_error: *mut *mut pysched_error,
) -> pysched_status {
    boundary(out_error, || {
        let out = out_ptr(out_manager, "out_manager")?;
        // SAFETY: NULL or a readable options struct (documented).
        let opts = unsafe { options.as_ref() };
        let mut manager_options = ManagerOptions::default();
        if let Some(o) = opts {
            manager_options = ManagerOptions {
                runtime: RuntimeOptions {
                    python_executable: opt_utf8(o.python_executable, "options->python_executable")?
                        .map(str::to_owned),
                    add_cwd_to_path: o.add_cwd_to_path,
                },
                worker_threads: o.worker_threads as usize,
            };
        }
        let manager = Manager::new(manager_options)?;
        // SAFETY: `out` was checked non-NULL and points to writable storage (documented).
        unsafe { *out = Box::into_raw(Box::new(pysched_manager { inner: manager })) };
        Ok(())
    })
}

/// Appends `directory` to `sys.path` unless already present. Empty -> invalid argument.
///
/// `manager`, `directory` must not be NULL; `out_error` may be NULL.
/// Thread-safe. Blocks until the GIL is available (works with or without it held).
#[no_mangle]
pub extern "C" fn pysched_manager_add_path(
    manager: *const pysched_manager,
    directory: *const c_char,
    out_error: *mut *mut pysched_error,
) -> pysched_status {
    boundary(out_error, || {
        let m = handle(manager, "manager")?;
        m.inner.add_path(utf8(directory, "directory")?)
    })
}

/// Imports `module` (once per process; later loads reuse it) and binds `entry_point`
/// (a dotted attribute path is allowed) as a new handler with its own queue.
/// Errors: `PYSCHED_IMPORT` (message carries the Python error), `PYSCHED_ATTRIBUTE`
/// (missing or not callable), `PYSCHED_INVALID_ARGUMENT` (bad names or options).
///
/// `manager`, `module`, `entry_point`, `out_handler` must not be NULL; `options` may be
/// NULL (defaults: batch 1, prefetch 1). `out_handler` is written only on success and
/// owned by the caller. The handler may outlive the manager.
/// Thread-safe. Blocks for the import (works with or without the GIL held).
#[no_mangle]
pub extern "C" fn pysched_manager_load(
    manager: *const pysched_manager,
    module: *const c_char,
    entry_point: *const c_char,
    options: *const pysched_handler_options,
    out_handler: *mut *mut pysched_handler,
    out_error: *mut *mut pysched_error,
) -> pysched_status {
    boundary(out_error, || {
        let m = handle(manager, "manager")?;
        let out = out_ptr(out_handler, "out_handler")?;
        let module = utf8(module, "module")?;
        let entry_point = utf8(entry_point, "entry_point")?;
        // SAFETY: NULL or a readable options struct (documented).
        let opts = handler_options(unsafe { options.as_ref() })?;
        let handler = m.inner.load(module, entry_point, opts)?;
        // SAFETY: `out` was checked non-NULL and points to writable storage (documented).
        unsafe { *out = Box::into_raw(Box::new(pysched_handler { inner: handler })) };
        Ok(())
    })
}

/// Number of worker threads in the shared pool; 0 for NULL.
/// Thread-safe. Never blocks.
#[no_mangle]
pub extern "C" fn pysched_manager_worker_threads(manager: *const pysched_manager) -> u32 {
    super::boundary_value(0, || handle(manager, "manager").map_or(0, |m| m.inner.worker_threads() as u32))
}

/// Whether this process's interpreter was adopted (already running when pyscheduler
/// first started) rather than started by pyscheduler; false for NULL.
/// Thread-safe. Never blocks.
#[no_mangle]
pub extern "C" fn pysched_manager_adopted(manager: *const pysched_manager) -> bool {
    super::boundary_value(false, || {
        handle(manager, "manager").is_ok_and(|m| m.inner.start_mode() == crate::runtime::StartMode::Adopted)
    })
}

/// Releases a manager. Handlers it loaded stay valid; the interpreter keeps running.
/// When it is the last manager and no handler is left, the worker pool stops and this
/// waits until its threads have exited (each gives back its Python thread state; the
/// GIL is released meanwhile if the caller holds it), so none is still exiting when the
/// process runs its exit handlers. NULL is a no-op.
/// Thread-safe. Never blocks on Python code.
#[no_mangle]
pub extern "C" fn pysched_manager_free(manager: *mut pysched_manager) {
    if !manager.is_null() {
        super::boundary_value((), || {
            // SAFETY: created by pysched_manager_new (Box) and freed exactly once.
            drop(unsafe { Box::from_raw(manager) })
        });
    }
}
