//! CUDA placement of a tensor handler: each batch-buffer set is pinned host memory (where
//! items are gathered or filled) plus device memory; a staged batch is uploaded with one
//! host-to-device copy per input on the handler's stream, and an event marks it ready.
//! A consumer's `__dlpack__(stream=...)` waits for that event on the GPU; device outputs
//! are copied back once per output into pinned staging memory, with one synchronization.
//! A set is reused only after the copies and every consumer stream seen have passed the
//! point where the batch was released.
//!
//! Below `buffers` (which owns the sets): it sees a set's device half (`DeviceSet`) and
//! host addresses, never a `Lease`. May call: `crate::cuda::driver`, `crate::dlpack`,
//! `crate::error`.

use crate::cuda::driver::{
    self, Device, DeviceMemory, Event, PinnedMemory, Stream, CU_STREAM_LEGACY, CU_STREAM_PER_THREAD,
};
use crate::dlpack::{DLDevice, KDL_CUDA};
use crate::error::{Error, Result};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

/// A set's pinned host buffer for one input: its address and what frees it.
pub(crate) type PinnedHost = (*mut u8, Box<dyn Send + Sync>);

/// A handler's device and stream, and its free pinned staging for device outputs.
pub(crate) struct Placement {
    device: &'static Device,
    stream: Arc<Stream>,
    staging: Mutex<Vec<PinnedMemory>>,
}

/// The device half of a buffer set.
pub(crate) struct DeviceSet {
    device: &'static Device,
    inputs: Vec<DeviceMemory>,
    stream: Arc<Stream>,
    /// Recorded after the batch's upload; consumers wait for it.
    ready: Mutex<Option<Event>>,
    /// Streams that consumed the batch's tensors (`__dlpack__(stream=...)`).
    consumers: Mutex<Vec<usize>>,
    /// Recorded when the set was released; passed before it is written again.
    reuse_after: Mutex<Vec<Event>>,
}

impl Placement {
    pub(crate) fn new(ordinal: i32) -> Result<Placement> {
        let device = driver::driver()?.device(ordinal)?;
        Ok(Placement { device, stream: Arc::new(Stream::new(device)?), staging: Mutex::new(Vec::new()) })
    }

    /// A new set: pinned host and device memory for each input's batch.
    pub(crate) fn alloc_set(&self, batch_bytes: &[usize]) -> Result<(Vec<PinnedHost>, DeviceSet)> {
        let mut host = Vec::with_capacity(batch_bytes.len());
        let mut dev = Vec::with_capacity(batch_bytes.len());
        for &bytes in batch_bytes {
            let pinned = PinnedMemory::alloc(self.device, bytes.max(1))?;
            host.push((pinned.ptr, Box::new(pinned) as Box<dyn Send + Sync>));
            dev.push(DeviceMemory::alloc(&self.stream, bytes.max(1))?);
        }
        let set = DeviceSet {
            device: self.device,
            inputs: dev,
            stream: self.stream.clone(),
            ready: Mutex::new(None),
            consumers: Mutex::new(Vec::new()),
            reuse_after: Mutex::new(Vec::new()),
        };
        Ok((host, set))
    }

    /// Uploads the batch's inputs (`host[k]`: input k's pinned host region and the bytes
    /// to copy) to the set's device memory and records the batch's ready event.
    ///
    /// # Safety
    /// `host[k]` is the pinned host buffer `alloc_set` made with `set`'s input k, and the
    /// bytes are at most its size.
    pub(crate) unsafe fn upload(&self, set: Option<&DeviceSet>, host: &[(*const u8, usize)]) -> Result<()> {
        let set = set.ok_or_else(|| Error::internal("a CUDA batch without device buffers"))?;
        for (mem, &(src, bytes)) in set.inputs.iter().zip(host) {
            let src = src as *const c_void;
            self.device.call("cuMemcpyHtoDAsync", |api| {
                // SAFETY: `src` is pinned memory of at least `bytes` (the set's input k),
                // `mem` device memory of at least as much; the copy is ordered on our stream
                // and the set is not written again before `reuse_after` has passed.
                unsafe { (api.memcpy_htod_async)(mem.ptr, src, bytes, self.stream.handle) }
            })?;
        }
        *set.ready.lock().unwrap_or_else(|p| p.into_inner()) = Some(Event::record(&self.stream)?);
        Ok(())
    }

    pub(crate) fn device_ptr(&self, set: Option<&DeviceSet>, k: usize) -> *mut u8 {
        set.map_or(std::ptr::null_mut(), |s| s.inputs[k].ptr as *mut u8)
    }

    /// Makes the device's primary context current on this thread until the guard drops.
    pub(crate) fn enter(&self) -> Result<driver::ContextGuard> {
        self.device.enter()
    }

