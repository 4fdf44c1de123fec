//! Replicas of a handler in own-GIL sub-interpreters (CPython 3.12+): each replica is a
//! dedicated OS thread that owns one isolated interpreter with its own GIL, imports the
//! handler's module there and executes the handler's batches, so one Python function
//! runs on as many cores as there are replicas.
//!
//! Only raw C-API calls run inside a replica: pyo3's safe API caches Python objects per
//! process (interned names, imported modules, its deferred reference pool) and must never
//! see a sub-interpreter's objects. Jobs reach a replica through [`Job::commit_raw`] and
//! [`Job::complete_raw`]; every Python object made here stays in its replica.
//!
//! The interpreter-creation entry point is looked up at run time (`dlsym`), so this module
//! builds against any supported CPython and reports `Unsupported` below 3.12.

use crate::core::batch::Interpreter;
use crate::core::job::guarded;
use crate::core::raw::{self, attr_text, fetch, fetch_error, python_error, Owned};
use crate::core::{Entry, HandlerCore, JobSlot};
use crate::error::{Error, ErrorKind, Result};
use crate::python_err::report_stray_attached;
use crossbeam_channel::{Receiver, Sender};
use pyo3::ffi::{self, PyObject};
use pyo3::{Py, PyAny};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::thread::JoinHandle;

/// Most replicas one handler may have.
pub const MAX_REPLICAS: usize = 256;

/// Stack of a replica thread: what the main thread and Python's own threads get on Linux
/// (Rust's 2 MiB default is tight for deep C recursion in the interpreter). Reserved
/// address space, not committed memory.
const REPLICA_STACK_BYTES: usize = 8 << 20;

/// Checks that the running CPython can host own-GIL sub-interpreters (3.12+, with
/// `Py_NewInterpreterFromConfig` exported). Never blocks; callable without the GIL.
pub fn check_supported() -> Result<()> {
    let (major, minor) = python_version();
    if (major, minor) < (3, 12) {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!("own-GIL sub-interpreters need CPython 3.12+, this is {major}.{minor}"),
        ));
    }
    if new_interpreter_from_config().is_none() {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "own-GIL sub-interpreters need Py_NewInterpreterFromConfig, which this CPython \
                 {major}.{minor} does not export"
            ),
        ));
    }
    Ok(())
}

/// Starts `replicas` threads, each creating its own sub-interpreter, importing `module`
/// and binding `entry_point` (a dotted attribute path) there, then serving batches from
/// `source` until it returns `None`; the thread then ends its interpreter and exits.
///
/// Blocks until every replica has imported the module (the main interpreter's GIL is
/// released meanwhile if the caller holds it). If any replica fails to start, the ones
/// that did are torn down and joined, and the first failure is returned: kind
/// `InvalidArgument` (replica count), `Unsupported` (Python older than 3.12), `Import`,
/// `Attribute`, `ShutDown` (the interpreter is finalizing) or `Internal`. The
/// interpreter must be running.
///
/// The first call registers an `atexit` hook in the main interpreter that stops every
/// replica before the interpreter finalizes (see [`stop_replicas_at_exit`]).
pub(crate) fn spawn_replicas(
    module: &str,
    entry_point: &str,
    replicas: usize,
    source: Arc<HandlerCore>,
) -> Result<Vec<JoinHandle<()>>> {
    if replicas == 0 || replicas > MAX_REPLICAS {
        return Err(Error::invalid_argument(format!(
            "subinterpreters (replicas) must be in 1..={MAX_REPLICAS}, got {replicas}"
        )));
    }
    for (what, name) in [("module name", module), ("entry point", entry_point)] {
        if name.is_empty() || name.contains('\0') {
            return Err(Error::invalid_argument(format!(
                "invalid {what} {name:?}: empty or contains a NUL byte"
            )));
        }
    }
    check_supported()?;
    register_for_exit(&source)?;
    let spec = Arc::new(ReplicaSpec {
        module: module.to_owned(),
        entry_point: entry_point.to_owned(),
        sys_path: main_sys_path()?,
    });

    let (ready_tx, ready_rx) = crossbeam_channel::unbounded();
    let mut started: Vec<(JoinHandle<()>, Sender<()>)> = Vec::with_capacity(replicas);
    let mut failure: Option<Error> = None;
    for index in 0..replicas {
        let (go_tx, go_rx) = crossbeam_channel::bounded(1);
        let (spec, source, ready_tx) = (spec.clone(), source.clone(), ready_tx.clone());
        // Counted from before the thread starts, so the exit hook waits for a replica
        // that has not created its interpreter yet.
        let counted = ReplicaThread::count();
        let spawned = std::thread::Builder::new()
            .name(format!("pysched-sub-{index}"))
            .stack_size(REPLICA_STACK_BYTES)
            .spawn(move || {
                replica_main(&spec, &source, &ready_tx, &go_rx);
                drop(counted);
            });
        match spawned {
            Ok(handle) => started.push((handle, go_tx)),
            Err(e) => {
                failure = Some(Error::internal(format!("cannot start replica thread {index}: {e}")));
                break;
            }
        }
    }
    drop(ready_tx);

    // On 3.13+ a sub-interpreter's first import of an extension module runs its init
    // function under the main interpreter's GIL: never hold it while replicas start.
    let expected = started.len();
    let verdicts = crate::runtime::without_gil(move || {
        (0..expected).map_while(|_| ready_rx.recv().ok()).collect::<Vec<Result<()>>>()
    });
    if verdicts.len() != expected && failure.is_none() {
        failure = Some(Error::internal("a replica thread exited during start-up"));
    }
    if failure.is_none() {
        failure = verdicts.into_iter().find_map(Result::err);
    }
    match failure {
        None => Ok(started
            .into_iter()
            .map(|(handle, go)| {
                // The replica waits on this channel; it cannot have gone away.
                let _ = go.send(());
                handle
            })
            .collect()),
        Some(error) => {
            let handles: Vec<_> = started.into_iter().map(|(h, _go)| h).collect();
            // The go senders are dropped: every replica still waiting ends its interpreter.
            crate::runtime::without_gil(move || {
                for handle in handles {
                    let _ = handle.join();
                }
            });
            Err(error)
        }
    }
}

