//! A tensor in device memory, made from a host buffer: its description (dtype, shape,
//! strides, device), its storage (shared by every handle and DLPack export, freed once
//! with the last of them) and, for staged uploads, the event that marks its data ready.
//! Its DLPack exports are added by `dlpack`, its Python object by `pyobject`, both above
//! it.
//!
//! May call: `driver`, `crate::dlpack` (the ABI structs), `crate::dtype`, `crate::error`,
//! `crate::runtime` (GIL release).

use super::driver::{self, CUstream, Device, DeviceMemory, Event, Stream, CU_STREAM_LEGACY};
use crate::dlpack::{DLDevice, KDL_CPU, KDL_CUDA};
use crate::error::{Error, Result};
use std::sync::{Arc, OnceLock};

pub(crate) use crate::dtype::as_bytes;
pub use crate::dtype::{DType, Element};

/// Most dimensions a tensor may have.
pub const MAX_NDIM: usize = 64;

/// What to make: element type, shape, optional strides (in elements, DLPack style;
/// `None` = row-major contiguous) and device (-1 = the current device, else device 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorDesc {
    pub dtype: DType,
    pub shape: Vec<i64>,
    pub strides: Option<Vec<i64>>,
    pub device: i32,
}

/// A checked description: strides filled in, and the bytes the data spans.
pub(crate) struct Layout {
    pub(crate) strides: Vec<i64>,
    pub(crate) span_bytes: usize,
}

impl TensorDesc {
    /// A row-major tensor on the current device.
    pub fn new(dtype: DType, shape: &[i64]) -> TensorDesc {
        TensorDesc { dtype, shape: shape.to_vec(), strides: None, device: -1 }
    }

    pub fn with_strides(mut self, strides: &[i64]) -> TensorDesc {
        self.strides = Some(strides.to_vec());
        self
    }

    pub fn on_device(mut self, device: i32) -> TensorDesc {
        self.device = device;
        self
    }

    /// Validates the description against a host buffer of `host_bytes`: without strides
    /// the buffer must hold exactly the tensor; with strides, at least the span they
    /// reach (the first `span_bytes` are copied).
    pub(crate) fn layout(&self, host_bytes: usize) -> Result<Layout> {
        let ndim = self.shape.len();
        if ndim > MAX_NDIM {
            return Err(Error::invalid_argument(format!("ndim {ndim} exceeds the maximum of {MAX_NDIM}")));
        }
        if self.device < -1 {
            return Err(Error::invalid_argument(format!(
                "device {} is not a device index (or -1 for the current device)",
                self.device
            )));
        }
        if let Some(d) = self.shape.iter().find(|&&d| d < 0) {
            return Err(Error::invalid_argument(format!(
                "shape {:?} has a negative dimension {d}",
                self.shape
            )));
        }
        let overflow = || Error::invalid_argument(format!("shape {:?} is too large", self.shape));
        let strides = match &self.strides {
            Some(s) => {
                if s.len() != ndim {
                    return Err(Error::invalid_argument(format!(
                        "{} strides given for {ndim} dimensions",
                        s.len()
                    )));
                }
                if let Some(st) = s.iter().find(|&&st| st < 0) {
                    return Err(Error::invalid_argument(format!(
                        "strides {s:?} have a negative stride {st}"
                    )));
                }
                s.clone()
            }
            None => {
                let mut strides = vec![0i64; ndim];
                let mut acc: i64 = 1;
                for i in (0..ndim).rev() {
                    strides[i] = acc;
                    acc = acc.checked_mul(self.shape[i].max(1)).ok_or_else(overflow)?;
                }
                strides
            }
        };
        let empty = self.shape.contains(&0);
        let span_elems: i64 = if empty {
            0
        } else {
            let mut last: i64 = 0;
            for (&d, &s) in self.shape.iter().zip(&strides) {
                last = (d - 1).checked_mul(s).and_then(|x| last.checked_add(x)).ok_or_else(overflow)?;
            }
            last.checked_add(1).ok_or_else(overflow)?
        };
        let span_bytes = usize::try_from(span_elems)
            .ok()
            .and_then(|n| n.checked_mul(self.dtype.size_bytes()))
            .filter(|&n| n <= isize::MAX as usize)
            .ok_or_else(overflow)?;
        let fits = if self.strides.is_none() { host_bytes == span_bytes } else { host_bytes >= span_bytes };
        if !fits {
            return Err(Error::invalid_argument(format!(
                "host buffer has {host_bytes} bytes; a {} tensor of shape {:?}{} needs {}{span_bytes}",
                self.dtype.name(),
                self.shape,
                self.strides.as_ref().map(|s| format!(" and strides {s:?}")).unwrap_or_default(),
                if self.strides.is_none() { "" } else { "at least " },
            )));
        }
        Ok(Layout { strides, span_bytes })
    }
}

