//! Tensor handlers: a Python function bound with a declared signature (per input and
//! output an element type and a fixed per-item shape) whose queued items are gathered
//! into one contiguous batch tensor per input, host or CUDA, passed to the function in
//! ONE call as DLPack/buffer-protocol views, and whose outputs are split back into each
//! item's rows without Python. Everything a handler has applies: bounded queues,
//! deadlines, cancel, batch delay, prefetch of GIL-free fills, stats, drain.
//!
//! Layout: `spec` (the signature) <- `buffers` (batch buffers and their pool) <- `view`
//! (the Python face of a batch input) and `output` (reading results) <- `job` (one
//! item) <- `execute` (the batch path, called by the handler core) <- this file (the
//! Rust API). `cuda` adds pinned buffers, uploads and stream ordering.

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

use crate::error::{Error, ErrorKind, Result};
use crate::future::ItemFuture;
use crate::handler::{Handler, HandlerOptions};
use crate::scheduler::{Entry, ItemOptions, JobSlot};
use crate::stats::{HandlerStats, LatencySummary};
use buffers::{BufferPool, Intake, Lease, RowHold};
use job::{Feed, Hooks, Ptrs, RustHooks, Sink, TensorBox, TensorHooks, TensorJob};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a tensor handler's batch path needs: its signature, its buffer pool, and for
/// CUDA placement its device and stream. Owned by the handler core.
pub(crate) struct TensorExec {
    pub(crate) signature: TensorSignature,
    pool: Arc<BufferPool>,
    /// Host placement: where copied inputs go at queueing (CUDA placement gathers them
    /// into its pinned buffers instead).
    intake: Option<Intake>,
    pub(crate) device: Option<Arc<cuda::Placement>>,
}

/// A staged batch: its inputs are rows `first..first + n` of `lease`'s buffers.
pub(crate) struct Staged {
    pub(crate) lease: Arc<Lease>,
    pub(crate) first: usize,
}

impl TensorExec {
    pub(crate) fn new(signature: TensorSignature, options: &HandlerOptions) -> Result<TensorExec> {
        signature.validate(options.batch_size)?;
        if options.subinterpreters > 0 {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "tensor handlers run in the main interpreter (subinterpreters must be 0)",
            ));
        }
        let device = match signature.placement {
            Placement::Host => None,
            Placement::Cuda(ordinal) => Some(Arc::new(cuda::Placement::new(ordinal)?)),
        };
        // Batches taken ahead, executing, and one being finished: enough sets to keep
        // without allocating once warm.
        let keep = options.prefetch_depth + options.concurrency + 1;
        // Host sets keep one job record per row for the intake (copied items allocate nothing).
        // Cache-line aligned: a record is exactly the lines its job needs.
        let record = match device {
            None => Some(
                std::alloc::Layout::new::<TensorJob>()
                    .align_to(64)
                    .map_err(|e| Error::internal(e.to_string()))?,
            ),
            Some(_) => None,
        };
        let pool = BufferPool::new(&signature.inputs, options.batch_size, keep, device.clone(), record);
        let intake = device.is_none().then(|| Intake::new(pool.clone()));
        Ok(TensorExec { signature, pool, intake, device })
    }

    /// Copies one item's inputs (the k-th address: input k's item bytes) into its row of
    /// the intake's open set; None for CUDA placement (no intake).
    ///
    /// # Safety
    /// Each address is readable for its input's item bytes.
    pub(crate) unsafe fn place(&self, srcs: impl Iterator<Item = *const u8>) -> Result<Option<RowHold>> {
        let Some(intake) = &self.intake else { return Ok(None) };
        let hold = intake.reserve()?;
        let (lease, row) = (hold.lease(), hold.row());
        for (k, (src, &size)) in srcs.zip(lease.item_bytes()).enumerate() {
            // SAFETY: `src` has `size` bytes (the caller's promise); the row is this item's
            // alone (`Intake::reserve`), `size` bytes of input k.
            unsafe { std::ptr::copy_nonoverlapping(src, lease.row_ptr(k, row), size) };
        }
        Ok(Some(hold))
    }

    /// Gives each item to be filled of a batch about to be prepared its row in a fresh
    /// set of buffers (its position in the batch). The caller owns the claimed batch.
    pub(crate) fn assign_rows(&self, batch: &[Entry]) -> Result<()> {
        let lease = self.pool.lease()?;
        for (row, entry) in batch.iter().enumerate() {
            // SAFETY: the caller owns the claimed batch (JobCell's protocol).
            if let Some(JobSlot::Tensor(job)) = unsafe { entry.job_cell().get_mut() } {
                if matches!(job.feed, Feed::Fill) {
                    job.slot = Some((lease.clone(), row));
                }
            }
        }
        Ok(())
    }

    /// Stages a prepared batch (its surviving items), so that its upload overlaps with
    /// the batch executing now. A failure is left for `stage` at execution to report.
    pub(crate) fn stage_prepared(&self, batch: &[Entry]) {
        // SAFETY: the caller owns the claimed batch (JobCell's protocol).
        let jobs = batch.iter().filter_map(|e| match unsafe { e.job_cell().get_mut() } {
            Some(JobSlot::Tensor(job)) => Some(&mut **job),
            _ => None,
        });
        let _ = self.stage(jobs);
    }

    /// Completes the batch's inputs in its buffers. A batch whose items were all placed
    /// at queueing in consecutive rows of one set runs on those rows (each item's output
    /// row is then its input row less `first`). Otherwise row `j` is its `j`-th item's:
    /// copied, placed and borrowed inputs are gathered, filled rows moved down over the
    /// rows of items that dropped out; for CUDA placement, uploaded. Idempotent.
    pub(crate) fn stage<'a>(&self, jobs: impl Iterator<Item = &'a mut TensorJob>) -> Result<Staged> {
        let mut jobs: Vec<&mut TensorJob> = jobs.collect();
        if let Some(staged) = consecutive_rows(&jobs) {
            return Ok(staged);
        }
        let filled = jobs.iter().find_map(|j| match (&j.feed, &j.slot) {
            (Feed::Fill, Some((lease, _))) => Some(lease.clone()),
            _ => None,
        });
        let lease = match filled {
            Some(lease) => lease,
            None => self.pool.lease()?,
        };
        if lease.staged_rows() == Some(jobs.len()) {
            return Ok(Staged { lease, first: 0 });
        }
        let sizes = lease.item_bytes();
        for (row, job) in jobs.iter_mut().enumerate() {
            for (k, &size) in sizes.iter().enumerate() {
                let dst = lease.row_ptr(k, row);
                let src: *const u8 = match (&job.feed, job.row_now()) {
                    (Feed::Copied(bytes), _) => bytes[sizes[..k].iter().sum::<usize>()..].as_ptr(),
                    (Feed::Borrowed(ptrs), _) => ptrs.as_slice()[k] as *const u8,
                    (Feed::Placed(_), Some((from_set, from)))
                        if !std::ptr::eq(from_set, &*lease) || from != row =>
                    {
                        from_set.row_ptr(k, from)
                    }
                    (Feed::Fill, Some((_, from))) if from != row => lease.row_ptr(k, from),
                    (Feed::Fill | Feed::Placed(_), _) => continue,
                };
                // SAFETY: `dst` is this batch's row `row` (< batch_size) of input k; `src` is
                // the item's own bytes (copied, placed in a row of another set, or the
                // caller's buffer it promised to keep valid, `size` bytes), or its filled
                // row further down the same buffer (rows only move down, so a row is read
                // before any later item overwrites it). A placed item's set is never this
                // batch's fresh set (the intake holds its sets while it fills them).
                unsafe { std::ptr::copy(src, dst, size) };
            }
            job.slot = Some((lease.clone(), row));
        }
        if let Some(device) = &self.device {
            device.upload(&lease, jobs.len())?;
        }
        lease.mark_staged(jobs.len());
        Ok(Staged { lease, first: 0 })
    }

    /// The view of input `k` of a staged batch of `rows` items.
    pub(crate) fn view(&self, staged: &Staged, k: usize, spec: &TensorSpec, rows: usize) -> BatchTensor {
        let lease = &staged.lease;
        let (data, device, stream) = match &self.device {
            None => (
                lease.row_ptr(k, staged.first),
                crate::dlpack::DLDevice { device_type: crate::dlpack::KDL_CPU, device_id: 0 },
                0,
            ),
            // CUDA batches always start at row 0 (no intake: they are gathered or filled).
            Some(d) => (d.device_ptr(lease, k), d.dl_device(), d.stream_handle()),
        };
        BatchTensor::new(lease.clone(), data, spec.dtype, rows, &spec.shape, device, stream)
    }
}