/// Set by the exit hook: batches claimed from then on fail with `ShutDown` instead of
/// running, and no replica starts.
static EXITING: AtomicBool = AtomicBool::new(false);

/// Whether the `atexit` hook has been registered in the main interpreter.
static EXIT_HOOK_REGISTERED: AtomicBool = AtomicBool::new(false);

/// Handlers served by replicas, for the exit hook; `None` once the hook has run (later
/// loads are refused). Lock order: never held while taking the GIL.
static REPLICA_HANDLERS: Mutex<Option<Vec<Weak<HandlerCore>>>> = Mutex::new(Some(Vec::new()));

/// Replica threads of the process that have not ended (their interpreter, if they
/// created one, is ended before they are uncounted); the exit hook waits for zero.
static REPLICA_THREADS: Mutex<usize> = Mutex::new(0);
static REPLICA_THREADS_CHANGED: Condvar = Condvar::new();

/// One count in `REPLICA_THREADS`, released on drop.
struct ReplicaThread(());

impl ReplicaThread {
    fn count() -> ReplicaThread {
        *REPLICA_THREADS.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        ReplicaThread(())
    }
}

impl Drop for ReplicaThread {
    fn drop(&mut self) {
        *REPLICA_THREADS.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
        REPLICA_THREADS_CHANGED.notify_all();
    }
}

fn interpreter_exiting_error() -> Error {
    Error::new(
        ErrorKind::ShutDown,
        "the Python interpreter is finalizing: no sub-interpreter replica may start",
    )
}

/// Records `handler` for the exit hook, registering the hook on first use. Fails with
/// `ShutDown` once the hook has run.
fn register_for_exit(handler: &Arc<HandlerCore>) -> Result<()> {
    if !EXIT_HOOK_REGISTERED.swap(true, SeqCst) {
        if let Err(e) = crate::runtime::attach(register_exit_hook) {
            EXIT_HOOK_REGISTERED.store(false, SeqCst);
            return Err(e);
        }
    }
    let mut handlers = REPLICA_HANDLERS.lock().unwrap_or_else(|p| p.into_inner());
    let handlers = handlers.as_mut().ok_or_else(interpreter_exiting_error)?;
    handlers.retain(|h| h.strong_count() > 0);
    handlers.push(Arc::downgrade(handler));
    Ok(())
}

