//! The C ABI called from Rust, as a C caller would call it: NULL for every pointer,
//! invalid UTF-8, empty and malformed names, out-of-range options, and the callback
//! contract (complete and drop exactly once, on every path). A panic hook counts panics:
//! the panic boundary turns them into PYSCHED_INTERNAL, which would otherwise hide them,
//! so every test also asserts that nothing panicked.

use pyo3::ffi::PyObject;
use pyscheduler::ffi::error::*;
use pyscheduler::ffi::future::*;
use pyscheduler::ffi::handler::*;
use pyscheduler::ffi::manager::*;
use pyscheduler::ffi::tensor::*;
use pyscheduler::ffi::{
    pysched_debug_arc_count, pysched_debug_shared_state_address, pysched_status, pysched_status_name,
    pysched_version,
};
use pyscheduler::{HandlerStats, LatencySummary};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once, OnceLock};
use std::time::{Duration, Instant};

use pysched_status::*;

static PANICS: AtomicUsize = AtomicUsize::new(0);

/// Installs the panic counter once; returns the count so far.
fn panics() -> usize {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            default(info);
        }));
    });
    PANICS.load(Ordering::SeqCst)
}

fn assert_no_panic(before: usize) {
    assert_eq!(panics(), before, "a panic happened inside the library (see stderr)");
}

struct Manager(*mut pysched_manager);
// SAFETY: the manager handle is documented thread-safe.
unsafe impl Send for Manager {}
unsafe impl Sync for Manager {}

fn manager() -> *const pysched_manager {
    static M: OnceLock<Manager> = OnceLock::new();
    M.get_or_init(|| {
        let mut m = null_mut();
        let mut err = null_mut();
        assert_eq!(pysched_manager_new(null(), &mut m, &mut err), PYSCHED_OK);
        let dir = CString::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python")).unwrap();
        assert_eq!(pysched_manager_add_path(m, dir.as_ptr(), &mut err), PYSCHED_OK);
        Manager(m)
    })
    .0
}

fn c(s: &str) -> CString {
    CString::new(s).unwrap()
}

/// Takes an error handed out with `status`, checks kind and message, frees it, and
/// returns the message.
fn take_error(status: pysched_status, err: *mut pysched_error) -> String {
    assert!(!err.is_null(), "{status:?} without an error object");
    assert_eq!(pysched_error_kind(err), status);
    // SAFETY: accessors return valid NUL-terminated strings while `err` lives.
    let msg = unsafe { CStr::from_ptr(pysched_error_message(err)) }.to_string_lossy().into_owned();
    assert!(!msg.is_empty(), "{status:?}: empty message");
    pysched_error_free(err);
    msg
}

/// Runs a call taking `out_error` and expects `want`; returns the message.
fn expect(want: pysched_status, call: impl FnOnce(*mut *mut pysched_error) -> pysched_status) -> String {
    let mut err = null_mut();
    let got = call(&mut err);
    if got == PYSCHED_OK {
        assert_eq!(want, PYSCHED_OK);
        assert!(err.is_null(), "OK with an error object");
        return String::new();
    }
    let msg = take_error(got, err);
    assert_eq!(got, want, "{msg}");
    msg
}

fn load(module: &str, entry: &str, options: &pysched_handler_options) -> *mut pysched_handler {
    let mut h = null_mut();
    let (module, entry) = (c(module), c(entry));
    expect(PYSCHED_OK, |e| {
        pysched_manager_load(manager(), module.as_ptr(), entry.as_ptr(), options, &mut h, e)
    });
    h
}

/// A distinct address no library call writes: out-parameters are preset to it.
fn sentinel<T>() -> *mut T {
    static S: u8 = 0;
    (&S as *const u8).cast_mut().cast()
}