/// The batch's rows when every item was placed at queueing and together they hold rows
/// `first..first + n` of one set (in any order: each row was handed out once).
fn consecutive_rows(jobs: &[&mut TensorJob]) -> Option<Staged> {
    let (mut set, mut lo, mut hi) = (None::<&Lease>, usize::MAX, 0);
    for job in jobs {
        let (Feed::Placed(_), Some((its, row))) = (&job.feed, job.row_now()) else { return None };
        match set {
            Some(s) if !std::ptr::eq(s, its) => return None,
            _ => set = Some(its),
        }
        lo = lo.min(row);
        hi = hi.max(row);
    }
    set?;
    if hi - lo + 1 != jobs.len() {
        return None;
    }
    // The set's own reference: a gathered batch's (`slot`), else the first item's hold.
    let lease = match (&jobs[0].slot, &jobs[0].feed) {
        (Some((lease, _)), _) => lease.clone(),
        (None, Feed::Placed(hold)) => hold.to_arc(),
        _ => return None,
    };
    Some(Staged { lease, first: lo })
}

/// A Python function bound with a tensor signature. Dropping it waits until everything
/// queued on it has finished. `&TensorHandler` is `Sync`: queue from any thread.
pub struct TensorHandler {
    handler: Handler,
    signature: TensorSignature,
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
    pub(crate) fn into_job(self, sink: Sink, hooks: Hooks) -> TensorBox {
        match self {
            CopiedIn::Placed(hold) => TensorBox::in_set(TensorJob::placed(sink, hooks, hold)),
            CopiedIn::Own(bytes) => {
                TensorBox::Heap(Box::new(TensorJob::new(Feed::Copied(bytes), sink, hooks)))
            }
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
    pub(crate) fn new(handler: Handler, signature: TensorSignature) -> TensorHandler {
        TensorHandler { handler, signature }
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
        let inner = self.submit(TensorBox::Heap(Box::new(job)), options, true)?.expect("asked for a future");
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
        self.handler.core().tensor.as_ref().expect("a tensor handler's core has its TensorExec")
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
        let slot = JobSlot::Tensor(job);
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
        self.handler.core().tensor.as_ref().map_or(0, |t| t.pool.free_sets())
    }
}
