//! Batch buffers: per input, one contiguous `(batch_size, *item_shape)` region in host
//! memory, taken from a per-handler pool. A batch holds its buffers through a [`Lease`];
//! so does every Python view and DLPack export made of them. The buffers go back to the
//! pool only when the last holder lets go, so a function that keeps an input alive never
//! sees it overwritten; the pool then makes a new set for the next batch.
//!
//! May call: `spec`, `cuda` (a set's device half, pinned memory, uploads), `crate::error`.

use super::cuda::{DeviceSet, PinnedHost, Placement};
use super::spec::TensorSpec;
use crate::error::{Error, Result};
use crossbeam_utils::CachePadded;
use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicUsize, Ordering::Acquire, Ordering::Relaxed, Ordering::Release};
use std::sync::{Arc, Mutex, Weak};

/// Batch buffers start at multiples of this (cache lines, DMA, any element type).
const BUFFER_ALIGN: usize = 256;

/// One input's batch region: plain host memory, or (CUDA placement) memory the driver
/// pinned, owned by `pinned`.
pub(crate) struct HostBuffer {
    ptr: *mut u8,
    owner: Owner,
}

enum Owner {
    Heap(Layout),
    Pinned(#[allow(dead_code)] Box<dyn Send + Sync>),
}

// SAFETY: the buffer is plain memory owned by this value; who may write which bytes when
// is the lease's protocol (see `Lease`).
unsafe impl Send for HostBuffer {}
unsafe impl Sync for HostBuffer {}

impl HostBuffer {
    fn new(bytes: usize) -> Result<HostBuffer> {
        let layout = Layout::from_size_align(bytes.max(1), BUFFER_ALIGN)
            .map_err(|_| Error::invalid_argument(format!("a batch buffer of {bytes} bytes is too large")))?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc(layout) };
        if ptr.is_null() {
            return Err(Error::internal(format!("out of memory allocating a {bytes}-byte batch buffer")));
        }
        Ok(HostBuffer { ptr, owner: Owner::Heap(layout) })
    }

    /// Memory at `ptr` that `owner` keeps (and frees when dropped).
    fn pinned((ptr, owner): PinnedHost) -> HostBuffer {
        HostBuffer { ptr, owner: Owner::Pinned(owner) }
    }

    pub(crate) fn ptr(&self) -> *mut u8 {
        self.ptr
    }
}

impl Drop for HostBuffer {
    fn drop(&mut self) {
        if let Owner::Heap(layout) = self.owner {
            // SAFETY: allocated in `new` with this layout, freed once.
            unsafe { std::alloc::dealloc(self.ptr, layout) };
        }
    }
}

/// The buffers of one batch: one per input, and their device half for CUDA placement;
/// on the host also one record per row, where the intake keeps the job of the item it
/// copied into that row (no allocation per item).
pub(crate) struct BatchBuffers {
    pub(crate) inputs: Vec<HostBuffer>,
    pub(crate) device: Option<DeviceSet>,
    records: Option<HostBuffer>,
}

/// A handler's free batch buffers. Guarded by its own mutex, taken once per batch.
pub(crate) struct BufferPool {
    /// Bytes per item of each input.
    item_bytes: Arc<[usize]>,
    batch_size: usize,
    free: Mutex<Vec<BatchBuffers>>,
    /// Free sets kept beyond this are released (a function that held views for a while
    /// made the pool grow; it shrinks back).
    keep_free: usize,
    device: Option<Arc<Placement>>,
    /// The layout of one row's record (host sets only).
    record: Option<Layout>,
}

impl BufferPool {
    pub(crate) fn new(
        inputs: &[TensorSpec],
        batch_size: usize,
        keep_free: usize,
        device: Option<Arc<Placement>>,
        record: Option<Layout>,
    ) -> Arc<BufferPool> {
        Arc::new(BufferPool {
            item_bytes: inputs.iter().map(TensorSpec::item_bytes).collect::<Vec<_>>().into(),
            batch_size,
            free: Mutex::new(Vec::new()),
            keep_free: keep_free.max(1),
            device,
            record,
        })
    }

