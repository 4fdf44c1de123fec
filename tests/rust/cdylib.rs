//! The library as a C shared object, for the tests that load it into another process (a
//! Python program, through ctypes).
//!
//! `cargo test` compiles the library's one unit with all its crate types (cdylib,
//! staticlib, rlib) but copies none of them up to `<target>/<profile>/`: that happens only
//! for `cargo build --lib`. The cdylib of the very rustc run whose rlib this test binary
//! links lies in `<target>/<profile>/deps/`, and is what these tests load. Should a cargo
//! ever leave it out, the first test that asks builds it with `cargo build --lib` (the
//! cargo, target directory, profile and features of this test binary), once per process.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The path of the cdylib built from the same sources as this test binary; panics, with
/// cargo's output, when it cannot be built.
pub fn path() -> PathBuf {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    FOUND.get_or_init(find_or_build).clone().unwrap_or_else(|why| panic!("{why}"))
}

fn find_or_build() -> Result<PathBuf, String> {
    // This binary is <target dir>/<profile dir>/deps/<test>-<hash>.
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let deps = exe.parent().ok_or_else(|| format!("{exe:?} has no parent"))?;
    let lib = deps.join("libpyscheduler.so");
    if lib.exists() {
        return Ok(lib);
    }
    let profile_dir = deps.parent().ok_or_else(|| format!("{exe:?} is not in <target>/<profile>/deps"))?;
    let target_dir = profile_dir.parent().ok_or_else(|| format!("{profile_dir:?} has no parent"))?;
    // `cargo test` puts the dev profile in debug/, every other profile in a folder of its name.
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev".to_string(),
        Some(name) => name.to_string(),
        None => return Err(format!("{profile_dir:?}: no profile name")),
    };
    // The features this binary was built with, so that the build shares its dependencies.
    let features: Vec<&str> = [("cuda", cfg!(feature = "cuda")), ("mimalloc", cfg!(feature = "mimalloc"))]
        .into_iter()
        .filter_map(|(name, on)| on.then_some(name))
        .collect();
    // The cargo that runs this test (it sets CARGO), else the one that built it.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let mut command = Command::new(&cargo);
    command
        .args(["build", "--lib", "--quiet", "--profile", &profile, "--no-default-features"])
        .args(if features.is_empty() { vec![] } else { vec!["--features".to_string(), features.join(",")] })
        .args(["--manifest-path", concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")])
        .arg("--target-dir")
        .arg(target_dir);
    eprintln!("{lib:?} does not exist: building the cdylib for this test: {command:?}");
    let out = command.output().map_err(|e| format!("cannot run {cargo:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{command:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let lib = profile_dir.join("libpyscheduler.so");
    if lib.exists() {
        Ok(lib)
    } else {
        Err(format!("{command:?} succeeded but {lib:?} does not exist"))
    }
}
