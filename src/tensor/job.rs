//! One queued item of a tensor handler: where its inputs come from (copied at queueing,
//! borrowed until its batch is gathered, or filled in place without the GIL), where its
//! output rows go, and who hears of its outcome. The batch path (`execute`) writes its
//! rows; the job's `Drop` is its finalizer and reports the outcome exactly once.
//!
//! May call: `buffers` (an item's row), `crate::core` (the `Job` trait, `PlacedJob`),
//! `crate::error`.

use super::buffers::{Lease, RowHold};
use crate::core::{Job, JobSlot, PlacedJob};
use crate::error::{pysched_error, Error, ErrorKind, Result};
use pyo3::prelude::*;
use std::ffi::{c_int, c_void};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

/// Up to this many pointers (inputs or outputs) live inside the job, more on the heap.
/// Three keeps a job at 128 bytes: two cache lines in its row's record (see the test).
const INLINE_PTRS: usize = 3;

/// A short list of addresses, inline when short (one allocation per item less).
#[derive(Clone)]
pub(crate) enum Ptrs {
    Inline([usize; INLINE_PTRS], u8),
    Heap(Box<[usize]>),
}

impl Ptrs {
    pub(crate) fn new(ptrs: impl ExactSizeIterator<Item = usize>) -> Ptrs {
        if ptrs.len() <= INLINE_PTRS {
            let mut a = [0usize; INLINE_PTRS];
            let n = ptrs.len();
            for (slot, p) in a.iter_mut().zip(ptrs) {
                *slot = p;
            }
            Ptrs::Inline(a, n as u8)
        } else {
            Ptrs::Heap(ptrs.collect())
        }
    }

    pub(crate) fn as_slice(&self) -> &[usize] {
        match self {
            Ptrs::Inline(a, n) => &a[..*n as usize],
            Ptrs::Heap(b) => b,
        }
    }
}

/// Where an item's inputs come from.
pub(crate) enum Feed {
    /// Copied when queued into a buffer of its own: every input's item bytes back to back
    /// (CUDA placement, whose batches gather into pinned buffers).
    Copied(Box<[u8]>),
    /// Copied when queued straight into its row of a set of batch buffers, from the
    /// handler's intake (host placement); the job lives in that row's record.
    Placed(RowHold),
    /// The caller's buffers, read when the batch is gathered (the caller promised they
    /// outlive the item).
    Borrowed(Ptrs),
    /// Written in place by the item's fill callback, on a pool thread without the GIL.
    Fill,
}

/// Where an item's output rows go.
pub(crate) enum Sink {
    /// The caller's memory, one address per output (the caller keeps it valid until the
    /// item's completion).
    Pointers(Ptrs),
    /// Rows kept for the item's future ([`super::TensorFuture`]).
    Owned(Arc<Mutex<Vec<Vec<u8>>>>),
    /// The function's outputs are not wanted.
    Discard,
}

/// The submitter's side of an item: an optional fill, and the outcome, reported once.
/// Dropping the hooks is the item's finalizer (the C ABI's `drop(user_data)`).
pub(crate) trait TensorHooks: Send {
    /// Writes the item's inputs: `slots[k]` is its row of input `k`, `sizes[k]` bytes.
    /// On a pool thread, without the GIL.
    fn fill(&mut self, slots: &[*mut u8], sizes: &[usize]) -> Result<()>;
    /// The outcome: `None` once the output rows are written, else why the item failed.
    /// Called at most once, without the GIL unless the item fails on a path that holds it.
    fn complete(&mut self, error: Option<&Error>);
}

/// Fills an item's rows: `slots[k]` is its row of input `k`.
pub type FillFn = Box<dyn FnOnce(&mut [&mut [u8]]) -> Result<()> + Send>;
/// Hears an item's outcome once: `Ok` after its output rows are written.
pub type DoneFn = Box<dyn FnOnce(Result<()>) + Send>;

/// Hooks from Rust closures.
pub(crate) struct RustHooks {
    pub(crate) fill: Option<FillFn>,
    pub(crate) done: Option<DoneFn>,
}

impl TensorHooks for RustHooks {
    fn fill(&mut self, slots: &[*mut u8], sizes: &[usize]) -> Result<()> {
        let fill =
            self.fill.take().ok_or_else(|| Error::internal("the item has no fill (or it ran twice)"))?;
        let mut rows: Vec<&mut [u8]> = slots
            .iter()
            .zip(sizes)
            // SAFETY: each slot is this item's row of one input, `size` bytes, written by
            // this thread alone until its batch is called (the lease's protocol).
            .map(|(&p, &size)| unsafe { std::slice::from_raw_parts_mut(p, size) })
            .collect();
        fill(&mut rows)
    }

    fn complete(&mut self, error: Option<&Error>) {
        if let Some(done) = self.done.take() {
            done(error.map_or(Ok(()), |e| Err(e.clone())));
        }
    }
}

