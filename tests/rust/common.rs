//! Shared set-up of the Rust tests: one manager per process with the test modules on
//! sys.path.

use pyscheduler::{Manager, ManagerOptions};

pub fn manager() -> Manager {
    let m = Manager::new(ManagerOptions::default()).expect("manager");
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python");
    m.add_path(dir).expect("add_path");
    m
}

/// True (after saying so once on stderr) when the embedded Python has no numpy: the
/// tests that call numpy functions then skip instead of failing on a bare machine
/// (`./configure.sh --test` installs numpy, so CI always runs them).
#[allow(dead_code)]
pub fn skip_without_numpy() -> bool {
    use std::sync::OnceLock;
    static MISSING: OnceLock<bool> = OnceLock::new();
    *MISSING.get_or_init(|| {
        let _m = manager();
        let missing = pyo3::Python::attach(|py| py.import("numpy").is_err());
        if missing {
            eprintln!("numpy is not installed for the embedded Python: skipping the tests that need it (pip install numpy)");
        }
        missing
    })
}
