//! GIL-free staging of host data to the GPU: one stager per handler (or per caller)
//! owns a non-blocking CUDA stream and a ring of pinned host memory. `upload` (the
//! prepare phase, on a pool thread without the GIL) copies the host data into the ring
//! and queues an asynchronous host-to-device copy on the stream, so the copy runs while
//! the previous batch executes in Python; the commit phase only wraps the tensor in a
//! Python object, whose `__dlpack__(stream=...)` makes the consumer's stream wait for
//! the copy on the GPU. Nothing here synchronizes the device.
//!
//! May call: `driver`, `tensor`, `crate::error`, `crate::runtime` (GIL release).

use super::driver::{self, Device, DeviceMemory, Event, PinnedMemory, Stream};
use super::tensor::{as_bytes, DeviceTensor, Element, Layout, Storage, TensorDesc};
use crate::error::{Error, Result};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// Default size of a stager's pinned ring.
pub const DEFAULT_PINNED_BYTES: usize = 32 << 20;
/// Ring slots start at multiples of this (DMA-friendly alignment).
const SLOT_ALIGN: usize = 256;

/// Marks when a copy reading a ring segment has finished (an [`Event`]; a fake in tests).
trait CopyDone {
    fn is_done(&self) -> Result<bool>;
    fn synchronize(&self) -> Result<()>;
}

impl CopyDone for Event {
    fn is_done(&self) -> Result<bool> {
        Event::is_done(self)
    }
    fn synchronize(&self) -> Result<()> {
        Event::synchronize(self)
    }
}

/// A region of the ring still read by a copy that `done` marks finished.
struct Segment<D> {
    start: usize,
    done: Arc<D>,
}

/// Which regions of the pinned ring are free; guarded by `Stager::ring`. Segments are
/// handed out in ring order, so the oldest copy (the front of `in_flight`) is the one
/// whose region comes next.
struct Ring<D = Event> {
    memory: Option<PinnedMemory>,
    capacity: usize,
    /// Where the next segment starts, if it fits before the end.
    head: usize,
    in_flight: VecDeque<Segment<D>>,
}

impl<D: CopyDone> Ring<D> {
    fn new(capacity: usize) -> Ring<D> {
        Ring { memory: None, capacity, head: 0, in_flight: VecDeque::new() }
    }

    /// Retires finished copies from the front; never blocks.
    fn reclaim(&mut self) -> Result<()> {
        while let Some(front) = self.in_flight.front() {
            if !front.done.is_done()? {
                break;
            }
            self.in_flight.pop_front();
        }
        Ok(())
    }

    /// Finds room for `len` bytes (`0 < len <= capacity`), waiting for the oldest copies
    /// when the ring is full. Does not mark the room used: see `commit`.
    fn reserve(&mut self, len: usize) -> Result<usize> {
        loop {
            self.reclaim()?;
            let (tail, wrapped) = match (self.in_flight.front(), self.in_flight.back()) {
                (Some(front), Some(back)) => (front.start, back.start < front.start),
                _ => {
                    self.head = 0;
                    return Ok(0);
                }
            };
            if !wrapped {
                // Used: [tail, head).
                if self.head + len <= self.capacity {
                    return Ok(self.head);
                }
                if len <= tail {
                    return Ok(0);
                }
            } else if self.head + len <= tail {
                // Used: [tail, capacity) and [0, head).
                return Ok(self.head);
            }
            if let Some(oldest) = self.in_flight.pop_front() {
                oldest.done.synchronize()?;
            }
        }
    }

    fn commit(&mut self, start: usize, len: usize, done: Arc<D>) {
        self.head = start + len;
        self.in_flight.push_back(Segment { start, done });
    }
}

/// A CUDA stream and pinned staging memory for uploads that overlap with Python.
/// `Send + Sync`: any number of pool threads may upload through one stager at once.
pub struct Stager {
    device: &'static Device,
    stream: Arc<Stream>,
    ring: Mutex<Ring>,
}

impl Stager {
    /// A stager on `device` (-1: the current device, else 0) with `pinned_bytes` of
    /// pinned ring (0: [`DEFAULT_PINNED_BYTES`]), allocated on first upload. Uploads
    /// larger than the ring are copied from the caller's memory directly.
    pub fn new(device: i32, pinned_bytes: usize) -> Result<Stager> {
        if device < -1 {
            return Err(Error::invalid_argument(format!(
                "device {device} is not a device index (or -1 for the current device)"
            )));
        }
        let capacity = if pinned_bytes == 0 {
            DEFAULT_PINNED_BYTES
        } else {
            pinned_bytes
                .div_ceil(SLOT_ALIGN)
                .checked_mul(SLOT_ALIGN)
                .ok_or_else(|| Error::invalid_argument(format!("pinned_bytes {pinned_bytes} is too large")))?
        };
        let device = driver::driver()?.device(device)?;
        let stream = Arc::new(Stream::new(device)?);
        Ok(Stager { device, stream, ring: Mutex::new(Ring::new(capacity)) })
    }

