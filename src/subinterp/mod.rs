//! Replicas of a handler in own-GIL sub-interpreters (CPython 3.12+): each replica is a
//! dedicated OS thread that owns one isolated interpreter with its own GIL, imports the
//! handler's module there and executes the handler's batches, so one Python function
//! runs on as many cores as there are replicas.
//!
//! Only raw C-API calls run inside a replica: pyo3's safe API caches Python objects per
//! process (interned names, imported modules, its deferred reference pool) and must never
//! see a sub-interpreter's objects. Jobs reach a replica through
//! [`Job::commit_raw`](crate::Job::commit_raw) and
//! [`Job::complete_raw`](crate::Job::complete_raw); every Python object made here stays in
//! its replica.
//!
//! The interpreter-creation entry point is looked up at run time (`dlsym`), so this module
//! builds against any supported CPython and reports `Unsupported` below 3.12.
//!
//! This file: starting a handler's replicas, and stopping them all before the main
//! interpreter exits. `interpreter.rs`: one replica's interpreter (create, `sys.path`,
//! import, end). `replica.rs`: a replica thread's loop on the core's batch harness.
//!
//! May call: `crate::core` (the handler, the batch harness, raw helpers), `crate::runtime`.

mod interpreter;
mod replica;

use crate::core::HandlerCore;
use crate::error::{Error, ErrorKind, Result};
use crossbeam_channel::Sender;
use interpreter::{main_sys_path, new_interpreter_from_config, python_version, ReplicaSpec};
use replica::replica_main;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, Weak};
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
pub(super) static EXITING: AtomicBool = AtomicBool::new(false);

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

pub(super) fn interpreter_exiting_error() -> Error {
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

#[cfg(test)]
mod tests {
    //! The replica loop against a real handler core (the manager's wiring is tested in
    //! tests/rust/subinterp.rs). Needs a CPython 3.12+ build; on older ones only the
    //! version check is tested.
    use super::*;
    use crate::core::{HandlerCore, HandlerOptions, ItemOptions, Job, Pool};
    use crate::future::ItemFuture;
    use pyo3::ffi::{self, PyObject};
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