/// `atexit.register(stop_replicas_at_exit)` in the main interpreter.
///
/// Why: CPython 3.12's `Py_FinalizeEx` aborts the process ("Fatal Python error:
/// PyInterpreterState_Delete: remaining subinterpreters") if any sub-interpreter is still
/// alive when it deletes the main interpreter; 3.13 ends leftover sub-interpreters
/// itself (gh-113433), from the finalizing thread, under a replica thread that may still
/// be using them. `atexit` callbacks run before either, with the interpreter intact and
/// before the runtime is marked as finalizing, so the replicas can still finish their
/// batches and end their own interpreters on their own threads.
fn register_exit_hook(py: pyo3::Python<'_>) -> Result<()> {
    use pyo3::types::{PyAnyMethods, PyCFunction};
    let context = "registering the sub-interpreter exit hook";
    let hook = PyCFunction::new_closure(
        py,
        Some(c"pyscheduler_stop_replicas"),
        Some(c"Ends pyscheduler's sub-interpreter replicas before the interpreter finalizes."),
        |args, _kwargs| {
            stop_replicas_at_exit(args.py());
        },
    )
    .map_err(|e| Error::from_pyerr_context(py, &e, ErrorKind::Internal, context))?;
    py.import("atexit")
        .and_then(|atexit| atexit.call_method1("register", (hook,)))
        .map_err(|e| Error::from_pyerr_context(py, &e, ErrorKind::Internal, context))?;
    Ok(())
}

/// The exit hook: from now on no replica starts and every claimed batch fails with
/// `ShutDown`; every replica handler is drained and closed (a batch already inside
/// Python finishes, like a non-daemon thread, and its items complete normally), and
/// every replica thread ends its interpreter. Returns when none is left. Runs in the
/// main interpreter with its GIL held, which it releases while it waits.
fn stop_replicas_at_exit(py: pyo3::Python<'_>) {
    EXITING.store(true, SeqCst);
    let handlers = REPLICA_HANDLERS.lock().unwrap_or_else(|p| p.into_inner()).take().unwrap_or_default();
    let handlers: Vec<Arc<HandlerCore>> = handlers.iter().filter_map(Weak::upgrade).collect();
    py.detach(move || {
        for handler in &handlers {
            handler.drain(true);
        }
        drop(handlers);
        let mut threads = REPLICA_THREADS.lock().unwrap_or_else(|p| p.into_inner());
        while *threads > 0 {
            threads = REPLICA_THREADS_CHANGED.wait(threads).unwrap_or_else(|p| p.into_inner());
        }
    });
}

/// Fails every item of a batch claimed after the exit hook ran.
fn shut_down_batch(source: &HandlerCore, batch: Vec<Entry>) {
    let items = batch.len();
    let error = Error::new(
        ErrorKind::ShutDown,
        format!("handler {} is shut down: the Python interpreter is exiting", source.name.as_str()),
    );
    for item in batch {
        let job = item.take_slot();
        source.fail_started(&item, job, error.clone());
    }
    source.finish_batch(items);
}

/// What every replica of one handler imports.
struct ReplicaSpec {
    module: String,
    entry_point: String,
    /// The main interpreter's `sys.path` when the handler was loaded.
    sys_path: Vec<String>,
}