    pub fn device(&self) -> i32 {
        self.device.ordinal
    }

    /// The stager's `CUstream` handle, for callers that queue their own work behind the
    /// uploads.
    pub fn stream_handle(&self) -> usize {
        self.stream.handle as usize
    }

    /// Size of the pinned ring in bytes.
    pub fn pinned_bytes(&self) -> usize {
        self.ring.lock().unwrap_or_else(|p| p.into_inner()).capacity
    }

    /// Stages `host` as a tensor described by `desc` (whose device must be -1 or this
    /// stager's). Returns once `host` has been read (it may be reused at once); the
    /// device copy may still be running: the tensor carries an event that consumers are
    /// ordered after. Blocks only when the pinned ring is full of copies in flight.
    /// Call without the GIL (it neither needs nor takes it).
    pub fn upload(&self, host: &[u8], desc: &TensorDesc) -> Result<DeviceTensor> {
        let layout: Layout = desc.layout(host.len())?;
        if desc.device != -1 && desc.device != self.device.ordinal {
            return Err(Error::invalid_argument(format!(
                "tensor device {} differs from the stager's device {}",
                desc.device, self.device.ordinal
            )));
        }
        let len = layout.span_bytes;
        if len == 0 {
            let storage = Storage::Empty(self.device);
            return Ok(DeviceTensor::assemble(storage, desc, layout, None, None));
        }
        // Stream-ordered on the stager's stream, ahead of the copy that fills it.
        let memory = DeviceMemory::alloc(&self.stream, len)?;
        let src = &host[..len];
        let done = {
            let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
            if len <= ring.capacity {
                self.upload_pinned(&mut ring, &memory, src)?
            } else {
                drop(ring);
                // Too large for the ring: the driver stages pageable memory itself and
                // returns once `src` has been read.
                self.copy_async(&memory, src.as_ptr(), len)?;
                Arc::new(Event::record(&self.stream)?)
            }
        };
        let storage = Storage::Device(memory);
        Ok(DeviceTensor::assemble(storage, desc, layout, Some(done), Some(self.stream.clone())))
    }

    /// Typed convenience for [`Stager::upload`] (row-major, on the stager's device).
    pub fn upload_slice<T: Element>(&self, data: &[T], shape: &[i64]) -> Result<DeviceTensor> {
        self.upload(as_bytes(data), &TensorDesc::new(T::DTYPE, shape))
    }

    fn upload_pinned(&self, ring: &mut Ring, memory: &DeviceMemory, src: &[u8]) -> Result<Arc<Event>> {
        if ring.memory.is_none() {
            ring.memory = Some(PinnedMemory::alloc(self.device, ring.capacity)?);
        }
        let slot_len = src.len().div_ceil(SLOT_ALIGN) * SLOT_ALIGN;
        let slot_len = slot_len.min(ring.capacity);
        let start = ring.reserve(slot_len)?;
        let pinned = ring.memory.as_ref().ok_or_else(|| Error::internal("pinned ring missing"))?;
        debug_assert!(start + slot_len <= pinned.bytes);
        // SAFETY: [start, start + src.len()) lies inside the pinned buffer (reserve keeps
        // segments within capacity) and no copy in flight reads it (reserve waited for
        // any that did); the ring mutex is held, so no other upload writes it.
        let staged = unsafe {
            let dst = pinned.ptr.add(start);
            std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len());
            dst
        };
        self.copy_async(memory, staged, src.len())?;
        let done = Arc::new(Event::record(&self.stream)?);
        ring.commit(start, slot_len, done.clone());
        Ok(done)
    }

    fn copy_async(&self, memory: &DeviceMemory, src: *const u8, len: usize) -> Result<()> {
        // SAFETY: src is readable for len bytes until the copy has read it (pinned ring:
        // until its event completes; pageable memory: the driver reads it before
        // returning); memory holds at least len bytes.
        self.device.call("cuMemcpyHtoDAsync", |api| unsafe {
            (api.memcpy_htod_async)(memory.ptr, src.cast(), len, self.stream.handle)
        })
    }

    /// Blocks until every upload queued so far has reached the device (this stager's
    /// stream only). Releases the GIL while waiting if the caller holds it.
    pub fn synchronize(&self) -> Result<()> {
        crate::runtime::without_gil(|| self.stream.synchronize())
    }
}