/// A C item's fill: `slots[k]` is its row of input `k`; 0 or a failure code.
pub(crate) type CFillFn = Option<unsafe extern "C" fn(*mut c_void, *const *mut c_void) -> c_int>;
/// A C item's outcome: NULL error once its rows are written.
pub(crate) type CCompleteFn = Option<unsafe extern "C" fn(*mut c_void, *const pysched_error)>;
/// A C item's finalizer.
pub(crate) type CDropFn = Option<unsafe extern "C" fn(*mut c_void)>;

/// A C item's callbacks (the C ABI's `pysched_tensor_item`, whose fn types are these).
/// Dropping it calls `drop(user_data)`.
pub(crate) struct CTensorHooks {
    pub(crate) user_data: *mut c_void,
    pub(crate) fill: CFillFn,
    pub(crate) complete: CCompleteFn,
    pub(crate) drop: CDropFn,
}

// SAFETY: the caller of pysched_tensor_handler_queue guarantees (documented on
// pysched_tensor_item) that user_data and the callbacks may be used from any thread.
unsafe impl Send for CTensorHooks {}

impl TensorHooks for CTensorHooks {
    fn fill(&mut self, slots: &[*mut u8], _sizes: &[usize]) -> Result<()> {
        let Some(fill) = self.fill.take() else {
            return Err(Error::internal("the item has no fill callback (or it ran twice)"));
        };
        // SAFETY: a C callback supplied with this user_data; called once, without the GIL,
        // with one row address per input.
        match unsafe { fill(self.user_data, slots.as_ptr().cast()) } {
            0 => Ok(()),
            rc => Err(Error::new(ErrorKind::Commit, format!("fill callback failed (returned {rc})"))),
        }
    }

    fn complete(&mut self, e: Option<&Error>) {
        let Some(complete) = self.complete.take() else {
            return;
        };
        let err = e.map(|e| pysched_error::new(e.clone()));
        let ptr = err.as_ref().map_or(std::ptr::null(), |e| e as *const pysched_error);
        // SAFETY: called once; the error object lives until after the call.
        unsafe { complete(self.user_data, ptr) };
    }
}

impl Drop for CTensorHooks {
    fn drop(&mut self) {
        if let Some(drop_fn) = self.drop.take() {
            // SAFETY: the finalizer of user_data, called exactly once.
            unsafe { drop_fn(self.user_data) };
        }
    }
}

/// An item's hooks: the C ABI's callbacks inline, Rust closures boxed.
pub(crate) enum Hooks {
    C(CTensorHooks),
    Rust(RustHooks),
}

impl Hooks {
    pub(crate) fn get(&mut self) -> &mut dyn TensorHooks {
        match self {
            Hooks::C(h) => h,
            Hooks::Rust(h) => h,
        }
    }
}

/// A tensor item's job, owned: on the heap, or in the record of the row its inputs were
/// copied to (the intake's: nothing is allocated per item). A job in a record holds its
/// row (`Feed::Placed`), which keeps the record's memory alive. The core keeps it as a
/// `JobSlot::Placed` (it names no tensor type); only `TensorJob`s are ever placed here.
pub(crate) struct TensorBox(PlacedJob);

impl TensorBox {
    /// A job on the heap.
    #[inline]
    pub(crate) fn heap(job: TensorJob) -> TensorBox {
        TensorBox(PlacedJob::boxed(Box::new(job)))
    }

    /// Moves a placed job into its row's record, or onto the heap when the set keeps no
    /// records. PRECONDITION: no other box was made for the job's row.
    #[inline]
    pub(crate) fn in_set(job: TensorJob) -> TensorBox {
        let record = match &job.feed {
            Feed::Placed(hold) => hold.lease().record_ptr(hold.row()),
            _ => None,
        };
        match record.and_then(|p| NonNull::new(p.cast::<TensorJob>())) {
            Some(record) => {
                // SAFETY: the row's record is this job's (the precondition): uninitialized
                // memory of TensorJob's layout inside the set, which the job's own hold
                // keeps alive.
                unsafe { record.as_ptr().write(job) };
                // SAFETY: an InSet box owns its record's job exclusively (each row's record
                // is written once, by the producer that reserved the row, and dropped once,
                // by this box), like a Box. Dropping it moves the job out of the record
                // first (`PlacedJob::in_place`): dropping the job drops its row's hold,
                // which may let the set (and the record) go.
                TensorBox(unsafe { PlacedJob::in_place(record) })
            }
            None => TensorBox::heap(job),
        }
    }

    /// The slot the core keeps the job in.
    #[inline]
    pub(crate) fn into_slot(self) -> JobSlot {
        JobSlot::Placed(self.0)
    }

    /// A tensor handler's job back from its core.
    ///
    /// # Safety
    /// `job` was made by a `TensorBox` (`into_slot`): a tensor handler's core holds no
    /// other placed job, since only `TensorHandler::submit` queues on it.
    #[inline]
    pub(crate) unsafe fn from_placed(job: PlacedJob) -> TensorBox {
        TensorBox(job)
    }

