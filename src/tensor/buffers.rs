//! Batch buffers: per input, one contiguous `(batch_size, *item_shape)` region in host
//! memory, taken from a per-handler pool. A batch holds its buffers through a [`Lease`];
//! so does every Python view and DLPack export made of them. The buffers go back to the
//! pool only when the last holder lets go, so a function that keeps an input alive never
//! sees it overwritten; the pool then makes a new set for the next batch.

use super::cuda::{DeviceSet, Placement};
use super::spec::TensorSpec;
use crate::error::{Error, Result};
use std::alloc::Layout;
use std::sync::atomic::{AtomicUsize, Ordering::Acquire, Ordering::Release};
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
    #[allow(dead_code)] // Only CUDA placement pins.
    pub(crate) fn pinned(ptr: *mut u8, owner: Box<dyn Send + Sync>) -> HostBuffer {
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
    open: Mutex<Option<(Arc<Lease>, usize)>>,
}

impl Intake {
    pub(crate) fn new(pool: Arc<BufferPool>) -> Intake {
        Intake { pool, open: Mutex::new(None) }
    }

    /// A row of its own for one item: the set and the row's index. The caller writes the
    /// row (each input's item bytes) before the item is queued; nobody else touches it
    /// until the item's batch is called.
    pub(crate) fn reserve(&self) -> Result<(Arc<Lease>, usize)> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((lease, next)) = open.as_mut() {
            if *next < self.pool.batch_size {
                *next += 1;
                return Ok((lease.clone(), *next - 1));
            }
        }
        // The full set stays with its items and views; it returns to the pool after them.
        let lease = self.pool.lease()?;
        *open = Some((lease.clone(), 1));
        Ok((lease, 0))
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
