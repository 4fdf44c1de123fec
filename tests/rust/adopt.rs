//! Adoption: when another component already started the interpreter in this process,
//! pyscheduler uses it instead of failing or starting a second one.

use pyo3::prelude::*;
use pyo3::types::{PyAnyMethods, PyListMethods};
use pyscheduler::{HandlerOptions, Manager, ManagerOptions, StartMode};

mod cdylib;

#[test]
fn adopts_an_interpreter_started_by_someone_else() {
    Python::initialize();
    // The other component leaves a mark that must be visible to pyscheduler's handlers.
    Python::attach(|py| {
        py.import("sys").unwrap().setattr("started_by_host", 42).unwrap();
        let path = py.import("sys").unwrap().getattr("path").unwrap();
        path.cast::<pyo3::types::PyList>()
            .unwrap()
            .append(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python"))
            .unwrap();
    });
    let m = Manager::new(ManagerOptions::default()).unwrap();
    assert_eq!(m.start_mode(), StartMode::Adopted);
    let h =
        m.load("pysched_testmod", "double", HandlerOptions { batch_size: 4, ..Default::default() }).unwrap();
    let futures: Vec<_> =
        (0..50i64).map(|i| h.queue(move |py| Ok(i.into_pyobject(py)?.into_any().unbind()))).collect();
    for (i, f) in futures.into_iter().enumerate() {
        let v = f.wait().unwrap().unwrap();
        assert_eq!(Python::attach(|py| v.bind(py).extract::<i64>().unwrap()), 2 * i as i64);
    }
    // Queue and wait while this thread holds the GIL: waiting must release it.
    Python::attach(|py| {
        let marker: i64 = py.import("sys").unwrap().getattr("started_by_host").unwrap().extract().unwrap();
        assert_eq!(marker, 42);
        let f = h.queue(|py| Ok(5i64.into_pyobject(py)?.into_any().unbind()));
        let v = f.wait().unwrap().unwrap();
        assert_eq!(v.bind(py).extract::<i64>().unwrap(), 10);
        // Draining with the GIL held must not deadlock either.
        h.drain();
    });
}

#[test]
fn adopts_when_loaded_into_a_python_program() {
    let lib = cdylib::path();
    let python = std::env::var("PYO3_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = std::process::Command::new(python)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/loaded_into_python.py"))
        .arg(&lib)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("adopted ok"), "{text}");
}