    /// A lease on a free set of buffers (a new set when none is free).
    pub(crate) fn lease(self: &Arc<Self>) -> Result<Arc<Lease>> {
        let reused = {
            let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
            // On the host the set used last is warmest in the caches; on a GPU the
            // oldest is likeliest to have finished every copy and kernel that read it.
            match (&self.device, free.is_empty()) {
                (_, true) => None,
                (None, false) => free.pop(),
                (Some(_), false) => Some(free.remove(0)),
            }
        };
        let buffers = match reused {
            Some(b) => {
                if let Some(d) = &b.device {
                    d.before_reuse()?;
                }
                b
            }
            None => self.new_set()?,
        };
        Ok(Arc::new(Lease {
            buffers: Some(buffers),
            record: self.record,
            item_bytes: self.item_bytes.clone(),
            staged_rows: AtomicUsize::new(NOT_STAGED),
            rows_held: CachePadded::new(AtomicUsize::new(0)),
            pool: Arc::downgrade(self),
        }))
    }

    fn new_set(&self) -> Result<BatchBuffers> {
        let batch_bytes: Vec<usize> = self.item_bytes.iter().map(|&b| b * self.batch_size).collect();
        let records = match self.record {
            // BUFFER_ALIGN is a multiple of any record's alignment the intake asks for.
            Some(r) if r.align() <= BUFFER_ALIGN => {
                Some(HostBuffer::new(r.pad_to_align().size() * self.batch_size)?)
            }
            _ => None,
        };
        match &self.device {
            None => Ok(BatchBuffers {
                inputs: batch_bytes.iter().map(|&b| HostBuffer::new(b)).collect::<Result<_>>()?,
                device: None,
                records,
            }),
            Some(placement) => {
                let (inputs, device) = placement.alloc_set(&batch_bytes)?;
                let inputs = inputs.into_iter().map(HostBuffer::pinned).collect();
                Ok(BatchBuffers { inputs, device: Some(device), records })
            }
        }
    }

    /// Sets of buffers in the pool now (for tests: a pool that never stops growing leaks).
    pub(crate) fn free_sets(&self) -> usize {
        self.free.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn give_back(&self, buffers: BatchBuffers) {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if free.len() < self.keep_free {
            free.push(buffers);
        }
    }
}

/// Where the copied inputs of a host-placed handler's items go when they are queued: the
/// next free row of an open set of batch buffers. A batch whose items hold consecutive
/// rows of one set then runs on those rows as they are, with no gather and no buffer of
/// its own per item; and the handler core ends a batch before an item that opens a new
/// set (`starts_group`), so batches line up with the sets.
pub(crate) struct Intake {
    pool: Arc<BufferPool>,
    /// The set being filled and its next free row. Held for a few instructions per item.
    open: Mutex<Option<OpenSet>>,
}

struct OpenSet {
    lease: Arc<Lease>,
    next: usize,
}

impl OpenSet {
    /// Gives back the rows never handed out (the set's rows were charged when it opened).
    fn close(self, batch_size: usize) {
        let unused = batch_size - self.next;
        if unused > 0 {
            // SAFETY: the intake charged the set with every row and handed out `next`.
            unsafe { release_rows(NonNull::from(&*self.lease), unused) };
        }
    }
}

impl Intake {
    pub(crate) fn new(pool: Arc<BufferPool>) -> Intake {
        Intake { pool, open: Mutex::new(None) }
    }

