//! Embeds libpython's directory as rpath, so the example runs without LD_LIBRARY_PATH
//! (pyscheduler's own build script only covers pyscheduler's own binaries).
fn main() {
    pyo3_build_config::add_libpython_rpath_link_args();
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
}