/// Where the data lives.
pub(crate) enum Storage {
    /// No elements: no allocation, data pointer NULL (as DLPack asks).
    Empty(&'static Device),
    Device(DeviceMemory),
    /// Ordinary host memory (DLPack kDLCPU), see [`DeviceTensor::in_host_memory`].
    Host(Box<[u8]>),
}

pub(crate) struct TensorShared {
    storage: Storage,
    dtype: DType,
    shape: Vec<i64>,
    strides: Vec<i64>,
    /// Completes when the upload has finished (None: finished before construction).
    ready: Option<Arc<Event>>,
    /// The stream the upload ran on (kept alive so its handle is not reused while the
    /// tensor can still be compared against a consumer's stream).
    stream: Option<Arc<Stream>>,
    /// Set once the upload is known to be finished, to skip further event queries.
    known_ready: OnceLock<()>,
}

/// A tensor whose storage is shared by every clone, C handle, Python object and DLPack
/// export; freed exactly once, by whichever of them goes last, on any thread.
#[derive(Clone)]
pub struct DeviceTensor {
    shared: Arc<TensorShared>,
}

impl DeviceTensor {
    /// Copies `host` into new device memory and returns when the copy has finished (the
    /// original's `cudaMemcpy` behaviour, but on a pyscheduler stream: it waits for this
    /// copy only, never for other work on the device). Needs no GIL; releases it while
    /// copying if the caller holds it.
    pub fn from_host(host: &[u8], desc: &TensorDesc) -> Result<DeviceTensor> {
        let layout = desc.layout(host.len())?;
        let device = driver::driver()?.device(desc.device)?;
        let storage = if layout.span_bytes == 0 {
            Storage::Empty(device)
        } else {
            let stream = device.sync_stream()?;
            let memory = DeviceMemory::alloc(stream, layout.span_bytes)?;
            let src = &host[..layout.span_bytes];
            crate::runtime::without_gil(|| -> Result<()> {
                // SAFETY: src is readable for span_bytes and outlives the copy (the
                // stream is synchronized before returning); memory holds span_bytes.
                device.call("cuMemcpyHtoDAsync", |api| unsafe {
                    (api.memcpy_htod_async)(memory.ptr, src.as_ptr().cast(), src.len(), stream.handle)
                })?;
                stream.synchronize()
            })?;
            Storage::Device(memory)
        };
        Ok(DeviceTensor::assemble(storage, desc, layout, None, None))
    }

    /// Typed convenience for [`DeviceTensor::from_host`] (row-major).
    pub fn from_slice<T: Element>(data: &[T], shape: &[i64], device: i32) -> Result<DeviceTensor> {
        DeviceTensor::from_host(as_bytes(data), &TensorDesc::new(T::DTYPE, shape).on_device(device))
    }

    /// A tensor in ordinary host memory (DLPack device kDLCPU), exported through the
    /// same DLPack paths; CPU consumers such as `numpy.from_dlpack` accept it. It needs
    /// no driver, which makes it the way to test the export machinery without a GPU.
    pub fn in_host_memory(host: &[u8], desc: &TensorDesc) -> Result<DeviceTensor> {
        let layout = desc.layout(host.len())?;
        let bytes: Box<[u8]> = host[..layout.span_bytes].into();
        let storage = Storage::Host(bytes);
        Ok(DeviceTensor::assemble(storage, desc, layout, None, None))
    }

    pub(crate) fn assemble(
        storage: Storage,
        desc: &TensorDesc,
        layout: Layout,
        ready: Option<Arc<Event>>,
        stream: Option<Arc<Stream>>,
    ) -> DeviceTensor {
        DeviceTensor {
            shared: Arc::new(TensorShared {
                storage,
                dtype: desc.dtype,
                shape: desc.shape.clone(),
                strides: layout.strides,
                ready,
                stream,
                known_ready: OnceLock::new(),
            }),
        }
    }

