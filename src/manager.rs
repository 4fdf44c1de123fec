//! [`Manager`]: the entry point of the Rust API. It starts (or adopts) the interpreter,
//! joins the process-wide state (`crate::shared`) and loads handlers.
//!
//! May call: `shared`, `runtime`, `handler`, `tensor`, `core` (`HandlerCore`),
//! `subinterp` (a handler's replicas).

use crate::core::HandlerCore;
use crate::error::{Error, ErrorKind, Result};
use crate::handler::{Handler, HandlerOptions};
use crate::runtime::{self, RuntimeOptions, StartMode};
use crate::shared::Shared;
pub use crate::shared::{debug_arc_count, debug_shared_state_address};
use crate::tensor::{TensorHandler, TensorSignature};
use pyo3::prelude::*;
use pyo3::types::PyAnyMethods;
use std::sync::Arc;

/// Options for a manager. `Default` is what the zero-valued C struct means.
#[derive(Debug, Clone, Default)]
pub struct ManagerOptions {
    pub runtime: RuntimeOptions,
    /// Worker threads of the shared pool (0: the default, the number of CPUs, at least
    /// 4). Only the manager that creates the process-wide state sets it.
    pub worker_threads: usize,
}

/// Entry point to the embedded interpreter. Cheap to create; all managers of a process
/// share one interpreter, one worker pool and one module cache.
pub struct Manager {
    shared: Arc<Shared>,
}

impl Manager {
    /// Starts (or adopts) the interpreter on first use and joins the process-wide state.
    /// Thread-safe; concurrent first calls race safely.
    pub fn new(options: ManagerOptions) -> Result<Manager> {
        if options.worker_threads > 1024 {
            return Err(Error::invalid_argument(format!(
                "worker_threads must be at most 1024, got {}",
                options.worker_threads
            )));
        }
        let start_mode = runtime::ensure_started(&options.runtime)?;
        Ok(Manager { shared: Shared::join(start_mode, options.worker_threads)? })
    }

    /// Whether this process's interpreter was started by pyscheduler or adopted.
    pub fn start_mode(&self) -> StartMode {
        self.shared.start_mode
    }

    pub fn worker_threads(&self) -> usize {
        self.shared.pool.threads()
    }

    /// Appends a directory to `sys.path` once (idempotent).
    pub fn add_path(&self, directory: &str) -> Result<()> {
        runtime::add_path(directory)
    }

    /// Imports `module` (once per process) and binds `entry_point` (a dotted attribute
    /// path such as `"Model.predict"` is allowed) as a handler with its own queue.
    pub fn load(&self, module: &str, entry_point: &str, options: HandlerOptions) -> Result<Handler> {
        options.validate()?;
        validate_dotted("module name", module)?;
        validate_dotted("entry point", entry_point)?;
        let function = self.function(module, entry_point)?;
        let name = options.name.clone().unwrap_or_else(|| format!("{module}.{entry_point}"));
        let replicas = options.subinterpreters;
        let core = HandlerCore::new(name, function, options, self.shared.pool.clone(), replicas, None);
        let threads = if replicas > 0 {
            crate::subinterp::spawn_replicas(module, entry_point, replicas, core.clone())?
        } else {
            Vec::new()
        };
        Ok(Handler::new(core, self.shared.clone(), threads))
    }

    /// Imports `module` and binds `entry_point` as a tensor handler: the function is
    /// called once per batch with one batch tensor per input of `signature` and returns
    /// one array or tensor per output (see [`crate::tensor`]). A bad signature is an
    /// `InvalidArgument` error; CUDA placement without a driver or device a `Cuda` one.
    pub fn load_tensor(
        &self,
        module: &str,
        entry_point: &str,
        signature: TensorSignature,
        options: HandlerOptions,
    ) -> Result<TensorHandler> {
        options.validate()?;
        validate_dotted("module name", module)?;
        validate_dotted("entry point", entry_point)?;
        let exec = crate::tensor::TensorExec::new(signature.clone(), &options)?;
        let function = self.function(module, entry_point)?;
        let name = options.name.clone().unwrap_or_else(|| format!("{module}.{entry_point}"));
        let exec = Arc::new(exec);
        let core = HandlerCore::new(name, function, options, self.shared.pool.clone(), 0, Some(exec.clone()));
        Ok(TensorHandler::new(Handler::new(core, self.shared.clone(), Vec::new()), signature, exec))
    }

    fn function(&self, module: &str, entry_point: &str) -> Result<Py<PyAny>> {
        let key = (module.to_owned(), entry_point.to_owned());
        runtime::attach(|py| {
            if let Some(f) = self.shared.functions.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
                return Ok(f.clone_ref(py));
            }
            let mut obj = py
                .import(module)
                .map_err(|e| {
                    Error::from_pyerr_context(
                        py,
                        &e,
                        ErrorKind::Import,
                        &format!("cannot import module {module:?}"),
                    )
                })?
                .into_any();
            for part in entry_point.split('.') {
                obj = obj.getattr(part).map_err(|e| {
                    Error::from_pyerr_context(
                        py,
                        &e,
                        ErrorKind::Attribute,
                        &format!("module {module:?} has no attribute {entry_point:?}"),
                    )
                })?;
            }
            if !obj.is_callable() {
                return Err(Error::new(
                    ErrorKind::Attribute,
                    format!(
                        "{module}.{entry_point} is not callable (it is a {})",
                        obj.get_type().name().map(|n| n.to_string()).unwrap_or_default()
                    ),
                ));
            }
            let f = obj.unbind();
            self.shared
                .functions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(key)
                .or_insert_with(|| f.clone_ref(py));
            Ok(f)
        })
    }
}

/// Rejects names that cannot be a Python module path or attribute path: empty, empty
/// components, or components that are not identifiers.
fn validate_dotted(what: &str, name: &str) -> Result<()> {
    let bad = |why: &str| Err(Error::invalid_argument(format!("invalid {what} {name:?}: {why}")));
    if name.is_empty() {
        return bad("it is empty");
    }
    for part in name.split('.') {
        let mut chars = part.chars();
        match chars.next() {
            None => return bad("it has an empty component"),
            Some(c) if !(c == '_' || c.is_alphabetic()) => {
                return bad("a component does not start with a letter or '_'")
            }
            _ => {}
        }
        if !chars.all(|c| c == '_' || c.is_alphanumeric()) {
            return bad("a component is not a Python identifier");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::validate_dotted;

    #[test]
    fn dotted_names() {
        assert!(validate_dotted("m", "a.b_c.d1").is_ok());
        assert!(validate_dotted("m", "ünï").is_ok());
        for bad in ["", ".", "a.", ".a", "a..b", "1a", "a-b", "a b", "a/b"] {
            assert!(validate_dotted("m", bad).is_err(), "{bad:?}");
        }
    }
}
