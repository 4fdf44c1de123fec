//! Links libpython (never as an extension module) and embeds its directory as rpath,
//! so binaries find the interpreter they were built against without LD_LIBRARY_PATH.
fn main() {
    pyo3_build_config::add_libpython_rpath_link_args();
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
}
