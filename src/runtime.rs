//! The process's one interpreter: started exactly once (or adopted when something else
//! already started it), never finalized, made visible to C extensions even when
//! pyscheduler was loaded with `RTLD_LOCAL`, and entered through persistent per-thread
//! thread states so that attaching costs a lock hand-off, not an allocation.

use crate::error::{Error, ErrorKind, Result};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyAnyMethods, PyList, PyListMethods};
use std::ffi::{CStr, CString};
use std::sync::{Mutex, OnceLock};

/// How to start the interpreter. Only the first start in the process uses these; later
/// callers adopt the running interpreter (their `add_cwd_to_path` still applies).
#[derive(Debug, Clone, Default)]
pub struct RuntimeOptions {
    /// The Python executable whose environment (a virtualenv's site-packages, say) the
    /// embedded interpreter should see. `None`: `$VIRTUAL_ENV/bin/python` when that
    /// variable is set, else the interpreter pyscheduler was built against.
    pub python_executable: Option<String>,
    /// Put the current working directory on `sys.path` (off by default: a module in the
    /// working directory named like a stdlib one must not hijack imports).
    pub add_cwd_to_path: bool,
}

/// How the interpreter came to be running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartMode {
    /// pyscheduler initialized it.
    Started,
    /// It was already running (pyscheduler loaded into a Python process, or started by
    /// another component); pyscheduler uses it as it is.
    Adopted,
}

/// How the interpreter came to run, once it does.
static STARTED: OnceLock<StartMode> = OnceLock::new();
/// Serializes start attempts. A failed attempt (a bad executable, say) is not cached: a
/// later call with other options tries again.
static START_LOCK: Mutex<()> = Mutex::new(());
/// Serializes `sys.path` edits made by pyscheduler (Python code may still edit it freely).
static PATH_LOCK: Mutex<()> = Mutex::new(());

/// Starts (or adopts) the interpreter exactly once per process; safe to race from many
/// threads. Returns how it came to run. Thread-safe; the first caller blocks while
/// Python starts, the others wait for it.
pub fn ensure_started(options: &RuntimeOptions) -> Result<StartMode> {
    let mode = match STARTED.get() {
        Some(mode) => *mode,
        None => {
            let _guard = START_LOCK.lock().unwrap_or_else(|p| p.into_inner());
            match STARTED.get() {
                Some(mode) => *mode,
                None => {
                    let mode = start_interpreter(options)?;
                    let _ = STARTED.set(mode);
                    mode
                }
            }
        }
    };
    if options.add_cwd_to_path {
        let cwd = std::env::current_dir()
            .map_err(|e| Error::invalid_argument(format!("cannot read current directory: {e}")))?;
        add_path(&cwd.to_string_lossy())?;
    }
    Ok(mode)
}

/// Whether the interpreter has been started or adopted by this library.
pub fn is_started() -> bool {
    STARTED.get().is_some()
}

fn start_interpreter(options: &RuntimeOptions) -> Result<StartMode> {
    promote_libpython_to_global();
    // SAFETY: Py_IsInitialized may be called at any time, with or without the GIL.
    if unsafe { ffi::Py_IsInitialized() } != 0 {
        persist_current_thread_state();
        return Ok(StartMode::Adopted);
    }
    let executable = options.python_executable.clone().filter(|s| !s.is_empty()).or_else(|| {
        std::env::var("VIRTUAL_ENV").ok().filter(|v| !v.is_empty()).map(|v| format!("{v}/bin/python"))
    });
    if let Some(exe) = &executable {
        if !std::path::Path::new(exe).exists() {
            return Err(Error::invalid_argument(format!("python executable {exe:?} does not exist")));
        }
    }
    // SAFETY: the interpreter is not running (checked above) and START_LOCK guarantees
    // no other thread of this library initializes concurrently. The config is
    // initialized by PyConfig_InitPythonConfig before any field is set and cleared after.
    unsafe {
        let mut config = std::mem::MaybeUninit::<ffi::PyConfig>::zeroed();
        ffi::PyConfig_InitPythonConfig(config.as_mut_ptr());
        let config_ptr = config.as_mut_ptr();
        (*config_ptr).install_signal_handlers = 0;
        (*config_ptr).parse_argv = 0;
        if let Some(exe) = &executable {
            let exe_c = CString::new(exe.as_str())
                .map_err(|_| Error::invalid_argument("python executable contains a NUL byte"))?;
            let status =
                ffi::PyConfig_SetBytesString(config_ptr, &mut (*config_ptr).program_name, exe_c.as_ptr());
            if ffi::PyStatus_Exception(status) != 0 {
                ffi::PyConfig_Clear(config_ptr);
                return Err(status_error(status, "setting the program name"));
            }
        }
        let status = ffi::Py_InitializeFromConfig(config_ptr);
        ffi::PyConfig_Clear(config_ptr);
        if ffi::PyStatus_Exception(status) != 0 {
            return Err(status_error(status, "starting the Python interpreter"));
        }
    }
    // The host's SIGINT disposition, before Python can touch it.
    // SAFETY: sigaction with a NULL new action only reads the current disposition.
    let host_sigint = unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGINT, std::ptr::null(), &mut old);
        old
    };
    Python::attach(|py| -> Result<()> {
        // With install_signal_handlers off CPython still installs its SIGINT handler the
        // first time anything imports `signal` (asyncio, subprocess...): import it now and
        // give the host its disposition back, so Ctrl-C keeps meaning what the host says.
        let imported = py.import("signal").is_ok();
        if imported {
            // SAFETY: restores the disposition read above; the GIL serializes this with
            // Python's own signal module.
            unsafe { libc::sigaction(libc::SIGINT, &host_sigint, std::ptr::null_mut()) };
        }
        // An embedded interpreter never puts the working directory on sys.path itself,
        // but an empty entry means "the current directory" to the import system.
        let path = sys_path(py)?;
        let mut i = 0;
        while i < path.len() {
            let entry = path.get_item(i).map_err(|e| Error::from_pyerr(py, &e, ErrorKind::Internal))?;
            if entry.extract::<String>().map(|s| s.is_empty()).unwrap_or(false) {
                path.del_item(i).map_err(|e| Error::from_pyerr(py, &e, ErrorKind::Internal))?;
            } else {
                i += 1;
            }
        }
        Ok(())
    })?;
    // SAFETY: Py_InitializeFromConfig left this thread attached with the GIL held; the
    // thread state stays alive (it is the main thread state) and the GIL is released so
    // any thread can attach.
    unsafe {
        ffi::PyEval_SaveThread();
    }
    Ok(StartMode::Started)
}

