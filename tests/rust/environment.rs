//! The interpreter's environment, in a process of its own (the interpreter starts once
//! per process): a virtualenv named by VIRTUAL_ENV is visible, PYTHONPATH is honored,
//! and the working directory joins sys.path only when asked.

use pyo3::prelude::*;
use pyo3::types::PyAnyMethods;
use pyscheduler::{HandlerOptions, Manager, ManagerOptions, RuntimeOptions};
use std::path::PathBuf;
use std::process::Command;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pysched-env-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The interpreter this crate was built against (pyo3's choice).
fn build_python() -> String {
    std::env::var("PYO3_PYTHON").unwrap_or_else(|_| "python3".into())
}

#[test]
fn venv_pythonpath_and_cwd_option() {
    // A virtualenv holding a package the base installation lacks.
    let root = scratch("root");
    let venv = root.join("venv");
    let status = Command::new(build_python())
        .args(["-m", "venv", "--without-pip"])
        .arg(&venv)
        .status()
        .expect("python -m venv");
    assert!(status.success());
    let purelib = Command::new(venv.join("bin/python"))
        .args(["-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
        .output()
        .unwrap();
    let site = PathBuf::from(String::from_utf8(purelib.stdout).unwrap().trim());
    std::fs::create_dir_all(site.join("only_in_venv_pkg")).unwrap();
    std::fs::write(
        site.join("only_in_venv_pkg/__init__.py"),
        "def where(items):\n    return [__file__] * len(items)\n",
    )
    .unwrap();
    // A directory given through PYTHONPATH.
    let extra = root.join("extra");
    std::fs::create_dir_all(&extra).unwrap();
    std::fs::write(
        extra.join("only_on_pythonpath.py"),
        "def ok(items):\n    return ['pythonpath'] * len(items)\n",
    )
    .unwrap();
    // A working directory with a module named like a stdlib module.
    let cwd = root.join("cwd");
    std::fs::create_dir_all(&cwd).unwrap();
    std::fs::write(cwd.join("json.py"), "raise ImportError('hijacked')\n").unwrap();
    std::fs::write(cwd.join("cwd_only_mod.py"), "def f(items):\n    return list(items)\n").unwrap();
    std::env::set_current_dir(&cwd).unwrap();
    std::env::set_var("VIRTUAL_ENV", &venv);
    std::env::set_var("PYTHONPATH", &extra);

    let m = Manager::new(ManagerOptions::default()).unwrap();
    let h = m.load("only_in_venv_pkg", "where", HandlerOptions::default()).unwrap();
    let file = h.queue(|py| Ok(1i64.into_pyobject(py)?.into_any().unbind())).wait().unwrap().unwrap();
    let file: String = Python::attach(|py| file.bind(py).extract().unwrap());
    assert!(file.starts_with(venv.to_str().unwrap()), "{file}");
    let h = m.load("only_on_pythonpath", "ok", HandlerOptions::default()).unwrap();
    assert!(h.queue(|py| Ok(1i64.into_pyobject(py)?.into_any().unbind())).wait().is_ok());
    // The stdlib wins over the working directory, which is not on sys.path.
    let h = m.load("json", "dumps", HandlerOptions::default()).unwrap();
    drop(h);
    let e =
        m.load("cwd_only_mod", "f", HandlerOptions::default()).err().expect("cwd must not be on sys.path");
    assert_eq!(e.kind(), pyscheduler::ErrorKind::Import);
    // Asked for, the working directory is added.
    let m2 = Manager::new(ManagerOptions {
        runtime: RuntimeOptions { add_cwd_to_path: true, ..Default::default() },
        ..Default::default()
    })
    .unwrap();
    assert!(m2.load("cwd_only_mod", "f", HandlerOptions::default()).is_ok());
    let _ = std::fs::remove_dir_all(&root);
}
