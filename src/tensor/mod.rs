//! Tensor handlers: a Python function bound with a declared signature (per input and
//! output an element type and a fixed per-item shape) whose queued items are gathered
//! into one contiguous batch tensor per input, host or CUDA, passed to the function in
//! ONE call as DLPack/buffer-protocol views, and whose outputs are split back into each
//! item's rows without Python. Everything a handler has applies: bounded queues,
//! deadlines, cancel, batch delay, prefetch of GIL-free fills, stats, drain.
//!
//! Layout, each file importing only those before it: `spec` (the signature) <- `cuda`
//! (pinned buffers, uploads and stream ordering; `no_cuda` without the feature) <-
//! `buffers` (batch buffers and their pool) <- `view` (the Python face of a batch input)
//! and `output` (reading results) <- `job` (one item) <- `execute` (the handler's batch
//! state and path, which the core calls through `core::BatchExec`) <- this file (the
//! Rust API). Nothing in `core` names this module: its jobs reach the core as
//! `JobSlot::Placed`.

mod buffers;
#[cfg(feature = "cuda")]
mod cuda;
#[cfg(not(feature = "cuda"))]
#[path = "no_cuda.rs"]
mod cuda;
pub(crate) mod execute;
pub(crate) mod job;
mod output;
mod spec;
mod view;

pub use job::{DoneFn, FillFn};
pub use spec::{Placement, TensorSignature, TensorSpec, MAX_ITEM_NDIM, MAX_TENSORS};
pub use view::BatchTensor;

use crate::core::ItemOptions;
use crate::error::{Error, Result};
use crate::future::ItemFuture;
use crate::handler::{Handler, HandlerOptions};
use crate::stats::{HandlerStats, LatencySummary};
use buffers::RowHold;
pub(crate) use execute::TensorExec;
use job::{Feed, Hooks, Ptrs, RustHooks, Sink, TensorBox, TensorHooks, TensorJob};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A Python function bound with a tensor signature. Dropping it waits until everything
/// queued on it has finished. `&TensorHandler` is `Sync`: queue from any thread.
pub struct TensorHandler {
    handler: Handler,
    signature: TensorSignature,
    /// The batch state its core runs batches with (the core holds it as `BatchExec`).
    exec: Arc<TensorExec>,
}

/// The rows of one finished item, one `Vec<u8>` per output (C order, the output's item
/// shape and dtype).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRows(pub Vec<Vec<u8>>);

impl TensorRows {
    /// Output `k` as elements of `T` (which must match the output's dtype in size).
    pub fn get<T: crate::dtype::Element>(&self, k: usize) -> Vec<T> {
        let bytes = &self.0[k];
        let n = bytes.len() / std::mem::size_of::<T>();
        let mut out = Vec::<T>::with_capacity(n);
        // SAFETY: Element types are plain numbers; `n` elements fit in the bytes; the
        // destination has capacity `n`, and every element is written before set_len.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                out.as_mut_ptr().cast::<u8>(),
                n * std::mem::size_of::<T>(),
            );
            out.set_len(n);
        }
        out
    }
}