fn status_error(status: ffi::PyStatus, what: &str) -> Error {
    let msg = if status.err_msg.is_null() {
        "unknown error".to_owned()
    } else {
        // SAFETY: err_msg is a static NUL-terminated string owned by CPython.
        unsafe { CStr::from_ptr(status.err_msg) }.to_string_lossy().into_owned()
    };
    Error::new(ErrorKind::Internal, format!("{what}: {msg}"))
}

/// Re-opens the libpython that this library is linked against with `RTLD_GLOBAL`, so
/// extension modules (numpy, torch) resolve `Py*` symbols even when the host loaded us
/// with `RTLD_LOCAL` and links no libpython itself.
fn promote_libpython_to_global() {
    // SAFETY: dladdr only reads the loader's tables; the address is a function of libpython.
    unsafe {
        let mut info: libc::Dl_info = std::mem::zeroed();
        let symbol = ffi::Py_IsInitialized as *const libc::c_void;
        if libc::dladdr(symbol, &mut info) == 0 || info.dli_fname.is_null() {
            return;
        }
        // RTLD_NOLOAD: only change the flags of the already-loaded object. The handle is
        // deliberately never closed: libpython stays for the life of the process.
        let _ = libc::dlopen(info.dli_fname, libc::RTLD_NOW | libc::RTLD_NOLOAD | libc::RTLD_GLOBAL);
    }
}

/// `sys.path` as a list.
pub(crate) fn sys_path<'py>(py: Python<'py>) -> Result<Bound<'py, PyList>> {
    py.import("sys")
        .and_then(|sys| sys.getattr("path"))
        .and_then(|p| p.cast_into::<PyList>().map_err(PyErr::from))
        .map_err(|e| Error::from_pyerr_context(py, &e, ErrorKind::Internal, "reading sys.path"))
}

/// Appends `directory` to `sys.path` unless it is already there. Thread-safe; attaches
/// to the interpreter (blocks until the GIL is available).
pub fn add_path(directory: &str) -> Result<()> {
    if directory.is_empty() {
        return Err(Error::invalid_argument("add_path: directory must not be empty"));
    }
    if directory.contains('\0') {
        return Err(Error::invalid_argument("add_path: directory contains a NUL byte"));
    }
    let _guard = PATH_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    attach(|py| {
        let path = sys_path(py)?;
        let present = path.contains(directory).map_err(|e| Error::from_pyerr(py, &e, ErrorKind::Internal))?;
        if !present {
            path.append(directory).map_err(|e| Error::from_pyerr(py, &e, ErrorKind::Internal))?;
        }
        Ok(())
    })
}

/// Owns the calling thread's persistent Python thread state; dropped at thread exit.
struct ThreadStateKeeper {
    gstate: ffi::PyGILState_STATE,
}

