//! The process-wide state behind every manager: the worker pool and the module cache.
//! Managers and handlers hold it through one `Arc`, so plugins that share the library
//! share the state, and its strong count is the number of live managers and handlers.
//!
//! May call: `core` (the pool), `runtime`.

use crate::core::Pool;
use crate::error::Result;
use crate::runtime::{self, StartMode};
use pyo3::prelude::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

/// Process-wide state; one exists while any manager or handler is alive.
pub(crate) struct Shared {
    pub(crate) pool: Arc<Pool>,
    /// Bound callables by (module, entry point); the GIL-independent lock guards the map.
    pub(crate) functions: Mutex<HashMap<(String, String), Py<PyAny>>>,
    pub(crate) start_mode: StartMode,
}

/// The current process-wide state, if any is alive.
static SHARED: Mutex<Weak<Shared>> = Mutex::new(Weak::new());

fn default_worker_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(4).clamp(4, 64)
}

impl Shared {
    /// The live process-wide state, or a new one with a pool of `worker_threads` (0: the
    /// default, the number of CPUs, at least 4) when none is alive.
    pub(crate) fn join(start_mode: StartMode, worker_threads: usize) -> Result<Arc<Shared>> {
        let mut slot = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(shared) = slot.upgrade() {
            return Ok(shared);
        }
        let threads = match worker_threads {
            0 => default_worker_threads(),
            n => n,
        };
        let shared =
            Arc::new(Shared { pool: Pool::new(threads)?, functions: Mutex::new(HashMap::new()), start_mode });
        *slot = Arc::downgrade(&shared);
        Ok(shared)
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The cached callables are Python objects: release them attached.
        let functions = std::mem::take(self.functions.get_mut().unwrap_or_else(|p| p.into_inner()));
        if !functions.is_empty() && runtime::is_started() {
            runtime::attach(|_py| drop(functions));
        }
    }
}

/// Address of the live process-wide state (0 when none is alive). Equal in every
/// plugin of a process that shares this library.
pub fn debug_shared_state_address() -> usize {
    let slot = SHARED.lock().unwrap_or_else(|p| p.into_inner());
    if slot.strong_count() == 0 {
        0
    } else {
        slot.as_ptr() as usize
    }
}

/// Live managers plus live handlers (each holds the state once).
pub fn debug_arc_count() -> u64 {
    SHARED.lock().unwrap_or_else(|p| p.into_inner()).strong_count() as u64
}
