//! Quick probe of the core's per-item cost through the C ABI (what the C++ wrapper
//! does), against the inline floor measured in the same run. The full benchmark table
//! is the C++ program in benches/; this one isolates the Rust core.
//!
//! cargo run --release --example probe

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyAnyMethods, PyList, PyListMethods};
use pyscheduler::ffi::handler::*;
use pyscheduler::ffi::manager::*;
use pyscheduler::ffi::pysched_status;
use std::ffi::{c_int, c_void, CString};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

static DONE: AtomicUsize = AtomicUsize::new(0);

unsafe extern "C" fn commit(user_data: *mut c_void) -> *mut ffi::PyObject {
    ffi::PyLong_FromLong(user_data as usize as _)
}
unsafe extern "C" fn complete(
    _u: *mut c_void,
    result: *mut ffi::PyObject,
    _e: *const pyscheduler::ffi::pysched_error,
) -> c_int {
    if !result.is_null() {
        std::hint::black_box(ffi::PyLong_AsLong(result));
    }
    DONE.fetch_add(1, Ordering::Relaxed);
    0
}

fn busy_100us() {
    let t = Instant::now();
    let mut x = 0u64;
    while t.elapsed().as_micros() < 100 {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let items: usize = std::env::args().nth(1).map(|s| s.parse().unwrap()).unwrap_or(200_000);
    let mut manager = std::ptr::null_mut();
    assert_eq!(
        pysched_manager_new(std::ptr::null(), &mut manager, std::ptr::null_mut()),
        pysched_status::PYSCHED_OK
    );
    let dir = CString::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python")).unwrap();
    pysched_manager_add_path(manager, dir.as_ptr(), std::ptr::null_mut());
    for batch in [256u32, 32, 1] {
        let mut opts = pysched_handler_options_default();
        opts.batch_size = batch;
        let mut handler = std::ptr::null_mut();
        let (m, e) = (CString::new("pysched_testmod").unwrap(), CString::new("identity").unwrap());
        assert_eq!(
            pysched_manager_load(manager, m.as_ptr(), e.as_ptr(), &opts, &mut handler, std::ptr::null_mut()),
            pysched_status::PYSCHED_OK
        );
        let n = if batch == 1 { items / 4 } else { items };
        let mut runs = Vec::new();
        for _ in 0..5 {
            DONE.store(0, Ordering::Relaxed);
            let t = Instant::now();
            for i in 0..n {
                let item = pysched_item {
                    user_data: i as *mut c_void,
                    commit: Some(commit),
                    prepare: None,
                    complete: Some(complete),
                    drop: None,
                    timeout_us: 0,
                };
                pysched_handler_queue(handler, &item, std::ptr::null_mut(), std::ptr::null_mut());
            }
            let enq = t.elapsed();
            pysched_handler_drain(handler, std::ptr::null_mut());
            if std::env::var("PROBE_VERBOSE").is_ok() {
                println!("  enqueue {:.0} ns/item", enq.as_nanos() as f64 / n as f64);
            }
            assert_eq!(DONE.load(Ordering::Relaxed), n);
            runs.push(t.elapsed().as_nanos() as f64 / n as f64);
        }
        let mut stats = unsafe { std::mem::zeroed() };
        pysched_handler_stats(handler, &mut stats, std::ptr::null_mut());
        println!(
            "queued batch {batch:>3}: {:8.0} ns/item (median of 5; batch ema {:.1})",
            median(runs),
            stats.execute_batch_size_ema
        );
        pysched_handler_free(handler);
    }
    // One request at a time through an idle worker: latency of queue -> result.
    {
        let opts = pysched_handler_options_default();
        let mut handler = std::ptr::null_mut();
        let (m, e) = (CString::new("pysched_testmod").unwrap(), CString::new("identity").unwrap());
        pysched_manager_load(manager, m.as_ptr(), e.as_ptr(), &opts, &mut handler, std::ptr::null_mut());
        let mut lat = Vec::new();
        for i in 0..2000 {
            let item = pysched_item {
                user_data: i as *mut c_void,
                commit: Some(commit),
                prepare: None,
                complete: Some(complete),
                drop: None,
                timeout_us: 0,
            };
            let mut fut = std::ptr::null_mut();
            let t = Instant::now();
            pysched_handler_queue(handler, &item, &mut fut, std::ptr::null_mut());
            pyscheduler::ffi::future::pysched_future_wait(fut, std::ptr::null_mut());
            lat.push(t.elapsed().as_nanos() as f64 / 1000.0);
            let mut out = std::ptr::null_mut();
            pyscheduler::ffi::future::pysched_future_take(fut, &mut out, std::ptr::null_mut());
            Python::attach(|_py| unsafe { ffi::Py_DecRef(out) });
            pyscheduler::ffi::future::pysched_future_free(fut);
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!("one at a time: p50 {:.1} us, p99 {:.1} us", lat[lat.len() / 2], lat[lat.len() * 99 / 100]);
        pysched_handler_free(handler);
    }
    // Synchronous call from a thread without the GIL, against calling with it held.
    {
        let opts = pysched_handler_options_default();
        let mut handler = std::ptr::null_mut();
        let (m, e) = (CString::new("pysched_testmod").unwrap(), CString::new("add").unwrap());
        pysched_manager_load(manager, m.as_ptr(), e.as_ptr(), &opts, &mut handler, std::ptr::null_mut());
        unsafe extern "C" fn call_add(_u: *mut c_void, f: *mut ffi::PyObject) -> c_int {
            let a = ffi::PyLong_FromLong(3000);
            let b = ffi::PyLong_FromLong(-1234);
            let r = ffi::PyObject_CallFunctionObjArgs(f, a, b, std::ptr::null_mut::<ffi::PyObject>());
            let v = ffi::PyLong_AsLong(r);
            ffi::Py_DecRef(r);
            ffi::Py_DecRef(a);
            ffi::Py_DecRef(b);
            (v != 1766) as c_int
        }
        let n = 200_000;
        let mut runs = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            for _ in 0..n {
                pysched_handler_with_function(
                    handler,
                    Some(call_add),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                );
            }
            runs.push(t.elapsed().as_nanos() as f64 / n as f64);
        }
        let sync = median(runs);
        let floor = Python::attach(|py| {
            let f = py.import("pysched_testmod").unwrap().getattr("add").unwrap();
            let mut runs = Vec::new();
            for _ in 0..5 {
                let t = Instant::now();
                for _ in 0..n {
                    unsafe { call_add(std::ptr::null_mut(), f.as_ptr()) };
                }
                runs.push(t.elapsed().as_nanos() as f64 / n as f64);
            }
            median(runs)
        });
        println!(
            "sync call: {sync:.0} ns/call; with the GIL already held: {floor:.0} ns/call ({:.2}x)",
            sync / floor
        );
        pysched_handler_free(handler);
    }
    // GIL-free staging: ~100 us of C++ work per item in commit (GIL held) vs in prepare
    // (no GIL, spread over idle workers).
    {
        unsafe extern "C" fn busy_commit(user_data: *mut c_void) -> *mut ffi::PyObject {
            busy_100us();
            ffi::PyLong_FromLong(user_data as usize as _)
        }
        unsafe extern "C" fn busy_prepare(_user_data: *mut c_void) -> c_int {
            busy_100us();
            0
        }
        for (label, staged) in [("commit under the GIL", false), ("prepare without the GIL", true)] {
            let mut opts = pysched_handler_options_default();
            opts.batch_size = 32;
            opts.prefetch_depth = 2;
            let mut handler = std::ptr::null_mut();
            let (m, e) = (CString::new("pysched_testmod").unwrap(), CString::new("identity").unwrap());
            pysched_manager_load(manager, m.as_ptr(), e.as_ptr(), &opts, &mut handler, std::ptr::null_mut());
            let n = 2000;
            let t = Instant::now();
            for i in 0..n {
                let item = pysched_item {
                    user_data: i as *mut c_void,
                    commit: Some(if staged { commit } else { busy_commit }),
                    prepare: if staged { Some(busy_prepare) } else { None },
                    complete: Some(complete),
                    drop: None,
                    timeout_us: 0,
                };
                pysched_handler_queue(handler, &item, std::ptr::null_mut(), std::ptr::null_mut());
            }
            pysched_handler_drain(handler, std::ptr::null_mut());
            println!(
                "staging, 100 us of work per item, {label}: {:.0} us/item",
                t.elapsed().as_micros() as f64 / n as f64
            );
            pysched_handler_free(handler);
        }
    }
    // Inline floor: same lists built, passed and unpacked by one thread holding the GIL.
    let floor = Python::attach(|py| {
        let f = py.import("pysched_testmod").unwrap().getattr("identity").unwrap();
        let mut runs = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            let mut done = 0;
            for chunk in 0..items / 256 {
                let list = PyList::empty(py);
                for i in 0..256 {
                    unsafe {
                        let o = ffi::PyLong_FromLong((chunk * 256 + i) as _);
                        ffi::PyList_Append(list.as_ptr(), o);
                        ffi::Py_DecRef(o);
                    }
                }
                let r = f.call1((list,)).unwrap();
                for x in r.cast::<PyList>().unwrap().iter() {
                    std::hint::black_box(unsafe { ffi::PyLong_AsLong(x.as_ptr()) });
                    done += 1;
                }
            }
            runs.push(t.elapsed().as_nanos() as f64 / done as f64);
        }
        median(runs)
    });
    println!("inline floor (batch 256):   {floor:8.0} ns/item");
}