#[test]
fn status_names_and_version() {
    let before = panics();
    let v = unsafe { CStr::from_ptr(pysched_version()) }.to_str().unwrap();
    assert_eq!(v, env!("CARGO_PKG_VERSION"));
    let mut names = std::collections::HashSet::new();
    for s in 0..=14 {
        let n = unsafe { CStr::from_ptr(pysched_status_name(s)) }.to_str().unwrap();
        assert_ne!(n, "unknown");
        assert!(names.insert(n), "duplicate name {n}");
    }
    for s in [-1, 15, i32::MIN, i32::MAX] {
        assert_eq!(unsafe { CStr::from_ptr(pysched_status_name(s)) }.to_str().unwrap(), "unknown");
    }
    assert_no_panic(before);
}

#[test]
fn null_arguments_everywhere() {
    let before = panics();
    let m = manager();
    let h = load("pysched_testmod", "identity", &pysched_handler_options_default());

    // Errors.
    assert_eq!(pysched_error_kind(null()), PYSCHED_INVALID_ARGUMENT);
    for s in
        [pysched_error_message(null()), pysched_error_python_type(null()), pysched_error_traceback(null())]
    {
        assert!(!s.is_null());
        assert_eq!(unsafe { CStr::from_ptr(s) }.to_bytes(), b"");
    }
    assert!(pysched_error_clone(null()).is_null());
    pysched_error_free(null_mut());

    // Manager.
    expect(PYSCHED_INVALID_ARGUMENT, |e| pysched_manager_new(null(), null_mut(), e));
    assert_eq!(pysched_manager_new(null(), null_mut(), null_mut()), PYSCHED_INVALID_ARGUMENT);
    let dir = c("/tmp");
    expect(PYSCHED_INVALID_ARGUMENT, |e| pysched_manager_add_path(null(), dir.as_ptr(), e));
    expect(PYSCHED_INVALID_ARGUMENT, |e| pysched_manager_add_path(m, null(), e));
    let (module, entry) = (c("pysched_testmod"), c("identity"));
    let mut out_h: *mut pysched_handler = sentinel();
    for (mm, mo, en, oh) in [
        (null(), module.as_ptr(), entry.as_ptr(), &mut out_h as *mut _),
        (m, null(), entry.as_ptr(), &mut out_h as *mut _),
        (m, module.as_ptr(), null(), &mut out_h as *mut _),
        (m, module.as_ptr(), entry.as_ptr(), null_mut()),
    ] {
        expect(PYSCHED_INVALID_ARGUMENT, |e| pysched_manager_load(mm, mo, en, null(), oh, e));
    }
    assert_eq!(out_h, sentinel());
    assert_eq!(pysched_manager_worker_threads(null()), 0);
    assert!(!pysched_manager_adopted(null()));
    pysched_manager_free(null_mut());

    // Handler.
    let mut stats: HandlerStats = unsafe { std::mem::zeroed() };
    let mut latency = LatencySummary::default();
    expect(PYSCHED_INVALID_ARGUMENT, |e| pysched_handler_stats(null(), &mut stats, e));
    expect(PYSCHED_INVALID_ARGUMENT, |e| pysched_handler_stats(h, null_mut(), e));
    expect(PYSCHED_INVALID_ARGUMENT, |e| pysched_handler_latency(null(), &mut latency, e));
    expect(PYSCHED_INVALID_ARGUMENT, |e| pysched_handler_latency(h, null_mut(), e));
    expect(PYSCHED_INVALID_ARGUMENT, |e| pysched_handler_drain(null(), e));
    expect(PYSCHED_INVALID_ARGUMENT, |e| pysched_handler_queue(null(), null(), null_mut(), e));
    expect(PYSCHED_INVALID_ARGUMENT, |e| pysched_handler_queue(h, null(), null_mut(), e));
    let mut out_obj: *mut PyObject = sentinel();
    expect(PYSCHED_INVALID_ARGUMENT, |e| {
        pysched_handler_call(null(), null_mut(), null_mut(), &mut out_obj, e)
    });
    expect(PYSCHED_INVALID_ARGUMENT, |e| pysched_handler_call(h, null_mut(), null_mut(), &mut out_obj, e));
    expect(PYSCHED_INVALID_ARGUMENT, |e| pysched_handler_with_function(null(), None, null_mut(), e));
    expect(PYSCHED_INVALID_ARGUMENT, |e| pysched_handler_with_function(h, None, null_mut(), e));
    assert_eq!(out_obj, sentinel());
    assert_eq!(pysched_handler_metrics_text(null(), null_mut(), 0), 0);
    assert!(pysched_handler_metrics_text(h, null_mut(), 0) > 0);
    assert_eq!(unsafe { CStr::from_ptr(pysched_handler_name(null())) }.to_bytes(), b"");
    pysched_handler_free(null_mut());

    // Future.
    assert!(!pysched_future_is_ready(null()));
    assert!(!pysched_future_cancel(null()));
    expect(PYSCHED_INVALID_ARGUMENT, |e| pysched_future_wait(null(), e));
    expect(PYSCHED_INVALID_ARGUMENT, |e| pysched_future_wait_for(null(), u64::MAX, e));
    expect(PYSCHED_INVALID_ARGUMENT, |e| pysched_future_take(null(), &mut out_obj, e));
    expect(PYSCHED_INVALID_ARGUMENT, |e| pysched_future_take(null(), null_mut(), e));
    pysched_future_free(null_mut());

    // CUDA, tensors, stagers (arguments are checked before CUDA is touched).
    expect(PYSCHED_INVALID_ARGUMENT, |e| pysched_cuda_device_count(null_mut(), e));
    let mut bytes = 0usize;
    expect(PYSCHED_INVALID_ARGUMENT, |e| pysched_cuda_mem_info(-1, null_mut(), &mut bytes, e));
    expect(PYSCHED_INVALID_ARGUMENT, |e| pysched_cuda_mem_info(-1, &mut bytes, null_mut(), e));
    let mut t: *mut pysched_tensor = sentinel();
    expect(PYSCHED_INVALID_ARGUMENT, |e| pysched_tensor_new(null(), 0, null(), &mut t, e));
    expect(PYSCHED_INVALID_ARGUMENT, |e| pysched_tensor_synchronize(null(), e));
    expect(PYSCHED_INVALID_ARGUMENT, |e| pysched_tensor_get_info(null(), null_mut(), e));
    expect(PYSCHED_INVALID_ARGUMENT, |e| pysched_tensor_to_dlpack(null(), null_mut(), e));
    expect(PYSCHED_INVALID_ARGUMENT, |e| pysched_tensor_to_dlpack_versioned(null(), null_mut(), e));
    expect(PYSCHED_INVALID_ARGUMENT, |e| pysched_tensor_to_pyobject(null(), &mut out_obj, e));
    expect(PYSCHED_INVALID_ARGUMENT, |e| pysched_tensor_to_capsule(null(), &mut out_obj, e));
    expect(PYSCHED_INVALID_ARGUMENT, |e| pysched_dlpack_to_capsule(null_mut(), &mut out_obj, e));
    pysched_tensor_free(null_mut());
    expect(PYSCHED_INVALID_ARGUMENT, |e| pysched_stager_new(-1, 0, null_mut(), e));
    expect(PYSCHED_INVALID_ARGUMENT, |e| pysched_stager_upload(null(), null(), 0, null(), &mut t, e));
    expect(PYSCHED_INVALID_ARGUMENT, |e| pysched_stager_synchronize(null(), e));
    assert_eq!(pysched_stager_stream(null()), 0);
    pysched_stager_free(null_mut());
    assert_eq!(t, sentinel());

    pysched_handler_free(h);
    assert_no_panic(before);
}

