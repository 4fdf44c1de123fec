//! The batch path of a tensor handler: its batch state ([`TensorExec`]: signature,
//! buffer pool, intake, device), which the handler core calls once per batch through
//! `core::BatchExec`. A batch's rows are staged (gathered into the batch buffers,
//! compacted, uploaded for CUDA placement) without the GIL; then, under one GIL hold, one
//! view per input, one Python call, each output read once and its rows copied to the
//! items' destinations; after the GIL, each item's completion.
//!
//! May call: `spec`, `cuda`, `buffers`, `view`, `output`, `job`, `crate::core` (entries,
//! accounting), `crate::runtime`, `crate::python_err`, `crate::dlpack`, `crate::stats`.

use super::buffers::{BufferPool, Intake, Lease, RowHold};
use super::cuda;
use super::job::{Feed, Sink, TensorBox, TensorJob};
use super::output::{read_output, split_result, Expect, OutputRows};
use super::spec::{Placement, TensorSignature, TensorSpec};
use super::view::BatchTensor;
use crate::core::{clock, BatchExec, Entry, HandlerCore, HandlerOptions, JobSlot};
use crate::error::{Error, ErrorKind, Result};
use crate::python_err::report_stray;
use crate::stats::LocalHistogram;
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use std::sync::Arc;