    pub(crate) fn dl_device(&self) -> DLDevice {
        DLDevice { device_type: KDL_CUDA, device_id: self.device.ordinal }
    }

    pub(crate) fn stream_handle(&self) -> usize {
        self.stream.handle as usize
    }

    /// Copies `bytes` of device memory (ordered on the handler's stream, after the
    /// producer's work, which `__dlpack__(stream=...)` ordered before it) into pinned
    /// staging and waits for it; returns the host copy and what keeps it.
    pub(crate) fn copy_to_host(
        self: &Arc<Self>,
        src: *const c_void,
        bytes: usize,
    ) -> Result<(*const u8, Box<dyn Send>)> {
        let reused = {
            let mut free = self.staging.lock().unwrap_or_else(|p| p.into_inner());
            free.iter().position(|m| m.bytes >= bytes).map(|i| free.swap_remove(i))
        };
        let staging = match reused {
            Some(m) => m,
            None => PinnedMemory::alloc(self.device, bytes.max(1))?,
        };
        self.device.call("cuMemcpyDtoHAsync", |api| {
            // SAFETY: `src` is device memory of `bytes` (a checked output of this device),
            // `staging` pinned memory of at least `bytes`.
            unsafe { (api.memcpy_dtoh_async)(staging.ptr.cast(), src as u64, bytes, self.stream.handle) }
        })?;
        self.stream.synchronize()?;
        let ptr = staging.ptr as *const u8;
        Ok((ptr, Box::new(Staging { memory: Some(staging), placement: self.clone() })))
    }
}

/// Pinned staging lent to one output read; back to the placement's free list on drop.
struct Staging {
    memory: Option<PinnedMemory>,
    placement: Arc<Placement>,
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Some(m) = self.memory.take() {
            let mut free = self.placement.staging.lock().unwrap_or_else(|p| p.into_inner());
            if free.len() < 8 {
                free.push(m);
            }
        }
    }
}

impl DeviceSet {
    /// Called when the last holder of the set's lease let go: marks the point every
    /// stream that used the set must pass before it is written again.
    pub(crate) fn after_use(&self) {
        let mut marks = Vec::new();
        if let Ok(e) = Event::record(&self.stream) {
            marks.push(e);
        }
        let consumers = std::mem::take(&mut *self.consumers.lock().unwrap_or_else(|p| p.into_inner()));
        for s in consumers {
            if let Ok(e) = record_on(self.device, s) {
                marks.push(e);
            }
        }
        *self.reuse_after.lock().unwrap_or_else(|p| p.into_inner()) = marks;
        *self.ready.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Waits (host side) until the set's last use has passed on every stream.
    pub(crate) fn before_reuse(&self) -> Result<()> {
        let marks = std::mem::take(&mut *self.reuse_after.lock().unwrap_or_else(|p| p.into_inner()));
        for e in marks {
            e.synchronize()?;
        }
        Ok(())
    }
}

impl Drop for DeviceSet {
    fn drop(&mut self) {
        // Freed memory must not be freed under a copy or kernel still reading it.
        let _ = self.before_reuse();
    }
}

/// An event recorded on another party's stream (a consumer's).
fn record_on(device: &'static Device, stream: usize) -> Result<Event> {
    Event::record_on(device, stream as driver::CUstream)
}

/// Orders a consumer's stream after the batch's upload, following the DLPack Python
/// specification for CUDA: None = the legacy default stream, 1 = legacy default,
/// 2 = per-thread default, -1 = no synchronization asked, 0 is disallowed, anything else
/// is a `cudaStream_t` of this device.
pub(crate) fn order_consumer(set: Option<&DeviceSet>, stream: Option<i64>) -> PyResult<()> {
    let consumer: driver::CUstream = match stream {
        Some(-1) => return Ok(()),
        None | Some(1) => CU_STREAM_LEGACY,
        Some(2) => CU_STREAM_PER_THREAD,
        Some(0) => {
            return Err(PyValueError::new_err(
                "stream=0 is ambiguous and disallowed by the DLPack protocol; pass 1 for the legacy default \
                 stream or 2 for the per-thread default stream",
            ))
        }
        Some(s) if s < 0 => return Err(PyValueError::new_err(format!("stream={s} is not a CUDA stream"))),
        Some(s) => s as usize as driver::CUstream,
    };
    let Some(set) = set else {
        return Err(PyRuntimeError::new_err("a CUDA batch tensor without device buffers"));
    };
    if let Some(ready) = set.ready.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
        ready.make_wait(consumer).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    }
    let mut consumers = set.consumers.lock().unwrap_or_else(|p| p.into_inner());
    if !consumers.contains(&(consumer as usize)) && !std::ptr::eq(consumer, set.stream.handle) {
        consumers.push(consumer as usize);
    }
    Ok(())
}