#[test]
fn names_are_validated() {
    let before = panics();
    let m = manager();
    let load_raw = |module: &[u8], entry: &[u8]| -> (pysched_status, String) {
        let (module, entry) = (CString::new(module).unwrap(), CString::new(entry).unwrap());
        let mut h: *mut pysched_handler = sentinel();
        let mut err = null_mut();
        let st = pysched_manager_load(m, module.as_ptr(), entry.as_ptr(), null(), &mut h, &mut err);
        if st == PYSCHED_OK {
            pysched_handler_free(h);
            return (st, String::new());
        }
        assert_eq!(h, sentinel(), "out_handler written on failure");
        (st, take_error(st, err))
    };
    let bad_modules: &[&[u8]] = &[
        b"",
        b".",
        b"..",
        b"a..b",
        b".a",
        b"a.",
        b"1a",
        b"a-b",
        b"a b",
        b"a/b",
        b"\xff",
        b"ok\xc3\x28",
        b"\xed\xa0\x80", // an encoded surrogate is not UTF-8
        b"os;print(1)",
    ];
    for module in bad_modules {
        let (st, msg) = load_raw(module, b"identity");
        assert_eq!(st, PYSCHED_INVALID_ARGUMENT, "{module:?}: {msg}");
    }
    for entry in [&b""[..], b".", b"Model..predict", b"x()", b"\xfe"] {
        let (st, msg) = load_raw(b"pysched_testmod", entry);
        assert_eq!(st, PYSCHED_INVALID_ARGUMENT, "{entry:?}: {msg}");
    }
    let (st, msg) = load_raw(b"pysched_no_such_module", b"f");
    assert_eq!(st, PYSCHED_IMPORT);
    assert!(msg.contains("No module named"), "{msg}");
    let (st, _) = load_raw(b"pysched_testmod", b"no_such_attribute");
    assert_eq!(st, PYSCHED_ATTRIBUTE);
    let (st, _) = load_raw(b"pysched_testmod", b"not_callable");
    assert_eq!(st, PYSCHED_ATTRIBUTE);

    // Paths.
    for dir in [&b""[..], b"\xff\xfe"] {
        let dir = CString::new(dir).unwrap();
        expect(PYSCHED_INVALID_ARGUMENT, |e| pysched_manager_add_path(m, dir.as_ptr(), e));
    }
    // Manager options.
    let bad_exe = CString::new(&b"\xff/python"[..]).unwrap();
    for options in [
        pysched_manager_options {
            python_executable: bad_exe.as_ptr(),
            add_cwd_to_path: false,
            worker_threads: 0,
        },
        pysched_manager_options {
            python_executable: null(),
            add_cwd_to_path: false,
            worker_threads: u32::MAX,
        },
    ] {
        let mut out: *mut pysched_manager = sentinel();
        expect(PYSCHED_INVALID_ARGUMENT, |e| pysched_manager_new(&options, &mut out, e));
        assert_eq!(out, sentinel());
    }
    assert_no_panic(before);
}