impl Drop for Stager {
    fn drop(&mut self) {
        // The pinned ring must outlive every copy reading from it. If the wait fails the
        // device is unusable anyway; the memory is leaked rather than freed under a copy.
        let ring = self.ring.get_mut().unwrap_or_else(|p| p.into_inner());
        if self.stream.synchronize().is_err() {
            if let Some(memory) = ring.memory.take() {
                std::mem::forget(memory);
            }
        }
        ring.in_flight.clear();
    }
}

impl std::fmt::Debug for Stager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stager")
            .field("device", &self.device.ordinal)
            .field("stream", &self.stream.handle)
            .finish()
    }
}

#[allow(dead_code)]
fn assert_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<Stager>();
    check::<DeviceTensor>();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

    /// A copy that finishes when the test says so; `synchronize` finishes it.
    #[derive(Default)]
    struct FakeCopy {
        done: AtomicBool,
        waited: AtomicBool,
    }

    impl CopyDone for FakeCopy {
        fn is_done(&self) -> Result<bool> {
            Ok(self.done.load(Relaxed))
        }
        fn synchronize(&self) -> Result<()> {
            self.waited.store(true, Relaxed);
            self.done.store(true, Relaxed);
            Ok(())
        }
    }

    /// A ring plus every slot it handed out, to check slots against copies in flight.
    struct Checked {
        ring: Ring<FakeCopy>,
        slots: Vec<(usize, usize, Arc<FakeCopy>)>,
    }

    impl Checked {
        fn new(capacity: usize) -> Checked {
            Checked { ring: Ring::new(capacity), slots: Vec::new() }
        }

        /// Reserves and commits `len` bytes; the slot must lie inside the ring and overlap
        /// no slot whose copy is still in flight.
        fn take(&mut self, len: usize) -> (usize, Arc<FakeCopy>) {
            let start = self.ring.reserve(len).unwrap();
            assert!(start + len <= self.ring.capacity, "slot {start}+{len} outside the ring");
            for (s, l, copy) in &self.slots {
                let disjoint = start + len <= *s || start >= s + l;
                assert!(
                    disjoint || copy.done.load(Relaxed),
                    "slot {start}+{len} overlaps a copy in flight at {s}+{l}"
                );
            }
            self.slots.retain(|(_, _, copy)| !copy.done.load(Relaxed));
            let done = Arc::new(FakeCopy::default());
            self.ring.commit(start, len, done.clone());
            self.slots.push((start, len, done.clone()));
            (start, done)
        }
    }

    #[test]
    fn fills_wraps_and_waits_only_when_full() {
        let mut ring = Checked::new(1024);
        let (a, ca) = ring.take(400);
        let (b, cb) = ring.take(400);
        assert_eq!((a, b), (0, 400));
        // 224 bytes left at the end: a 300-byte slot must wait for the oldest copy and wrap.
        let (c, _) = ring.take(300);
        assert_eq!(c, 0);
        assert!(ca.waited.load(Relaxed), "reused a region before its copy finished");
        assert!(!cb.waited.load(Relaxed));
        // [300, 400) is free now; 100 bytes fit before the copy at 400.
        let (d, _) = ring.take(100);
        assert_eq!(d, 300);
        // Finished copies are reclaimed without waiting.
        cb.done.store(true, Relaxed);
        let (e, _) = ring.take(500);
        assert_eq!(e, 400);
    }

    #[test]
    fn random_sizes_never_overlap_copies_in_flight() {
        let mut ring = Checked::new(4096);
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut live: Vec<Arc<FakeCopy>> = Vec::new();
        for _ in 0..20_000 {
            let len = 1 + (next() % 2048) as usize;
            let (_, copy) = ring.take(len);
            live.push(copy);
            // Let copies finish in any order (events of one stream finish in order; the
            // ring must not depend on it).
            if next() % 3 == 0 && !live.is_empty() {
                let i = (next() % live.len() as u64) as usize;
                live.swap_remove(i).done.store(true, Relaxed);
            }
        }
    }

    #[test]
    fn an_empty_ring_starts_over() {
        let mut ring = Checked::new(1000);
        let (_, c) = ring.take(700);
        c.done.store(true, Relaxed);
        assert_eq!(ring.take(700).0, 0);
    }
}
