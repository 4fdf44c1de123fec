//! One replica's interpreter: creating an own-GIL sub-interpreter (serialized, from
//! CPython's isolated configuration), giving it the main interpreter's `sys.path`,
//! importing the handler's module and binding its entry point there, and ending it.
//! Raw C-API only.
//!
//! May call: `crate::core::raw`, `crate::runtime` (the main interpreter's `sys.path`).

use crate::core::raw::{attr_text, fetch, fetch_error, python_error, Owned};
use crate::error::{Error, ErrorKind, Result};
use pyo3::ffi;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::{Mutex, OnceLock};

/// What every replica of one handler imports.
pub(super) struct ReplicaSpec {
    pub(super) module: String,
    pub(super) entry_point: String,
    /// The main interpreter's `sys.path` when the handler was loaded.
    pub(super) sys_path: Vec<String>,
}

/// The main interpreter's `sys.path` entries that are strings.
pub(super) fn main_sys_path() -> Result<Vec<String>> {
    use pyo3::types::{PyAnyMethods, PyListMethods};
    crate::runtime::attach(|py| {
        let path = crate::runtime::sys_path(py)?;
        Ok(path.iter().filter_map(|entry| entry.extract::<String>().ok()).collect())
    })
}

/// Serializes `Py_NewInterpreterFromConfig`: several of CPython 3.12's internal modules
/// crash when two interpreters initialize concurrently (pybind11 guards the same call
/// for the same reason). Creation happens once per replica, so the cost is start-up only.
static CREATION_LOCK: Mutex<()> = Mutex::new(());

/// CPython's `PyInterpreterConfig` (Include/cpython/pylifecycle.h), the same from 3.12
/// through 3.14.
#[repr(C)]
pub(super) struct InterpreterConfig {
    use_main_obmalloc: c_int,
    allow_fork: c_int,
    allow_exec: c_int,
    allow_threads: c_int,
    allow_daemon_threads: c_int,
    check_multi_interp_extensions: c_int,
    gil: c_int,
}

const PY_INTERPRETER_CONFIG_OWN_GIL: c_int = 2;

/// CPython's own isolated configuration (`_PyInterpreterConfig_INIT`, what
/// `interpreters.create()` uses):
/// - own GIL and own allocator (required for an own GIL);
/// - extension modules must declare per-interpreter support, so single-phase-init
///   modules fail with ImportError instead of corrupting shared state;
/// - threads allowed (handlers may use `threading`), daemon threads not: one still
///   running would make `Py_EndInterpreter` abort the process;
/// - no fork (forking a multi-threaded host from a worker thread leaves the child with
///   one thread and locks held by others) and no exec (replacing the whole host process,
///   or spawning through `subprocess`, from an isolated interpreter is refused by CPython
///   itself in this configuration).
const REPLICA_CONFIG: InterpreterConfig = InterpreterConfig {
    use_main_obmalloc: 0,
    allow_fork: 0,
    allow_exec: 0,
    allow_threads: 1,
    allow_daemon_threads: 0,
    check_multi_interp_extensions: 1,
    gil: PY_INTERPRETER_CONFIG_OWN_GIL,
};

pub(super) type NewInterpreterFromConfig = unsafe extern "C" fn(
    tstate_p: *mut *mut ffi::PyThreadState,
    config: *const InterpreterConfig,
) -> ffi::PyStatus;

/// `Py_NewInterpreterFromConfig` of the libpython this library runs on, if it has one.
pub(super) fn new_interpreter_from_config() -> Option<NewInterpreterFromConfig> {
    static ADDRESS: OnceLock<usize> = OnceLock::new();
    let address = *ADDRESS.get_or_init(|| {
        let name = c"Py_NewInterpreterFromConfig";
        // SAFETY: dladdr/dlopen(RTLD_NOLOAD)/dlsym only read the loader's tables. The
        // handle is never closed (libpython stays loaded for the life of the process).
        unsafe {
            let mut info: libc::Dl_info = std::mem::zeroed();
            let anchor = ffi::Py_IsInitialized as *const c_void;
            if libc::dladdr(anchor, &mut info) != 0 && !info.dli_fname.is_null() {
                let lib = libc::dlopen(info.dli_fname, libc::RTLD_NOW | libc::RTLD_NOLOAD);
                if !lib.is_null() {
                    let symbol = libc::dlsym(lib, name.as_ptr());
                    if !symbol.is_null() {
                        return symbol as usize;
                    }
                }
            }
            libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) as usize
        }
    });
    // SAFETY: a non-zero address is CPython's Py_NewInterpreterFromConfig, whose C
    // signature (3.12+) is exactly `NewInterpreterFromConfig`.
    (address != 0).then(|| unsafe { std::mem::transmute::<usize, NewInterpreterFromConfig>(address) })
}