/// The future of a tensor item queued with [`TensorHandler::queue`]: its rows, or why it
/// failed.
pub struct TensorFuture {
    inner: ItemFuture,
    rows: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl TensorFuture {
    pub fn is_ready(&self) -> bool {
        self.inner.is_ready()
    }

    /// Blocks until the item finished (releasing the GIL if held).
    pub fn wait(self) -> Result<TensorRows> {
        self.inner.wait()?;
        Ok(TensorRows(std::mem::take(&mut *self.rows.lock().unwrap_or_else(|p| p.into_inner()))))
    }

    /// Waits up to `timeout`; true once the item finished.
    pub fn wait_for(&self, timeout: Duration) -> bool {
        self.inner.wait_for(timeout)
    }

    /// Cancels the item if it has not started; false if it had.
    pub fn cancel(&self) -> bool {
        self.inner.cancel()
    }
}

/// Where a copied item's inputs went.
pub(crate) enum CopiedIn {
    /// Its row of a set of batch buffers.
    Placed(RowHold),
    /// A buffer of its own.
    Own(Box<[u8]>),
}

impl CopiedIn {
    #[inline]
    pub(crate) fn into_job(self, sink: Sink, hooks: Hooks) -> TensorBox {
        match self {
            CopiedIn::Placed(hold) => TensorBox::in_set(TensorJob::placed(sink, hooks, hold)),
            CopiedIn::Own(bytes) => TensorBox::heap(TensorJob::new(Feed::Copied(bytes), sink, hooks)),
        }
    }
}

/// How to queue one item (besides its inputs).
#[derive(Debug, Clone, Copy, Default)]
pub struct TensorItemOptions {
    /// Fail the item with `TimedOut` if it has not started by then.
    pub deadline: Option<Instant>,
}

impl TensorHandler {
    pub(crate) fn new(handler: Handler, signature: TensorSignature, exec: Arc<TensorExec>) -> TensorHandler {
        TensorHandler { handler, signature, exec }
    }

    pub fn name(&self) -> &str {
        self.handler.name()
    }

    pub fn signature(&self) -> &TensorSignature {
        &self.signature
    }

    pub fn options(&self) -> &HandlerOptions {
        self.handler.options()
    }

    /// Queues one item whose inputs are copied from `inputs` (one slice per input, each
    /// exactly the input's item bytes) before this returns. The future yields its rows.
    pub fn queue(&self, inputs: &[&[u8]], options: TensorItemOptions) -> Result<TensorFuture> {
        let rows = Arc::new(Mutex::new(Vec::new()));
        let hooks = Hooks::Rust(RustHooks { fill: None, done: None });
        let job = self.copy_in(inputs, Sink::Owned(rows.clone()), hooks)?;
        let inner = self.submit(job, options, true)?.expect("asked for a future");
        Ok(TensorFuture { inner, rows })
    }

    /// Queues one item whose inputs `fill` writes in place (`rows[k]`: its row of input
    /// `k`), on a pool thread without the GIL, ahead of execution.
    pub fn queue_fill(
        &self,
        fill: impl FnOnce(&mut [&mut [u8]]) -> Result<()> + Send + 'static,
        options: TensorItemOptions,
    ) -> Result<TensorFuture> {
        let rows = Arc::new(Mutex::new(Vec::new()));
        let hooks = Hooks::Rust(RustHooks { fill: Some(Box::new(fill)), done: None });
        let job = TensorJob::new(Feed::Fill, Sink::Owned(rows.clone()), hooks);
        let inner = self.submit(TensorBox::heap(job), options, true)?.expect("asked for a future");
        Ok(TensorFuture { inner, rows })
    }

    /// Queues one item with copied inputs whose rows are written to `outputs` (one
    /// address per output, each valid for the output's item bytes) before `done` runs;
    /// no future. `done` hears the outcome exactly once, also when this returns an error.
    ///
    /// # Safety
    /// Every output address must stay valid and unaliased until `done` runs.
    pub unsafe fn queue_into(
        &self,
        inputs: &[&[u8]],
        outputs: &[*mut u8],
        done: impl FnOnce(Result<()>) + Send + 'static,
        options: TensorItemOptions,
    ) -> Result<()> {
        let sink = Sink::Pointers(Ptrs::new(outputs.iter().map(|&p| p as usize)));
        let mut hooks = RustHooks { fill: None, done: Some(Box::new(done)) };
        let job = match self.check_outputs(outputs) {
            Ok(()) => self.copy_in(inputs, sink, Hooks::Rust(hooks))?,
            Err(e) => {
                hooks.complete(Some(&e));
                return Err(e);
            }
        };
        self.submit(job, options, false).map(|_| ())
    }