    /// The job of a placed slot of a tensor handler's core, in place.
    ///
    /// # Safety
    /// As `from_placed`; the caller owns the item (JobCell's protocol).
    #[inline]
    pub(crate) unsafe fn job_of(job: &mut PlacedJob) -> &mut TensorJob {
        // SAFETY: the caller's promise: a live TensorJob owned by this slot.
        unsafe { job.as_ptr().cast::<TensorJob>().as_mut() }
    }
}

impl std::ops::Deref for TensorBox {
    type Target = TensorJob;
    #[inline]
    fn deref(&self) -> &TensorJob {
        // SAFETY: a TensorBox's placed job is a TensorJob (`heap`, `in_set`), live until
        // the box drops.
        unsafe { self.0.as_ptr().cast::<TensorJob>().as_ref() }
    }
}

impl std::ops::DerefMut for TensorBox {
    #[inline]
    fn deref_mut(&mut self) -> &mut TensorJob {
        // SAFETY: as in deref; the box is its only owner.
        unsafe { self.0.as_ptr().cast::<TensorJob>().as_mut() }
    }
}

/// Where the job stands; its outcome is reported exactly once.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    Queued,
    /// Its output rows are written: dropping it reports success.
    RowsWritten,
    /// Its outcome was reported (a failure).
    Reported,
}

/// A tensor handler's item.
pub struct TensorJob {
    pub(crate) feed: Feed,
    pub(crate) sink: Sink,
    hooks: Hooks,
    /// The item's row in its batch's set of buffers: from the claim of its batch for a
    /// filled item, once its batch is gathered for the others (until then a placed item's
    /// row is its feed's, see `row_now`).
    pub(crate) slot: Option<(Arc<Lease>, usize)>,
    stage: Stage,
}

impl TensorJob {
    #[inline]
    pub(crate) fn new(feed: Feed, sink: Sink, hooks: Hooks) -> TensorJob {
        TensorJob { feed, sink, hooks, slot: None, stage: Stage::Queued }
    }

    /// A placed item's job: its inputs are in its held row already.
    #[inline]
    pub(crate) fn placed(sink: Sink, hooks: Hooks, hold: RowHold) -> TensorJob {
        TensorJob { feed: Feed::Placed(hold), sink, hooks, slot: None, stage: Stage::Queued }
    }

    /// Where the item's inputs are now: its row of the batch's set once staged (or
    /// claimed, for a fill), before that a placed item's intake row.
    pub(crate) fn row_now(&self) -> Option<(&Lease, usize)> {
        match (&self.slot, &self.feed) {
            (Some((lease, row)), _) => Some((lease, *row)),
            (None, Feed::Placed(hold)) => Some((hold.lease(), hold.row())),
            (None, _) => None,
        }
    }

    pub(crate) fn rows_written(&mut self) {
        self.stage = Stage::RowsWritten;
    }
}

impl Job for TensorJob {
    fn needs_prepare(&self) -> bool {
        matches!(self.feed, Feed::Fill)
    }

    fn prepare(&mut self) -> Result<()> {
        let Some((lease, row)) = &self.slot else {
            return Err(Error::internal("a tensor item was prepared without a batch row"));
        };
        let slots = Ptrs::new((0..lease.item_bytes().len()).map(|k| lease.row_ptr(k, *row) as usize));
        // SAFETY: usize and *mut u8 have the same layout; these are addresses of rows.
        let slots: &[*mut u8] = unsafe { &*(slots.as_slice() as *const [usize] as *const [*mut u8]) };
        self.hooks.get().fill(slots, lease.item_bytes())
    }

    fn starts_group(&self) -> bool {
        matches!(&self.feed, Feed::Placed(hold) if hold.row() == 0)
    }

    fn commit(&mut self, _py: Python<'_>) -> Result<Py<PyAny>> {
        Err(Error::internal("tensor items are gathered into batch tensors, not committed one by one"))
    }

    fn complete(&mut self, _py: Python<'_>, _result: &Bound<'_, PyAny>) -> Result<()> {
        Ok(())
    }

    fn fail(&mut self, error: &Error) {
        if self.stage != Stage::Reported {
            self.stage = Stage::Reported;
            self.hooks.get().complete(Some(error));
        }
    }
}

impl Drop for TensorJob {
    fn drop(&mut self) {
        match self.stage {
            Stage::RowsWritten => self.hooks.get().complete(None),
            Stage::Queued => {
                self.hooks.get().complete(Some(&Error::internal("the item was dropped without an outcome")))
            }
            Stage::Reported => {}
        }
        // The hooks' own Drop (the C ABI's `drop(user_data)`) runs after this.
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_job_fills_two_cache_lines() {
        // The intake's records are 64-byte aligned: a job crosses exactly two lines from
        // the producer's core to the worker's. Growing it costs a third per item.
        assert_eq!(std::mem::size_of::<super::TensorJob>(), 128);
    }
}
