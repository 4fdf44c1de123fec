//! Links libpython (never as an extension module), embeds its directory as rpath so
//! binaries find the interpreter they were built against without LD_LIBRARY_PATH, and
//! exposes pyo3's version cfgs (`Py_3_12`, ...) to this crate.
fn main() {
    pyo3_build_config::add_libpython_rpath_link_args();
    pyo3_build_config::use_pyo3_cfgs();
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
}