    /// A row of its own for one item. The caller writes the row (each input's item bytes)
    /// before the item is queued; nobody else touches it until the item's batch is called.
    /// The hold keeps the set, and so the row's record, until dropped; the intake charged
    /// the set with all its rows when it opened it, so handing out or dropping a hold
    /// touches no count shared with the other side of the queue.
    pub(crate) fn reserve(&self) -> Result<RowHold> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(set) = open.as_mut() {
            if set.next < self.pool.batch_size {
                set.next += 1;
                return Ok(RowHold { lease: NonNull::from(&*set.lease), row: set.next - 1 });
            }
        }
        // The full set stays with its items and views; it returns to the pool after them.
        let lease = self.pool.lease()?;
        lease.rows_held.store(self.pool.batch_size, Relaxed);
        // One reference for all the rows, given back by the last row's hold.
        let rows =
            NonNull::new(Arc::into_raw(lease.clone()).cast_mut()).expect("Arc::into_raw is never null");
        if let Some(full) = open.replace(OpenSet { lease, next: 1 }) {
            full.close(self.pool.batch_size);
        }
        Ok(RowHold { lease: rows, row: 0 })
    }
}

impl Drop for Intake {
    fn drop(&mut self) {
        if let Some(set) = self.open.get_mut().unwrap_or_else(|p| p.into_inner()).take() {
            set.close(self.pool.batch_size);
        }
    }
}

/// An item's hold on its row of a set the intake opened: keeps the set (and the row's
/// record, where the item's job lives) alive. Dropping the last row's hold lets the set
/// go, like dropping an `Arc<Lease>`.
pub(crate) struct RowHold {
    lease: NonNull<Lease>,
    row: usize,
}

// SAFETY: a hold is a counted reference to a `Lease` (Send + Sync), like an Arc.
unsafe impl Send for RowHold {}
unsafe impl Sync for RowHold {}

impl RowHold {
    pub(crate) fn lease(&self) -> &Lease {
        // SAFETY: the set lives while any of its rows is held.
        unsafe { self.lease.as_ref() }
    }

    pub(crate) fn row(&self) -> usize {
        self.row
    }

    /// A shared reference to the set (for a batch that runs on its rows).
    pub(crate) fn to_arc(&self) -> Arc<Lease> {
        // SAFETY: the pointer came from Arc::into_raw and the rows' reference is alive
        // while this hold is: one more strong reference, then adopted.
        unsafe {
            Arc::increment_strong_count(self.lease.as_ptr());
            Arc::from_raw(self.lease.as_ptr())
        }
    }
}

impl Drop for RowHold {
    fn drop(&mut self) {
        // SAFETY: this hold is one of the rows the intake charged the set with.
        unsafe { release_rows(self.lease, 1) };
    }
}

/// Lets go of `n` of a set's rows; the last one gives back the rows' `Arc` reference.
///
/// # Safety
/// `lease` came from `Arc::into_raw` in `Intake::reserve`, and the caller owns `n` of the
/// rows it was charged with.
unsafe fn release_rows(lease: NonNull<Lease>, n: usize) {
    // SAFETY: the rows' reference keeps the lease alive until the count reaches zero.
    if unsafe { lease.as_ref() }.rows_held.fetch_sub(n, Release) == n {
        fence(Acquire);
        // SAFETY: the last row: the reference taken by Arc::into_raw, given back once.
        drop(unsafe { Arc::from_raw(lease.as_ptr()) });
    }
}

/// A batch's hold on a set of buffers, shared by the batch's items (each owns its row),
/// the Python views of the batch and their DLPack exports.
///
/// Who writes what: before the Python call, each item's row of each input is written once,
/// by the one thread that owns the item (its fill, the gather, or its producer through the
/// intake), ordered before the call by the item's hand-over through the handler's queue
/// and pipeline; from the call on, only Python (through the views of the batch's rows)
/// touches those rows, until the last holder drops its lease. A set filled through the
/// intake serves several batches, each its own rows: a row is never written twice while
/// the set is leased.
pub(crate) struct Lease {
    buffers: Option<BatchBuffers>,
    record: Option<Layout>,
    item_bytes: Arc<[usize]>,
    /// The batch's rows once its inputs are complete and compacted (`NOT_STAGED` before).
    staged_rows: AtomicUsize,
    /// Rows of a set the intake opened that are still held (`RowHold`), on a line of its
    /// own: the side that finishes items counts it down while the producers read the rest.
    rows_held: CachePadded<AtomicUsize>,
    pool: Weak<BufferPool>,
}