#[test]
fn options_are_validated() {
    let before = panics();
    let m = manager();
    let (module, entry) = (c("pysched_testmod"), c("identity"));
    let bad_name = CString::new(&b"\xc0name"[..]).unwrap();
    let d = pysched_handler_options_default;
    let bad = [
        pysched_handler_options { batch_size: 0, ..d() },
        pysched_handler_options { batch_size: 1_000_001, ..d() },
        pysched_handler_options { batch_size: u32::MAX, ..d() },
        pysched_handler_options { prefetch_depth: 0, ..d() },
        pysched_handler_options { prefetch_depth: 4097, ..d() },
        pysched_handler_options { max_batch_delay_us: 60_000_001, ..d() },
        pysched_handler_options { max_batch_delay_us: u64::MAX, ..d() },
        pysched_handler_options { full_policy: 2, ..d() },
        pysched_handler_options { full_policy: u32::MAX, ..d() },
        pysched_handler_options { concurrency: 0, ..d() },
        pysched_handler_options { concurrency: 1025, ..d() },
        pysched_handler_options { name: bad_name.as_ptr(), ..d() },
    ];
    for o in &bad {
        let mut h: *mut pysched_handler = sentinel();
        let msg = expect(PYSCHED_INVALID_ARGUMENT, |e| {
            pysched_manager_load(m, module.as_ptr(), entry.as_ptr(), o, &mut h, e)
        });
        assert_eq!(h, sentinel(), "{msg}");
    }
    // The extremes that are allowed.
    let name = c("edge");
    let ok = pysched_handler_options {
        batch_size: 1_000_000,
        prefetch_depth: 4096,
        max_batch_delay_us: 60_000_000,
        max_queue: u64::MAX,
        full_policy: 1,
        block_timeout_us: u64::MAX,
        name: name.as_ptr(),
        concurrency: 1024,
        ..d()
    };
    let h = load("pysched_testmod", "identity", &ok);
    assert_eq!(unsafe { CStr::from_ptr(pysched_handler_name(h)) }.to_str().unwrap(), "edge");
    pysched_handler_free(h);
    assert_no_panic(before);
}