impl Drop for ThreadStateKeeper {
    fn drop(&mut self) {
        // The process's main thread runs its thread-local destructors inside exit(); other
        // threads may hold the GIL forever by then, so it keeps its state (the process is
        // ending anyway). Never touch an interpreter that is finalizing.
        // SAFETY: getpid/gettid are plain syscalls.
        let is_main = unsafe { libc::getpid() == libc::gettid() };
        // SAFETY: checks without the GIL are allowed for these two functions.
        if is_main || unsafe { ffi::Py_IsInitialized() } == 0 {
            return;
        }
        // SAFETY: this thread created its state with PyGILState_Ensure (counter 1) and
        // released the GIL. Ensure re-attaches it (counter 2); releasing with LOCKED
        // drops the counter to 1 and stays attached; the final release brings it to 0,
        // which clears and deletes the thread state and releases the GIL.
        unsafe {
            ffi::PyGILState_Ensure();
            ffi::PyGILState_Release(ffi::PyGILState_STATE::PyGILState_LOCKED);
            ffi::PyGILState_Release(self.gstate);
        }
    }
}

thread_local! {
    static KEEPER: std::cell::Cell<Option<ThreadStateKeeper>> = const { std::cell::Cell::new(None) };
}

/// Gives the calling thread a Python thread state that lives until the thread exits, so
/// later attaches only take the GIL. Call without the GIL held. No-op when the thread
/// already has a thread state.
pub(crate) fn persist_current_thread_state() {
    // SAFETY: PyGILState_GetThisThreadState may be called without the GIL.
    if unsafe { ffi::PyGILState_GetThisThreadState() }.is_null() {
        // SAFETY: the interpreter is initialized (callers run after ensure_started) and
        // this thread has no thread state: Ensure creates one and takes the GIL, and
        // SaveThread releases the GIL while keeping the state.
        let gstate = unsafe {
            let g = ffi::PyGILState_Ensure();
            ffi::PyEval_SaveThread();
            g
        };
        KEEPER.with(|k| k.set(Some(ThreadStateKeeper { gstate })));
    }
}

/// Attaches to the interpreter (taking the GIL) through a persistent thread state, runs
/// `f`, and detaches. Re-entrant: a thread that already holds the GIL just runs `f`.
pub fn attach<R>(f: impl for<'py> FnOnce(Python<'py>) -> R) -> R {
    if !is_attached() {
        persist_current_thread_state();
    }
    Python::attach(f)
}

/// Runs `f` with the GIL released if the calling thread holds it, so blocking waits
/// (on futures, on drains) never deadlock against workers that need the GIL.
pub fn without_gil<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if is_started() && is_attached() {
        if in_subinterpreter() {
            // A replica's callback (draining, waiting on a future): pyo3 must not attach
            // there, so release that interpreter's GIL through the C-API.
            return without_subinterpreter_gil(f);
        }
        Python::attach(|py| py.detach(f))
    } else {
        f()
    }
}

/// Whether this thread's current Python thread state belongs to a sub-interpreter (a
/// replica's, or any other), where pyo3's safe API must not run: its `attach` would
/// release references of the main interpreter under the sub-interpreter's GIL.
/// Callable with or without a thread state.
pub(crate) fn in_subinterpreter() -> bool {
    #[cfg(Py_3_12)]
    // SAFETY: reading the current thread state (possibly NULL) and, when there is one,
    // its interpreter, which lives at least as long as the thread state.
    unsafe {
        let tstate = ffi::compat::PyThreadState_GetUnchecked();
        !tstate.is_null() && ffi::PyThreadState_GetInterpreter(tstate) != ffi::PyInterpreterState_Main()
    }
    #[cfg(not(Py_3_12))]
    {
        // Before 3.12 the current thread state is process-wide, and pyscheduler makes no
        // sub-interpreters there.
        false
    }
}

/// Runs `f` with the current sub-interpreter's GIL released, through the raw C-API.
/// PRECONDITION: [`in_subinterpreter`] is true on this thread (its GIL is held).
pub(crate) fn without_subinterpreter_gil<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(*mut ffi::PyThreadState);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: the thread state this thread saved below; re-attaching to it is
            // what the precondition's caller expects on return (also on unwinding).
            unsafe { ffi::PyEval_RestoreThread(self.0) }
        }
    }
    // SAFETY: the precondition: this thread holds the sub-interpreter's GIL.
    let _restore = Restore(unsafe { ffi::PyEval_SaveThread() });
    f()
}

/// Whether the calling thread is attached to an interpreter (holds its GIL, on GIL builds).
/// Unlike `PyGILState_Check`, this stays exact once sub-interpreters exist.
pub fn is_attached() -> bool {
    // SAFETY: reads the current thread state pointer; never fails.
    let current = unsafe { ffi::compat::PyThreadState_GetUnchecked() };
    if current.is_null() {
        return false;
    }
    // Before 3.12 the "current" thread state is process-wide: it names whichever thread
    // holds the GIL. It is ours only if it is this thread's own.
    #[cfg(not(Py_3_12))]
    {
        // SAFETY: may be called without the GIL; returns this OS thread's state or NULL.
        current == unsafe { ffi::PyGILState_GetThisThreadState() }
    }
    #[cfg(Py_3_12)]
    {
        true
    }
}