    pub fn dtype(&self) -> DType {
        self.shared.dtype
    }
    pub fn shape(&self) -> &[i64] {
        &self.shared.shape
    }
    /// Strides in elements (always filled in, also for row-major tensors).
    pub fn strides(&self) -> &[i64] {
        &self.shared.strides
    }
    /// Device ordinal; -1 for a tensor in host memory.
    pub fn device(&self) -> i32 {
        match &self.shared.storage {
            Storage::Empty(d) => d.ordinal,
            Storage::Device(m) => m.device.ordinal,
            Storage::Host(_) => -1,
        }
    }
    pub fn is_host(&self) -> bool {
        matches!(self.shared.storage, Storage::Host(_))
    }
    /// Bytes of storage the data spans.
    pub fn nbytes(&self) -> usize {
        match &self.shared.storage {
            Storage::Empty(_) => 0,
            Storage::Device(m) => m.bytes,
            Storage::Host(b) => b.len(),
        }
    }
    /// Address of the first element (a CUdeviceptr for device tensors); 0 when empty.
    /// The pointer may be used on any stream, so the final free of device memory whose
    /// pointer was handed out waits for the whole context (as `cuMemFree` does).
    pub fn data_ptr(&self) -> u64 {
        self.note_unknown_consumer();
        self.raw_data_ptr()
    }

    /// [`DeviceTensor::data_ptr`] for exports that record their consumer themselves.
    pub(crate) fn raw_data_ptr(&self) -> u64 {
        match &self.shared.storage {
            Storage::Empty(_) => 0,
            Storage::Device(m) => m.ptr,
            Storage::Host(b) => b.as_ptr() as u64,
        }
    }
    /// Number of handles, objects and exports sharing the storage (for tests).
    pub fn share_count(&self) -> usize {
        Arc::strong_count(&self.shared)
    }

    pub(crate) fn dl_device(&self) -> DLDevice {
        match &self.shared.storage {
            Storage::Host(_) => DLDevice { device_type: KDL_CPU, device_id: 0 },
            _ => DLDevice { device_type: KDL_CUDA, device_id: self.device() },
        }
    }

    /// The handle of the stream the upload ran on, if it was staged (0 otherwise).
    pub fn stream_handle(&self) -> usize {
        self.shared.stream.as_ref().map_or(0, |s| s.handle as usize)
    }

    /// Records that a consumer uses the data on `consumer` (after `order_before` it):
    /// the final release frees the memory on that stream, after the consumer's work.
    pub(crate) fn note_consumer(&self, consumer: CUstream) {
        if let Storage::Device(m) = &self.shared.storage {
            m.note_consumer(consumer);
        }
    }

    /// Records a use on an unknown stream (legacy exports, raw pointers): the final
    /// release waits for the device's context before freeing.
    pub(crate) fn note_unknown_consumer(&self) {
        if let Storage::Device(m) = &self.shared.storage {
            m.note_unknown_consumer();
        }
    }

    /// Whether the upload has finished. Never blocks.
    pub fn is_ready(&self) -> Result<bool> {
        if self.shared.known_ready.get().is_some() {
            return Ok(true);
        }
        let done = match &self.shared.ready {
            None => true,
            Some(event) => event.is_done()?,
        };
        if done {
            let _ = self.shared.known_ready.set(());
        }
        Ok(done)
    }

    /// Blocks until the upload has finished (this tensor's copy only). Releases the
    /// GIL while waiting if the caller holds it.
    pub fn synchronize(&self) -> Result<()> {
        if self.is_ready()? {
            return Ok(());
        }
        if let Some(event) = &self.shared.ready {
            crate::runtime::without_gil(|| event.synchronize())?;
        }
        let _ = self.shared.known_ready.set(());
        Ok(())
    }

    /// Orders `consumer` (a stream of this tensor's device; `CU_STREAM_LEGACY` and
    /// `CU_STREAM_PER_THREAD` allowed) after the upload, on the GPU: no host wait, no
    /// device-wide synchronization. No-op when the upload already finished or ran on
    /// that very stream.
    pub(crate) fn order_before(&self, consumer: CUstream) -> Result<()> {
        let Some(event) = &self.shared.ready else {
            return Ok(());
        };
        if self.shared.stream.as_ref().is_some_and(|s| s.handle == consumer) {
            return Ok(());
        }
        if self.is_ready()? {
            return Ok(());
        }
        event.make_wait(consumer)
    }

    /// Orders the legacy default stream after the upload (what a consumer that names no
    /// stream is assumed to use).
    pub fn order_before_legacy_stream(&self) -> Result<()> {
        self.order_before(CU_STREAM_LEGACY)
    }

    /// Copies the tensor's bytes back to the host (blocking; for tests and tools).
    pub fn to_host_bytes(&self) -> Result<Vec<u8>> {
        match &self.shared.storage {
            Storage::Empty(_) => Ok(Vec::new()),
            Storage::Host(b) => Ok(b.to_vec()),
            Storage::Device(m) => {
                self.synchronize()?;
                let mut out = vec![0u8; m.bytes];
                driver::copy_to_host(m.device, m.ptr, &mut out)?;
                Ok(out)
            }
        }
    }
}