/// What the callbacks of one item saw.
#[derive(Default)]
struct Seen {
    commits: AtomicUsize,
    completes: AtomicUsize,
    drops: AtomicUsize,
    kind: Mutex<Option<pysched_status>>,
    value: Mutex<Option<i64>>,
    drop_before_complete: AtomicUsize,
    fail_commit: bool,
}

unsafe extern "C" fn commit(user_data: *mut c_void) -> *mut PyObject {
    // SAFETY: user_data is a &Seen that outlives the item (the tests wait for drop).
    let seen = unsafe { &*(user_data as *const Seen) };
    seen.commits.fetch_add(1, Ordering::SeqCst);
    // SAFETY: commit runs with the GIL held.
    unsafe {
        if seen.fail_commit {
            pyo3::ffi::PyErr_SetString(pyo3::ffi::PyExc_ValueError, c"refused by commit".as_ptr());
            return null_mut();
        }
        pyo3::ffi::PyLong_FromLong(7)
    }
}

unsafe extern "C" fn complete(
    user_data: *mut c_void,
    result: *mut PyObject,
    error: *const pysched_error,
) -> c_int {
    // SAFETY: as in `commit`.
    let seen = unsafe { &*(user_data as *const Seen) };
    seen.completes.fetch_add(1, Ordering::SeqCst);
    if result.is_null() {
        *seen.kind.lock().unwrap() = Some(pysched_error_kind(error));
    } else {
        // SAFETY: on success the GIL is held and result is a borrowed object.
        *seen.value.lock().unwrap() = Some(unsafe { pyo3::ffi::PyLong_AsLong(result) } as i64);
    }
    0
}

unsafe extern "C" fn drop_fn(user_data: *mut c_void) {
    // SAFETY: as in `commit`.
    let seen = unsafe { &*(user_data as *const Seen) };
    if seen.completes.load(Ordering::SeqCst) == 0 {
        seen.drop_before_complete.fetch_add(1, Ordering::SeqCst);
    }
    seen.drops.fetch_add(1, Ordering::SeqCst);
}

fn item(seen: &Seen) -> pysched_item {
    pysched_item {
        user_data: seen as *const Seen as *mut c_void,
        commit: Some(commit),
        prepare: None,
        complete: Some(complete),
        drop: Some(drop_fn),
        timeout_us: 0,
    }
}

fn wait_dropped(seen: &Seen) {
    let give_up = Instant::now() + Duration::from_secs(10);
    while seen.drops.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < give_up, "drop never called");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn assert_once(seen: &Seen) {
    assert_eq!(seen.completes.load(Ordering::SeqCst), 1);
    assert_eq!(seen.drops.load(Ordering::SeqCst), 1);
    assert_eq!(seen.drop_before_complete.load(Ordering::SeqCst), 0);
}

