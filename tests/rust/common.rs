//! Shared set-up of the Rust tests: one manager per process with the test modules on
//! sys.path.

use pyscheduler::{Manager, ManagerOptions};

pub fn manager() -> Manager {
    let m = Manager::new(ManagerOptions::default()).expect("manager");
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python");
    m.add_path(dir).expect("add_path");
    m
}