/// (major, minor) of the running CPython, from `Py_GetVersion()` ("3.12.1 (main, ...").
pub(super) fn python_version() -> (u32, u32) {
    // SAFETY: Py_GetVersion returns a static NUL-terminated string; callable at any time.
    let text = unsafe { CStr::from_ptr(ffi::Py_GetVersion()) }.to_string_lossy();
    let mut parts = text.split(|c: char| !c.is_ascii_digit()).map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// Creates this thread's sub-interpreter; on success its first thread state is current
/// and its GIL held. Call on a thread with no Python thread state.
pub(super) fn create_interpreter() -> Result<*mut ffi::PyThreadState> {
    let create = new_interpreter_from_config()
        .ok_or_else(|| Error::new(ErrorKind::Unsupported, "Py_NewInterpreterFromConfig is missing"))?;
    let mut tstate: *mut ffi::PyThreadState = std::ptr::null_mut();
    let status = {
        let _one_at_a_time = CREATION_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: the main interpreter is running (the caller loaded a handler) and this
        // thread has no thread state, which CPython allows: the new interpreter copies
        // the main interpreter's immutable config. The config outlives the call.
        unsafe { create(&mut tstate, &REPLICA_CONFIG) }
    };
    // SAFETY: reading a status struct returned by value.
    if unsafe { ffi::PyStatus_Exception(status) } != 0 || tstate.is_null() {
        let reason = if status.err_msg.is_null() {
            "unknown error".to_owned()
        } else {
            // SAFETY: err_msg is a static NUL-terminated string owned by CPython.
            unsafe { CStr::from_ptr(status.err_msg) }.to_string_lossy().into_owned()
        };
        return Err(Error::internal(format!("cannot create an own-GIL sub-interpreter: {reason}")));
    }
    Ok(tstate)
}

/// Ends the replica's interpreter (joining any non-daemon threads its Python code
/// started). PRECONDITION: `tstate` is current on this thread with the GIL held, and no
/// object of the interpreter is still referenced from Rust.
pub(super) unsafe fn end_interpreter(tstate: *mut ffi::PyThreadState) {
    if !ffi::PyErr_Occurred().is_null() {
        ffi::PyErr_Clear();
    }
    ffi::Py_EndInterpreter(tstate);
}

/// CPython's message for an extension module without multi-interpreter support.
const NO_SUBINTERPRETER_SUPPORT: &str = "does not support loading in subinterpreters";

/// Makes `sys.path` the main interpreter's (in its order), followed by any entries of
/// the replica's own default path that the main one lacks; imports the module and binds
/// the entry point.
pub(super) unsafe fn bind_entry_point(spec: &ReplicaSpec) -> Result<Owned> {
    set_sys_path(&spec.sys_path).map_err(|e| {
        Error::new(ErrorKind::Internal, format!("setting sys.path in a sub-interpreter: {}", e.message()))
    })?;
    let module = &spec.module;
    let entry_point = &spec.entry_point;
    let module_c = CString::new(module.as_str())
        .map_err(|_| Error::invalid_argument("module name contains a NUL byte"))?;
    let Some(mut obj) = Owned::new(ffi::PyImport_ImportModule(module_c.as_ptr())) else {
        let context = format!("cannot import module {module:?} in an own-GIL sub-interpreter");
        return Err(match fetch() {
            Some(f) if f.text.contains(NO_SUBINTERPRETER_SUPPORT) => {
                let context = format!(
                    "{context} (it imports, directly or not, an extension module without \
                     per-interpreter support, such as numpy or torch; load the handler \
                     without replicas to run it in the shared interpreter)"
                );
                python_error(ErrorKind::Import, &context, f)
            }
            Some(f) => python_error(ErrorKind::Import, &context, f),
            None => {
                Error::new(ErrorKind::Import, format!("{context}: failed without a Python exception set"))
            }
        });
    };
    for part in entry_point.split('.') {
        let part_c =
            CString::new(part).map_err(|_| Error::invalid_argument("entry point contains a NUL byte"))?;
        obj = Owned::new(ffi::PyObject_GetAttrString(obj.as_ptr(), part_c.as_ptr())).ok_or_else(|| {
            fetch_error(ErrorKind::Attribute, &format!("module {module:?} has no attribute {entry_point:?}"))
        })?;
    }
    if ffi::PyCallable_Check(obj.as_ptr()) == 0 {
        let ty_name = attr_text(ffi::Py_TYPE(obj.as_ptr()).cast(), c"__name__").unwrap_or_default();
        return Err(Error::new(
            ErrorKind::Attribute,
            format!("{module}.{entry_point} is not callable (it is a {ty_name})"),
        ));
    }
    Ok(obj)
}

unsafe fn set_sys_path(main_path: &[String]) -> Result<()> {
    let fail = |what: &str| fetch_error(ErrorKind::Internal, what);
    let path = ffi::PySys_GetObject(c"path".as_ptr()); // borrowed
    if path.is_null() || ffi::PyList_Check(path) == 0 {
        return Err(Error::internal("sys.path is missing or not a list"));
    }
    let merged = Owned::new(ffi::PyList_New(0)).ok_or_else(|| fail("PyList_New"))?;
    for entry in main_path {
        let s = Owned::new(ffi::PyUnicode_FromStringAndSize(
            entry.as_ptr().cast::<c_char>(),
            entry.len() as ffi::Py_ssize_t,
        ))
        .ok_or_else(|| fail("decoding a path entry"))?;
        if ffi::PyList_Append(merged.as_ptr(), s.as_ptr()) != 0 {
            return Err(fail("PyList_Append"));
        }
    }
    let own_len = ffi::PyList_Size(path);
    for i in 0..own_len {
        let Some(entry) = Owned::new(ffi::compat::PyList_GetItemRef(path, i)) else {
            return Err(fail("reading sys.path"));
        };
        match ffi::PySequence_Contains(merged.as_ptr(), entry.as_ptr()) {
            0 => {
                if ffi::PyList_Append(merged.as_ptr(), entry.as_ptr()) != 0 {
                    return Err(fail("PyList_Append"));
                }
            }
            1 => {}
            _ => return Err(fail("comparing sys.path entries")),
        }
    }
    if ffi::PyList_SetSlice(path, 0, ffi::PY_SSIZE_T_MAX, merged.as_ptr()) != 0 {
        return Err(fail("assigning sys.path"));
    }
    Ok(())
}
