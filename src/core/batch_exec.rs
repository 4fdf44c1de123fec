//! [`BatchExec`]: how a layer above the core plugs its own batch step into a handler (a
//! tensor handler gathers its items into batch tensors instead of committing them one
//! by one). The core holds it as `Option<Arc<dyn BatchExec<HandlerCore>>>` and calls it
//! once per batch, never per item; the jobs such a layer queues are `JobSlot::Placed`.
//!
//! May call: `item`, `job`, `crate::error`. Generic over the handler type so that it
//! names nothing above `item` (the handler holds it).

use super::item::Entry;
use super::job::JobSlot;
use crate::error::Result;

/// A handler's own batch step. Each call gets a claimed batch: the caller owns its
/// entries and their jobs (`JobCell`'s protocol).
pub(crate) trait BatchExec<Core>: Send + Sync {
    /// Before a batch with items to prepare is prepared (a tensor handler gives each item
    /// to be filled its row of a fresh set of buffers). An error fails the whole batch.
    fn before_prepare(&self, batch: &[Entry<Core>]) -> Result<()>;

    /// After the batch's surviving items were prepared (a tensor handler stages them, so
    /// that an upload overlaps with the batch executing now). Errors are for `run_batch`
    /// to meet and report.
    fn after_prepare(&self, batch: &[Entry<Core>]);

    /// Executes the batch instead of the core's list harness; runs with the thread marked
    /// as executing the handler's batch. Returns the completed detached jobs, which the
    /// caller drops once the GIL is released (their finalizers).
    fn run_batch(&self, core: &Core, batch: Vec<Entry<Core>>) -> Vec<JobSlot>;
}