const NOT_STAGED: usize = usize::MAX;

impl Lease {
    /// The start of input `k`'s batch region.
    pub(crate) fn input_ptr(&self, k: usize) -> *mut u8 {
        self.buffers.as_ref().map_or(std::ptr::null_mut(), |b| b.inputs[k].ptr())
    }

    /// Row `row` of input `k`. PRECONDITION: `row < batch_size`.
    pub(crate) fn row_ptr(&self, k: usize, row: usize) -> *mut u8 {
        // SAFETY: within the input's region of batch_size rows (the precondition).
        unsafe { self.input_ptr(k).add(row * self.item_bytes[k]) }
    }

    /// Row `row`'s record (uninitialized memory of the pool's record layout), or None when
    /// the pool keeps no records. PRECONDITION: `row < batch_size`.
    pub(crate) fn record_ptr(&self, row: usize) -> Option<*mut u8> {
        let (records, layout) = (self.buffers.as_ref()?.records.as_ref()?, self.record?);
        // SAFETY: within the records' region of batch_size records (the precondition).
        Some(unsafe { records.ptr().add(row * layout.pad_to_align().size()) })
    }

    pub(crate) fn device_set(&self) -> Option<&DeviceSet> {
        self.buffers.as_ref().and_then(|b| b.device.as_ref())
    }

    pub(crate) fn item_bytes(&self) -> &[usize] {
        &self.item_bytes
    }

    pub(crate) fn staged_rows(&self) -> Option<usize> {
        match self.staged_rows.load(Acquire) {
            NOT_STAGED => None,
            n => Some(n),
        }
    }

    pub(crate) fn mark_staged(&self, rows: usize) {
        self.staged_rows.store(rows, Release);
    }

    /// Uploads the first `rows` rows of each input (CUDA placement) and records the
    /// batch's ready event.
    pub(crate) fn upload(&self, device: &Placement, rows: usize) -> Result<()> {
        let host: Vec<(*const u8, usize)> = (0..self.item_bytes.len())
            .map(|k| (self.input_ptr(k) as *const u8, rows * self.item_bytes[k]))
            .collect();
        // SAFETY: input k's region is the pinned buffer `alloc_set` made with this set's
        // device half, and `rows` is at most the batch size.
        unsafe { device.upload(self.device_set(), &host) }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let (Some(buffers), Some(pool)) = (self.buffers.take(), self.pool.upgrade()) {
            if let Some(d) = &buffers.device {
                d.after_use();
            }
            pool.give_back(buffers);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;

    #[test]
    fn a_set_returns_only_when_every_holder_let_go() {
        let pool = BufferPool::new(&[TensorSpec::new(DType::F32, &[4])], 8, 2, None, None);
        let first = pool.lease().unwrap();
        let view = first.clone();
        let p = first.input_ptr(0);
        drop(first);
        assert_eq!(pool.free_sets(), 0, "a view still holds the buffers");
        let second = pool.lease().unwrap();
        assert_ne!(second.input_ptr(0), p, "a held buffer is never handed out again");
        drop(view);
        assert_eq!(pool.free_sets(), 1);
        let third = pool.lease().unwrap();
        assert_eq!(third.input_ptr(0), p, "a released buffer is reused");
        drop((second, third));
        let extra: Vec<_> = (0..5).map(|_| pool.lease().unwrap()).collect();
        drop(extra);
        assert_eq!(pool.free_sets(), 2, "the pool keeps at most keep_free sets");
        assert_eq!(p as usize % BUFFER_ALIGN, 0);
    }
}