/// What a tensor handler's batch path needs: its signature, its buffer pool, and for
/// CUDA placement its device and stream. Shared by the handler core (as its
/// `BatchExec`) and the `TensorHandler` (whose producers place items through it).
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
    #[inline]
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
            lease.upload(device, jobs.len())?;
        }
        lease.mark_staged(jobs.len());
        Ok(Staged { lease, first: 0 })
    }

    /// Batch-buffer sets kept free in the pool now.
    pub(crate) fn free_sets(&self) -> usize {
        self.pool.free_sets()
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
            Some(d) => (d.device_ptr(lease.device_set(), k), d.dl_device(), d.stream_handle()),
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

/// The tensor job of an entry of a claimed batch (None once its job was taken).
///
/// # Safety
/// The caller owns the claimed batch (JobCell's protocol), and the entry is a tensor
/// handler's: its core holds only `TensorBox`es' jobs (`TensorBox::from_placed`). As
/// `JobCell::get_mut`, the job is reached through the shared entry.
#[allow(clippy::mut_from_ref)]
unsafe fn claimed_job(entry: &Entry) -> Option<&mut TensorJob> {
    // SAFETY: the caller's promise.
    match unsafe { entry.job_cell().get_mut() } {
        // SAFETY: the caller's promise: a placed job of this core is a TensorJob.
        Some(JobSlot::Placed(job)) => Some(unsafe { TensorBox::job_of(job) }),
        _ => None,
    }
}

impl BatchExec<HandlerCore> for TensorExec {
    /// Gives each item to be filled of a batch about to be prepared its row in a fresh
    /// set of buffers (its position in the batch).
    fn before_prepare(&self, batch: &[Entry]) -> Result<()> {
        let lease = self.pool.lease()?;
        for (row, entry) in batch.iter().enumerate() {
            // SAFETY: the core hands over a claimed batch of this tensor handler's.
            if let Some(job) = unsafe { claimed_job(entry) } {
                if matches!(job.feed, Feed::Fill) {
                    job.slot = Some((lease.clone(), row));
                }
            }
        }
        Ok(())
    }

    /// Stages a prepared batch (its surviving items), so that its upload overlaps with
    /// the batch executing now. A failure is left for `stage` at execution to report.
    fn after_prepare(&self, batch: &[Entry]) {
        // SAFETY: as in before_prepare.
        let _ = self.stage(batch.iter().filter_map(|e| unsafe { claimed_job(e) }));
    }

    fn run_batch(&self, core: &HandlerCore, batch: Vec<Entry>) -> Vec<JobSlot> {
        run_batch(core, self, batch)
    }
}

/// Runs one claimed batch of a tensor handler. Returns the completed items nobody waits
/// on but their callbacks, for the caller to finalize after the GIL (as the list path).
fn run_batch(core: &HandlerCore, exec: &TensorExec, batch: Vec<Entry>) -> Vec<JobSlot> {
    let mut live: Vec<(Entry, TensorBox)> = Vec::with_capacity(batch.len());
    for entry in batch {
        match entry.take_slot() {
            // SAFETY: a tensor handler's core holds only TensorBoxes' jobs (`TensorBox::from_placed`).
            Some(JobSlot::Placed(job)) => live.push((entry, unsafe { TensorBox::from_placed(job) })),
            other => core.fail_started(
                &entry,
                other,
                Error::internal("a tensor handler got an item that is not a tensor item"),
            ),
        }
    }
    if live.is_empty() {
        return Vec::new();
    }
    let staged = exec.stage(live.iter_mut().map(|(_, job)| &mut **job));
    let staged = match staged {
        Ok(staged) => staged,
        Err(error) => return fail_all(core, live, error),
    };
    let n = live.len();
    let gil_asked = clock::now_ns();
    let called = crate::runtime::attach(|py| {
        let start_ns = clock::now_ns();
        core.histograms.gil_wait_ns.record(start_ns.saturating_sub(gil_asked));
        let mut waits = LocalHistogram::default();
        for (entry, _) in &live {
            waits.record(start_ns.saturating_sub(entry.enqueued_ns()));
        }
        core.histograms.queue_wait_ns.merge(&waits);
        report_stray(py, &core.name, "code run earlier on this worker");
        let called = call_and_split(py, core, exec, &staged, &mut live, start_ns);
        // The views, the results and their DLPack capsules were released by now.
        report_stray(py, &core.name, "a destructor run as the batch's tensors were released");
        called
    });
    drop(staged);
    if let Err(error) = called {
        return fail_all(core, live, error);
    }
    // The batch's accounting in one step, before any completion runs (as the list path).
    core.batch_succeeded(n);
    let mut detached = Vec::with_capacity(n);
    for (entry, job) in live {
        if entry.has_completion() {
            // Its completion runs before its future resolves.
            drop(job);
            entry.resolve(Ok(None));
        } else {
            detached.push(job.into_slot());
        }
    }
    detached
}

fn fail_all(core: &HandlerCore, live: Vec<(Entry, TensorBox)>, error: Error) -> Vec<JobSlot> {
    for (entry, job) in live {
        core.fail_started(&entry, Some(job.into_slot()), error.clone());
    }
    Vec::new()
}

/// Under the GIL: the views, the call, the outputs read and split into the items' sinks.
fn call_and_split(
    py: Python<'_>,
    core: &HandlerCore,
    exec: &TensorExec,
    staged: &Staged,
    live: &mut [(Entry, TensorBox)],
    start_ns: u64,
) -> Result<()> {
    let n = live.len();
    let sig = &exec.signature;
    let mut views = Vec::with_capacity(sig.inputs.len());
    for (k, spec) in sig.inputs.iter().enumerate() {
        let view = exec.view(staged, k, spec, n);
        let obj = Bound::new(py, view)
            .map_err(|e| Error::from_pyerr_context(py, &e, ErrorKind::Internal, "creating a batch tensor"))?;
        views.push(obj.into_any());
    }
    let args = PyTuple::new(py, views)
        .map_err(|e| Error::from_pyerr_context(py, &e, ErrorKind::Internal, "building the arguments"))?;
    // The handler's device current on this thread during the call (as torch expects).
    let _context = exec.device.as_ref().map(|d| d.enter()).transpose()?;
    let committed = clock::now_ns();
    let called = core.function.bind(py).call1(args);
    core.record_timings(n, committed.saturating_sub(start_ns), clock::now_ns().saturating_sub(committed), n);
    let result = called.map_err(|e| {
        Error::from_pyerr_context(py, &e, ErrorKind::PythonException, &format!("{} raised", core.name))
    })?;
    let objects = split_result(result, sig.outputs.len(), &core.name)?;
    let rows: Vec<OutputRows> = objects
        .iter()
        .zip(&sig.outputs)
        .enumerate()
        .map(|(k, (obj, spec))| {
            let expect = Expect { name: &core.name, k, spec, rows: n, placement: sig.placement };
            read_output(py, obj, &expect, exec.device.as_ref())
        })
        .collect::<Result<_>>()?;
    for (_, job) in live.iter_mut() {
        // The item's row of the batch (its inputs' row, counted from the batch's first).
        let i = job.row_now().map_or(0, |(_, row)| row - staged.first);
        match &job.sink {
            Sink::Pointers(dests) => {
                for (out, &dest) in rows.iter().zip(dests.as_slice()) {
                    // SAFETY: row i of a checked output of n rows; the destination is the
                    // caller's memory of at least row_bytes, valid until the item's
                    // completion (the queueing contract).
                    unsafe { std::ptr::copy_nonoverlapping(out.row(i), dest as *mut u8, out.row_bytes) };
                }
            }
            Sink::Owned(kept) => {
                let copied: Vec<Vec<u8>> = rows
                    .iter()
                    // SAFETY: row i of a checked output of n rows.
                    .map(|out| unsafe { std::slice::from_raw_parts(out.row(i), out.row_bytes) }.to_vec())
                    .collect();
                *kept.lock().unwrap_or_else(|p| p.into_inner()) = copied;
            }
            Sink::Discard => {}
        }
        job.rows_written();
    }
    Ok(())
}