#[test]
fn callbacks_run_exactly_once_on_every_path() {
    let before = panics();
    // NULL handler: complete (with the error) and drop before queue returns.
    let seen = Seen::default();
    let mut f: *mut pysched_future = sentinel();
    expect(PYSCHED_INVALID_ARGUMENT, |e| pysched_handler_queue(null(), &item(&seen), &mut f, e));
    assert_once(&seen);
    assert_eq!(*seen.kind.lock().unwrap(), Some(PYSCHED_INVALID_ARGUMENT));
    assert_eq!(f, sentinel());

    // NULL commit.
    let h = load("pysched_testmod", "identity", &pysched_handler_options_default());
    let seen = Seen::default();
    let mut it = item(&seen);
    it.commit = None;
    expect(PYSCHED_INVALID_ARGUMENT, |e| pysched_handler_queue(h, &it, null_mut(), e));
    assert_once(&seen);

    // Success, fire and forget.
    let seen = Seen::default();
    expect(PYSCHED_OK, |e| pysched_handler_queue(h, &item(&seen), null_mut(), e));
    expect(PYSCHED_OK, |e| pysched_handler_drain(h, e));
    wait_dropped(&seen);
    assert_once(&seen);
    assert_eq!(*seen.value.lock().unwrap(), Some(7));
    assert_eq!(seen.commits.load(Ordering::SeqCst), 1);

    // A failing commit (no future: a fast failure must not be mistaken for a refusal
    // here either; see tests/c/test_queue_edge.c).
    let seen = Seen { fail_commit: true, ..Default::default() };
    let st = {
        let mut err = null_mut();
        let st = pysched_handler_queue(h, &item(&seen), null_mut(), &mut err);
        if !err.is_null() {
            pysched_error_free(err);
        }
        st
    };
    expect(PYSCHED_OK, |e| pysched_handler_drain(h, e));
    wait_dropped(&seen);
    assert_once(&seen);
    assert_eq!(*seen.kind.lock().unwrap(), Some(PYSCHED_COMMIT));
    assert!(st == PYSCHED_OK || st == PYSCHED_COMMIT);
    pysched_handler_free(h);

    // Queue full (reject) and cancel, behind a running slow item.
    let o = pysched_handler_options { max_queue: 1, full_policy: 1, ..pysched_handler_options_default() };
    let slow = load("pysched_ctest", "sleep_or_double", &o);
    struct Slow(AtomicUsize);
    unsafe extern "C" fn slow_commit(user_data: *mut c_void) -> *mut PyObject {
        // SAFETY: a &Slow that outlives the item.
        unsafe { &*(user_data as *const Slow) }.0.fetch_add(1, Ordering::SeqCst);
        // SAFETY: GIL held in commit.
        unsafe { pyo3::ffi::PyLong_FromLong(-300) }
    }
    let blocker = Slow(AtomicUsize::new(0));
    let bi = pysched_item {
        user_data: &blocker as *const Slow as *mut c_void,
        commit: Some(slow_commit),
        prepare: None,
        complete: None,
        drop: None,
        timeout_us: 0,
    };
    let mut bf = null_mut();
    expect(PYSCHED_OK, |e| pysched_handler_queue(slow, &bi, &mut bf, e));
    while blocker.0.load(Ordering::SeqCst) == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let queued = Seen::default();
    let mut qf = null_mut();
    expect(PYSCHED_OK, |e| pysched_handler_queue(slow, &item(&queued), &mut qf, e));
    let refused = Seen::default();
    let mut rf: *mut pysched_future = sentinel();
    expect(PYSCHED_QUEUE_FULL, |e| pysched_handler_queue(slow, &item(&refused), &mut rf, e));
    assert_eq!(rf, sentinel());
    assert_once(&refused);
    assert_eq!(*refused.kind.lock().unwrap(), Some(PYSCHED_QUEUE_FULL));
    assert!(pysched_future_cancel(qf));
    assert_once(&queued);
    assert_eq!(*queued.kind.lock().unwrap(), Some(PYSCHED_CANCELLED));
    let mut obj = null_mut();
    expect(PYSCHED_CANCELLED, |e| pysched_future_take(qf, &mut obj, e));
    expect(PYSCHED_OK, |e| pysched_future_wait(bf, e));
    expect(PYSCHED_OK, |e| pysched_future_take(bf, &mut obj, e));
    pyscheduler::runtime::attach(|_py| unsafe {
        assert_eq!(pyo3::ffi::PyLong_AsLong(obj), 300);
        pyo3::ffi::Py_DECREF(obj);
    });
    pysched_future_free(qf);
    pysched_future_free(bf);
    let mut stats: HandlerStats = unsafe { std::mem::zeroed() };
    expect(PYSCHED_OK, |e| pysched_handler_stats(slow, &mut stats, e));
    assert_eq!(stats.total_enqueued, 3);
    assert_eq!((stats.completed, stats.cancelled, stats.rejected), (1, 1, 1));
    pysched_handler_free(slow);
    assert_no_panic(before);
}