    /// The job of an item whose inputs are copied from `inputs` (one slice per input,
    /// each exactly the input's item bytes). A refusal has reported to the hooks.
    fn copy_in(&self, inputs: &[&[u8]], sink: Sink, hooks: Hooks) -> Result<TensorBox> {
        let checked = self.check_inputs(inputs).and_then(|()| {
            // SAFETY: each input was checked to hold its item bytes.
            unsafe { self.copy_in_raw(inputs.iter().map(|i| i.as_ptr())) }
        });
        match checked {
            Ok(feed) => Ok(feed.into_job(sink, hooks)),
            Err(e) => {
                let mut hooks = hooks;
                hooks.get().complete(Some(&e));
                Err(e)
            }
        }
    }

    /// Copies one item's inputs (the k-th address: input k's item bytes) where its batch
    /// will read them: its row of the intake's open set (host placement), else a buffer
    /// of its own.
    ///
    /// # Safety
    /// Each address is readable for its input's item bytes.
    #[inline]
    pub(crate) unsafe fn copy_in_raw(
        &self,
        srcs: impl Iterator<Item = *const u8> + Clone,
    ) -> Result<CopiedIn> {
        // SAFETY: the caller's promise.
        if let Some(slot) = unsafe { self.exec().place(srcs.clone())? } {
            return Ok(CopiedIn::Placed(slot));
        }
        let specs = &self.signature.inputs;
        let mut bytes = Vec::with_capacity(specs.iter().map(TensorSpec::item_bytes).sum());
        for (src, spec) in srcs.zip(specs) {
            // SAFETY: the caller's promise.
            bytes.extend_from_slice(unsafe { std::slice::from_raw_parts(src, spec.item_bytes()) });
        }
        Ok(CopiedIn::Own(bytes.into_boxed_slice()))
    }

    fn exec(&self) -> &TensorExec {
        &self.exec
    }

    fn check_inputs(&self, inputs: &[&[u8]]) -> Result<()> {
        let specs = &self.signature.inputs;
        if inputs.len() != specs.len() {
            return Err(Error::invalid_argument(format!(
                "{}: {} inputs given, the signature has {}",
                self.name(),
                inputs.len(),
                specs.len()
            )));
        }
        for (k, (input, spec)) in inputs.iter().zip(specs).enumerate() {
            if input.len() != spec.item_bytes() {
                return Err(Error::invalid_argument(format!(
                    "{}: input {k} has {} bytes, one item of {} has {}",
                    self.name(),
                    input.len(),
                    spec.describe(),
                    spec.item_bytes()
                )));
            }
        }
        Ok(())
    }

    pub(crate) fn check_outputs(&self, outputs: &[*mut u8]) -> Result<()> {
        if outputs.len() != self.signature.outputs.len() {
            return Err(Error::invalid_argument(format!(
                "{}: {} output destinations given, the signature has {} outputs",
                self.name(),
                outputs.len(),
                self.signature.outputs.len()
            )));
        }
        if let Some(k) = outputs.iter().position(|p| p.is_null()) {
            return Err(Error::invalid_argument(format!("{}: output destination {k} is NULL", self.name())));
        }
        Ok(())
    }

    /// Queues a job; with `with_future`, the item's future. A refusal (shut down, full
    /// queue) has reported to the job's hooks when this returns it.
    pub(crate) fn submit(
        &self,
        job: TensorBox,
        options: TensorItemOptions,
        with_future: bool,
    ) -> Result<Option<ItemFuture>> {
        let opts = ItemOptions { deadline: options.deadline, keep_value: false };
        let slot = job.into_slot();
        if with_future {
            self.handler.try_queue_slot(slot, opts).map(Some)
        } else {
            self.handler.queue_detached(slot, opts).map(|()| None)
        }
    }

    /// Blocks until every item queued so far has finished. Releases the GIL if held.
    pub fn drain(&self) {
        self.handler.drain();
    }

    pub fn stats(&self) -> HandlerStats {
        self.handler.stats()
    }

    pub fn latency_summary(&self) -> LatencySummary {
        self.handler.latency_summary()
    }

    pub fn prometheus_text(&self) -> String {
        self.handler.prometheus_text()
    }

    /// Batch-buffer sets kept free in the pool now (tests watch it stay bounded).
    #[doc(hidden)]
    pub fn free_buffer_sets(&self) -> usize {
        self.exec.free_sets()
    }
}