/// The main interpreter's `sys.path` entries that are strings.
fn main_sys_path() -> Result<Vec<String>> {
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

/// Body of a replica thread. Reports start-up on `ready`, waits for `go` (dropped: the
/// load failed elsewhere), serves batches, and ends its interpreter on every path.
fn replica_main(spec: &ReplicaSpec, source: &HandlerCore, ready: &Sender<Result<()>>, go: &Receiver<()>) {
    if EXITING.load(SeqCst) {
        let _ = ready.send(Err(interpreter_exiting_error()));
        return;
    }
    let tstate = match create_interpreter() {
        Ok(t) => t,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    // SAFETY: create_interpreter left `tstate` current on this thread with the new
    // interpreter's GIL held; everything below runs in that state until the interpreter
    // is ended, and only raw C-API calls touch its objects.
    unsafe {
        match bind_entry_point(spec) {
            Err(e) => {
                end_interpreter(tstate);
                let _ = ready.send(Err(e));
            }
            Ok(function) => {
                let saved = ffi::PyEval_SaveThread();
                let _ = ready.send(Ok(()));
                let serve = go.recv().is_ok();
                ffi::PyEval_RestoreThread(saved);
                if serve {
                    serve_batches(function.as_ptr(), source);
                }
                drop(function);
                end_interpreter(tstate);
            }
        }
    }
}

/// CPython's `PyInterpreterConfig` (Include/cpython/pylifecycle.h), the same from 3.12
/// through 3.14.
#[repr(C)]
struct InterpreterConfig {
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

type NewInterpreterFromConfig = unsafe extern "C" fn(
    tstate_p: *mut *mut ffi::PyThreadState,
    config: *const InterpreterConfig,
) -> ffi::PyStatus;

/// `Py_NewInterpreterFromConfig` of the libpython this library runs on, if it has one.
fn new_interpreter_from_config() -> Option<NewInterpreterFromConfig> {
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
fn python_version() -> (u32, u32) {
    // SAFETY: Py_GetVersion returns a static NUL-terminated string; callable at any time.
    let text = unsafe { CStr::from_ptr(ffi::Py_GetVersion()) }.to_string_lossy();
    let mut parts = text.split(|c: char| !c.is_ascii_digit()).map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// Creates this thread's sub-interpreter; on success its first thread state is current
/// and its GIL held. Call on a thread with no Python thread state.
fn create_interpreter() -> Result<*mut ffi::PyThreadState> {
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
unsafe fn end_interpreter(tstate: *mut ffi::PyThreadState) {
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
unsafe fn bind_entry_point(spec: &ReplicaSpec) -> Result<Owned> {
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

/// Serves batches until the source is closed and empty. PRECONDITION: the replica's
/// thread state is current with its GIL held; it is again when this returns.
unsafe fn serve_batches(function: *mut PyObject, source: &HandlerCore) {
    let replica = Replica { function };
    // The batch that ran last: its items, and its detached C callback jobs, whose
    // finalizers run without the replica's GIL before its items count as finished.
    let mut finished: Option<(usize, Vec<JobSlot>)> = None;
    loop {
        // Waiting for work must not hold the replica's GIL: Python threads the handler
        // started keep running meanwhile.
        let saved = ffi::PyEval_SaveThread();
        if let Some((items, finalizers)) = finished.take() {
            source.as_executing_batch(|| drop(finalizers));
            source.finish_batch(items);
        }
        let batch = source.next_batch();
        ffi::PyEval_RestoreThread(saved);
        match batch {
            // Marked as the pool's workers are while they execute a batch: a drain called
            // from one of its callbacks must not wait for the batch it is part of.
            Some(batch) if EXITING.load(SeqCst) => {
                source.as_executing_batch(|| shut_down_batch(source, batch))
            }
            Some(batch) => {
                let items = batch.len();
                let finalizers = source.as_executing_batch(|| {
                    report_stray_attached(&source.name, "code run earlier on this replica's thread");
                    let finalizers = source.execute_on(&replica, batch, None);
                    // Destructors of the batch's results and of failed items' jobs ran last.
                    report_stray_attached(
                        &source.name,
                        "a destructor run as the batch's references were released",
                    );
                    finalizers
                });
                finished = Some((items, finalizers));
            }
            None => return,
        }
    }
}

/// A replica's interpreter, current on its thread with its GIL held: jobs run their raw
/// C-API callbacks (`Job::commit_raw`, `Job::complete_raw`), and no value leaves it.
struct Replica {
    /// The handler's function, imported in this interpreter (borrowed).
    function: *mut PyObject,
}

impl Interpreter for Replica {
    fn commit(&self, job: &mut JobSlot) -> Result<Owned> {
        if !job.supports_raw() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "this item's job cannot run in a sub-interpreter replica (only jobs with raw \
                 C-API callbacks, such as the C ABI's, can)",
            ));
        }
        match guarded("commit", || Ok(job.commit_raw())) {
            // SAFETY: commit_raw returns a new reference or NULL with an exception set;
            // the replica's GIL is held. As in the main interpreter, the item proceeds
            // with the object it returned; an error left set beside it is reported after.
            Ok(ptr) => unsafe { Owned::new(ptr) }
                .ok_or_else(|| unsafe { raw::fetch_error(ErrorKind::Commit, "commit callback failed") }),
            Err(panic) => {
                // SAFETY: the replica's GIL is held; whatever the panicking callback left
                // set must not reach the next item.
                unsafe { ffi::PyErr_Clear() };
                Err(panic)
            }
        }
    }

    fn complete(&self, job: &mut JobSlot, value: *mut PyObject) -> Result<()> {
        guarded("complete", || job.complete_raw(value))
    }

    fn function(&self) -> *mut PyObject {
        self.function
    }

    fn fetch_error(&self, kind: ErrorKind, context: &str) -> Error {
        // SAFETY: the replica's GIL is held (the harness's precondition).
        unsafe {
            match raw::fetch() {
                Some(fetched) if context.is_empty() => {
                    Error::from_python_parts(kind, fetched.python_type, &fetched.text, fetched.traceback)
                }
                Some(fetched) => raw::python_error(kind, context, fetched),
                None => Error::internal(format!("{context}: failed without a Python exception set")),
            }
        }
    }

    fn report_stray(&self, name: &str, what: &str) {
        // SAFETY: the replica's thread state is current with its GIL held.
        unsafe { report_stray_attached(name, what) };
    }

    fn keep(&self, _value: Owned) -> Option<Py<PyAny>> {
        // The replica's objects must not reach the main interpreter's futures.
        None
    }
}

#[cfg(test)]
mod tests {
    //! The replica loop against a real handler core (the manager's wiring is tested in
    //! tests/rust/subinterp.rs). Needs a CPython 3.12+ build; on older ones only the
    //! version check is tested.
    use super::*;
    use crate::core::{HandlerCore, HandlerOptions, ItemOptions, Job, Pool};
    use crate::future::ItemFuture;
    use pyo3::prelude::*;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    fn start() {
        crate::runtime::ensure_started(&Default::default()).unwrap();
        crate::runtime::add_path(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python")).unwrap();
    }

    fn core(replicas: usize, batch_size: usize) -> Arc<HandlerCore> {
        let function = crate::runtime::attach(|py| py.None());
        let options = HandlerOptions { batch_size, ..Default::default() };
        HandlerCore::new("t".into(), function, options, Pool::new(1).unwrap(), replicas, None)
    }

    /// Commits `value` as an int; records the int it gets back.
    struct RawJob {
        value: i64,
        got: Arc<Mutex<Vec<(i64, i64)>>>,
        finished: Arc<AtomicUsize>,
    }

    impl Job for RawJob {
        fn commit(&mut self, _py: Python<'_>) -> Result<Py<PyAny>> {
            Err(Error::internal("not used by replicas"))
        }
        fn complete(&mut self, _py: Python<'_>, _r: &Bound<'_, PyAny>) -> Result<()> {
            Err(Error::internal("not used by replicas"))
        }
        fn fail(&mut self, _error: &Error) {}
        fn supports_raw(&self) -> bool {
            true
        }
        fn commit_raw(&mut self) -> *mut PyObject {
            // SAFETY: called in the replica with its GIL held.
            unsafe { ffi::PyLong_FromLongLong(self.value) }
        }
        fn complete_raw(&mut self, result: *mut PyObject) -> Result<()> {
            // SAFETY: as above; result is a borrowed object of the replica.
            let v = unsafe { ffi::PyLong_AsLongLong(result) };
            self.got.lock().unwrap().push((self.value, v));
            Ok(())
        }
    }

    impl Drop for RawJob {
        fn drop(&mut self) {
            self.finished.fetch_add(1, SeqCst);
        }
    }

    #[test]
    fn replicas_execute_every_item_once() {
        start();
        if check_supported().is_err() {
            return;
        }
        let core = core(3, 4);
        let threads = spawn_replicas("subinterp_testmod", "double", 3, core.clone()).unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let finished = Arc::new(AtomicUsize::new(0));
        let futures: Vec<ItemFuture> = (0..500)
            .map(|value| {
                let job = RawJob { value, got: got.clone(), finished: finished.clone() };
                ItemFuture::new(
                    core.enqueue(crate::core::JobSlot::Boxed(Box::new(job)), ItemOptions::default()).0,
                )
            })
            .collect();
        for f in futures {
            f.wait().unwrap();
        }
        core.drain(true);
        for t in threads {
            t.join().unwrap();
        }
        let mut got = got.lock().unwrap().clone();
        got.sort();
        assert_eq!(got, (0..500).map(|v| (v, 2 * v)).collect::<Vec<_>>());
        assert_eq!(finished.load(SeqCst), 500);
        let s = core.stats();
        assert_eq!((s.completed, s.failed), (500, 0));
    }

    #[test]
    fn start_up_failure_tears_down_started_replicas() {
        start();
        if check_supported().is_err() {
            return;
        }
        let core = core(2, 1);
        let e = spawn_replicas("subinterp_testmod", "no_such_function", 2, core).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Attribute, "{e}");
        assert!(e.message().contains("no_such_function"), "{e}");
    }

    #[test]
    fn version_is_read() {
        let (major, minor) = python_version();
        assert_eq!(major, 3);
        assert!(minor >= 9);
        if minor < 12 {
            let e = check_supported().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Unsupported);
            assert!(e.message().contains(&format!("this is 3.{minor}")), "{e}");
        }
    }
}