#[test]
fn errors_carry_python_details_and_survive_cloning() {
    let before = panics();
    let h = load("pysched_testmod", "raise_error", &pysched_handler_options_default());
    let (args, mut out) = pyscheduler::runtime::attach(|_py| unsafe {
        (pyo3::ffi::Py_BuildValue(c"(s)".as_ptr(), c"from rust".as_ptr()), null_mut())
    });
    let mut err = null_mut();
    let st = pysched_handler_call(h, args, null_mut(), &mut out, &mut err);
    assert_eq!(st, PYSCHED_PYTHON_EXCEPTION);
    assert!(out.is_null());
    let copy = pysched_error_clone(err);
    pysched_error_free(err);
    let text = |p: *const c_char| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
    assert_eq!(pysched_error_kind(copy), PYSCHED_PYTHON_EXCEPTION);
    assert_eq!(text(pysched_error_python_type(copy)), "RuntimeError");
    assert!(text(pysched_error_message(copy)).contains("RuntimeError: from rust"));
    let tb = text(pysched_error_traceback(copy));
    assert!(tb.contains("raise_error") && tb.contains("pysched_testmod.py"), "{tb}");
    // Readable from another thread without the GIL.
    let copy_addr = copy as usize;
    std::thread::spawn(move || {
        let e = copy_addr as *const pysched_error;
        assert_eq!(pysched_error_kind(e), PYSCHED_PYTHON_EXCEPTION);
        assert!(unsafe { CStr::from_ptr(pysched_error_message(e)) }.to_bytes().len() > 10);
    })
    .join()
    .unwrap();
    pysched_error_free(copy);
    pyscheduler::runtime::attach(|_py| unsafe { pyo3::ffi::Py_DECREF(args) });
    pysched_handler_free(h);
    assert_no_panic(before);
}

const COUNTS_ALONE_ENV: &str = "PYSCHED_FFI_COUNTS_ALONE";

/// The counters are process-wide and the other tests of this file move them meanwhile,
/// so the exact counts are checked in a child process that runs this test alone.
#[test]
fn debug_counters_follow_handles() {
    if std::env::var_os(COUNTS_ALONE_ENV).is_none() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["debug_counters_follow_handles", "--exact", "--test-threads=1", "--nocapture"])
            .env(COUNTS_ALONE_ENV, "1")
            .output()
            .unwrap();
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "the test alone failed:\n{text}");
        assert!(text.contains("1 passed"), "the test did not run alone:\n{text}");
        return;
    }
    let before = panics();
    assert_eq!(pysched_debug_shared_state_address(), 0);
    assert_eq!(pysched_debug_arc_count(), 0);
    let mut m = null_mut();
    expect(PYSCHED_OK, |e| pysched_manager_new(null(), &mut m, e));
    let state = pysched_debug_shared_state_address();
    assert_ne!(state, 0);
    assert_eq!(pysched_debug_arc_count(), 1);
    let dir = c(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python"));
    expect(PYSCHED_OK, |e| pysched_manager_add_path(m, dir.as_ptr(), e));
    let (module, entry) = (c("pysched_testmod"), c("identity"));
    let options = pysched_handler_options_default();
    let mut h = null_mut();
    expect(PYSCHED_OK, |e| pysched_manager_load(m, module.as_ptr(), entry.as_ptr(), &options, &mut h, e));
    assert_eq!(pysched_debug_arc_count(), 2);
    assert!(pysched_manager_worker_threads(m) >= 1);
    pysched_handler_free(h);
    assert_eq!(pysched_debug_arc_count(), 1, "freeing the handler gives its count back");
    assert_eq!(pysched_debug_shared_state_address(), state);
    pysched_manager_free(m);
    assert_eq!(pysched_debug_arc_count(), 0, "freeing the last handle gives the state back");
    assert_eq!(pysched_debug_shared_state_address(), 0);
    assert_no_panic(before);
}
