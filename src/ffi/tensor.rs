//! `pysched_tensor` and `pysched_stager`: device tensors made from host buffers, their
//! DLPack exports (capsules, `__dlpack__` objects, raw managed tensors) and the per-handler
//! stager whose uploads run without the GIL and overlap with Python. The CUDA driver is
//! loaded at run time: without it every call fails with PYSCHED_CUDA ("no CUDA driver
//! found"), without a GPU with PYSCHED_CUDA ("no CUDA device").

use super::{boundary, handle, out_ptr, pysched_error, pysched_status};
use crate::cuda::{self, DType, DeviceTensor, Stager, TensorDesc, MAX_NDIM};
use crate::error::{Error, Result};
use pyo3::ffi::PyObject;
use pyo3::prelude::*;
use std::ffi::c_void;

/// A device tensor handle. Single owner; free with `pysched_tensor_free`. Its storage is
/// shared with every export made from it and freed once the last of them is gone.
pub struct pysched_tensor {
    pub(crate) inner: DeviceTensor,
}

/// A stager handle: a CUDA stream and pinned staging memory, typically one per handler.
/// Single owner; free with `pysched_stager_free`.
pub struct pysched_stager {
    pub(crate) inner: Stager,
}

/// DLPack's legacy managed tensor. Declared opaquely here so this header needs no
/// `dlpack.h`; the typedef is identical to dlpack.h's (and to the one in
/// `pyscheduler/tensor.hpp`), so including both, in either order, is fine.
pub struct DLManagedTensor {
    _private: [u8; 0],
}

/// DLPack's versioned managed tensor (DLPack >= 1.0), declared opaquely as above.
pub struct DLManagedTensorVersioned {
    _private: [u8; 0],
}

/// Element types of device tensors. Stable numbers.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum pysched_dtype {
    PYSCHED_DTYPE_F32 = 0,
    PYSCHED_DTYPE_F64 = 1,
    PYSCHED_DTYPE_I64 = 2,
    PYSCHED_DTYPE_I32 = 3,
    PYSCHED_DTYPE_U8 = 4,
    /// IEEE half precision, raw 16-bit values.
    PYSCHED_DTYPE_F16 = 5,
    /// bfloat16, raw 16-bit values.
    PYSCHED_DTYPE_BF16 = 6,
}

impl From<DType> for pysched_dtype {
    fn from(d: DType) -> Self {
        use pysched_dtype::*;
        match d {
            DType::F32 => PYSCHED_DTYPE_F32,
            DType::F64 => PYSCHED_DTYPE_F64,
            DType::I64 => PYSCHED_DTYPE_I64,
            DType::I32 => PYSCHED_DTYPE_I32,
            DType::U8 => PYSCHED_DTYPE_U8,
            DType::F16 => PYSCHED_DTYPE_F16,
            DType::BF16 => PYSCHED_DTYPE_BF16,
        }
    }
}

/// What tensor to make from a host buffer. Read during the call only.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct pysched_tensor_desc {
    /// A `pysched_dtype` value; others are rejected.
    pub dtype: u32,
    /// Number of dimensions, 0..=64 (0: a scalar).
    pub ndim: u32,
    /// `ndim` non-negative sizes; may be NULL only when `ndim` is 0.
    pub shape: *const i64,
    /// NULL: row-major contiguous, and the host buffer must hold exactly the tensor.
    /// Else `ndim` non-negative strides in elements (DLPack convention), and the host
    /// buffer must hold at least the span they reach; that span is copied as it is.
    pub strides: *const i64,
    /// CUDA device ordinal; -1 means the device of the context current on the calling
    /// thread (the CUDA runtime's current device), or device 0 when none is current.
    pub device: i32,
}

/// Facts about a tensor, written by `pysched_tensor_get_info`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct pysched_tensor_info {
    pub dtype: pysched_dtype,
    pub ndim: u32,
    /// `ndim` sizes, owned by the tensor: valid until `pysched_tensor_free`.
    pub shape: *const i64,
    /// `ndim` strides in elements (always filled in), valid as `shape`.
    pub strides: *const i64,
    /// CUDA device ordinal.
    pub device: i32,
    /// Bytes of device memory the data spans.
    pub nbytes: usize,
    /// The `CUdeviceptr` of the first element; 0 for an empty tensor.
    pub data: u64,
    /// The `CUstream` the upload was queued on (0 when it had finished at creation).
    pub stream: usize,
}

fn read_desc(desc: *const pysched_tensor_desc) -> Result<TensorDesc> {
    // SAFETY: NULL or a readable descriptor (documented).
    let d = unsafe { desc.as_ref() }.ok_or_else(|| Error::invalid_argument("desc is NULL"))?;
    let dtype = DType::from_raw(d.dtype)
        .ok_or_else(|| Error::invalid_argument(format!("desc->dtype {} is not a pysched_dtype", d.dtype)))?;
    let ndim = d.ndim as usize;
    if ndim > MAX_NDIM {
        return Err(Error::invalid_argument(format!("desc->ndim {ndim} exceeds the maximum of {MAX_NDIM}")));
    }
    let read = |p: *const i64, what: &str| -> Result<Vec<i64>> {
        if ndim == 0 {
            return Ok(Vec::new());
        }
        if p.is_null() {
            return Err(Error::invalid_argument(format!("{what} is NULL with ndim {ndim}")));
        }
        // SAFETY: non-NULL arrays hold ndim elements (documented).
        Ok(unsafe { std::slice::from_raw_parts(p, ndim) }.to_vec())
    };
    let shape = read(d.shape, "desc->shape")?;
    let strides = if d.strides.is_null() { None } else { Some(read(d.strides, "desc->strides")?) };
    Ok(TensorDesc { dtype, shape, strides, device: d.device })
}

fn host_slice<'a>(host: *const c_void, host_bytes: usize) -> Result<&'a [u8]> {
    if host_bytes == 0 {
        return Ok(&[]);
    }
    if host.is_null() {
        return Err(Error::invalid_argument("host is NULL"));
    }
    // SAFETY: host is readable for host_bytes bytes for the duration of the call
    // (documented).
    Ok(unsafe { std::slice::from_raw_parts(host.cast::<u8>(), host_bytes) })
}

fn write_tensor(out: *mut *mut pysched_tensor, tensor: DeviceTensor) {
    // SAFETY: out was checked non-NULL by the caller and points to writable storage.
    unsafe { *out = Box::into_raw(Box::new(pysched_tensor { inner: tensor })) };
}

/// Number of CUDA devices, written to `out_count`. Fails with PYSCHED_CUDA ("no CUDA
/// driver found" / "no CUDA device") where there is none: the way to probe for a GPU.
///
/// `out_count` must not be NULL; `out_error` may be NULL.
/// Thread-safe. The first CUDA call of the process loads and initializes the driver.
#[no_mangle]
pub extern "C" fn pysched_cuda_device_count(
    out_count: *mut i32,
    out_error: *mut *mut pysched_error,
) -> pysched_status {
    boundary(out_error, || {
        let out = out_ptr(out_count, "out_count")?;
        let n = cuda::device_count()?;
        // SAFETY: checked non-NULL; writable (documented).
        unsafe { *out = n };
        Ok(())
    })
}

/// Free and total device memory of `device` (-1: the current device) in bytes, as
/// `cuMemGetInfo` reports them.
///
/// `out_free_bytes` and `out_total_bytes` must not be NULL; `out_error` may be NULL.
/// Thread-safe. Never blocks on Python.
#[no_mangle]
pub extern "C" fn pysched_cuda_mem_info(
    device: i32,
    out_free_bytes: *mut usize,
    out_total_bytes: *mut usize,
    out_error: *mut *mut pysched_error,
) -> pysched_status {
    boundary(out_error, || {
        let free = out_ptr(out_free_bytes, "out_free_bytes")?;
        let total = out_ptr(out_total_bytes, "out_total_bytes")?;
        let (f, t) = cuda::mem_info(device)?;
        // SAFETY: checked non-NULL; writable (documented).
        unsafe {
            *free = f;
            *total = t;
        }
        Ok(())
    })
}

/// Copies a host buffer into new device memory and returns when the copy has finished
/// (it waits for this copy only, on a pyscheduler stream: no device-wide synchronize).
/// The arguments are checked before CUDA is touched.
///
/// `host` is read during the call only (it may be NULL when `host_bytes` is 0); `desc`
/// must not be NULL (see `pysched_tensor_desc` for the size rules). `out_tensor` must
/// not be NULL; it receives, on success only, a tensor owned by the caller.
/// `out_error` may be NULL.
/// Thread-safe. Blocks for the copy. Needs no GIL; if the caller holds it, it is
/// released during the copy.
#[no_mangle]
pub extern "C" fn pysched_tensor_new(
    host: *const c_void,
    host_bytes: usize,
    desc: *const pysched_tensor_desc,
    out_tensor: *mut *mut pysched_tensor,
    out_error: *mut *mut pysched_error,
) -> pysched_status {
    boundary(out_error, || {
        let out = out_ptr(out_tensor, "out_tensor")?;
        let desc = read_desc(desc)?;
        let host = host_slice(host, host_bytes)?;
        write_tensor(out, DeviceTensor::from_host(host, &desc)?);
        Ok(())
    })
}

/// Writes the tensor's dtype, shape, strides, device, size, device pointer and upload
/// stream to `out_info`.
///
/// `tensor` and `out_info` must not be NULL; `out_error` may be NULL.
/// Thread-safe. Never blocks.
#[no_mangle]
pub extern "C" fn pysched_tensor_get_info(
    tensor: *const pysched_tensor,
    out_info: *mut pysched_tensor_info,
    out_error: *mut *mut pysched_error,
) -> pysched_status {
    boundary(out_error, || {
        let t = &handle(tensor, "tensor")?.inner;
        let out = out_ptr(out_info, "out_info")?;
        let info = pysched_tensor_info {
            dtype: t.dtype().into(),
            ndim: t.shape().len() as u32,
            shape: t.shape().as_ptr(),
            strides: t.strides().as_ptr(),
            device: t.device(),
            nbytes: t.nbytes(),
            data: t.data_ptr(),
            stream: t.stream_handle(),
        };
        // SAFETY: checked non-NULL; writable (documented).
        unsafe { *out = info };
        Ok(())
    })
}

/// Blocks until the tensor's upload has finished (this tensor's copy only).
///
/// `tensor` must not be NULL; `out_error` may be NULL.
/// Thread-safe. Blocks for the copy; releases the GIL while waiting if the caller holds it.
#[no_mangle]
pub extern "C" fn pysched_tensor_synchronize(
    tensor: *const pysched_tensor,
    out_error: *mut *mut pysched_error,
) -> pysched_status {
    boundary(out_error, || handle(tensor, "tensor")?.inner.synchronize())
}

/// A Python object with `__dlpack__(stream=None, max_version=None, dl_device=None,
/// copy=None)` and `__dlpack_device__()` sharing the tensor's memory:
/// `torch.from_dlpack(obj)` imports it without a copy. `__dlpack__` returns a
/// "dltensor_versioned" capsule (DLPack 1.0) when `max_version >= (1, 0)`, else a legacy
/// "dltensor" one, and makes the consumer's `stream` wait for a staged upload on the GPU
/// (an event wait, no host synchronize). The tensor handle stays the caller's.
///
/// `tensor` and `out_object` must not be NULL; `out_object` receives a new reference
/// on success only. `out_error` may be NULL.
/// Thread-safe. The GIL MUST be held. Never blocks.
#[no_mangle]
pub extern "C" fn pysched_tensor_to_pyobject(
    tensor: *const pysched_tensor,
    out_object: *mut *mut PyObject,
    out_error: *mut *mut pysched_error,
) -> pysched_status {
    boundary(out_error, || {
        let t = &handle(tensor, "tensor")?.inner;
        let out = out_ptr(out_object, "out_object")?;
        require_gil()?;
        // SAFETY: the caller holds the GIL (checked above).
        let py = unsafe { Python::assume_attached() };
        let obj = t.to_pyobject(py)?;
        // SAFETY: checked non-NULL; the new reference is handed to the caller.
        unsafe { *out = obj.into_ptr() };
        Ok(())
    })
}

/// A legacy DLPack capsule ("dltensor") sharing the tensor's memory, made after the
/// tensor's upload has finished (a capsule cannot tell its consumer which stream to
/// wait on). If no consumer takes it, the capsule's destructor releases its share; a
/// consumer renames it "used_dltensor" and calls the deleter itself. The tensor handle
/// stays the caller's.
///
/// `tensor` and `out_capsule` must not be NULL; `out_capsule` receives a new reference
/// on success only. `out_error` may be NULL.
/// Thread-safe. The GIL MUST be held; it is released while waiting for the upload.
#[no_mangle]
pub extern "C" fn pysched_tensor_to_capsule(
    tensor: *const pysched_tensor,
    out_capsule: *mut *mut PyObject,
    out_error: *mut *mut pysched_error,
) -> pysched_status {
    boundary(out_error, || {
        let t = &handle(tensor, "tensor")?.inner;
        let out = out_ptr(out_capsule, "out_capsule")?;
        require_gil()?;
        // SAFETY: the caller holds the GIL (checked above).
        let py = unsafe { Python::assume_attached() };
        let capsule = t.to_capsule(py)?;
        // SAFETY: checked non-NULL; the new reference is handed to the caller.
        unsafe { *out = capsule.into_ptr() };
        Ok(())
    })
}

/// A legacy `DLManagedTensor` sharing the tensor's memory, made after the upload has
/// finished. The caller owns it: call its `deleter` exactly once (from any thread, with
/// or without the GIL), or hand it to a consumer that will (e.g. through
/// `pysched_dlpack_to_capsule`). The tensor handle stays the caller's.
///
/// `tensor` and `out_managed` must not be NULL; `out_managed` is written on success
/// only. `out_error` may be NULL.
/// Thread-safe. Blocks until the upload has finished; needs no GIL (releases it while
/// waiting if held).
#[no_mangle]
pub extern "C" fn pysched_tensor_to_dlpack(
    tensor: *const pysched_tensor,
    out_managed: *mut *mut DLManagedTensor,
    out_error: *mut *mut pysched_error,
) -> pysched_status {
    boundary(out_error, || {
        let t = &handle(tensor, "tensor")?.inner;
        let out = out_ptr(out_managed, "out_managed")?;
        let managed = t.to_dlpack()?;
        // SAFETY: checked non-NULL; ownership of the managed tensor passes to the caller.
        unsafe { *out = managed.cast() };
        Ok(())
    })
}

/// Like `pysched_tensor_to_dlpack`, as a `DLManagedTensorVersioned` (version 1.0,
/// flags 0).
/// Thread-safe. Blocks until the upload has finished; needs no GIL.
#[no_mangle]
pub extern "C" fn pysched_tensor_to_dlpack_versioned(
    tensor: *const pysched_tensor,
    out_managed: *mut *mut DLManagedTensorVersioned,
    out_error: *mut *mut pysched_error,
) -> pysched_status {
    boundary(out_error, || {
        let t = &handle(tensor, "tensor")?.inner;
        let out = out_ptr(out_managed, "out_managed")?;
        let managed = t.to_dlpack_versioned()?;
        // SAFETY: checked non-NULL; ownership of the managed tensor passes to the caller.
        unsafe { *out = managed.cast() };
        Ok(())
    })
}

/// Releases the caller's tensor handle. The device memory is freed now if no export
/// (capsule, Python object, managed tensor) still shares it, else when the last one
/// goes. NULL is a no-op.
/// Thread-safe (any thread, with or without the GIL). Never blocks on Python; freeing
/// device memory waits for GPU work still using it.
#[no_mangle]
pub extern "C" fn pysched_tensor_free(tensor: *mut pysched_tensor) {
    if !tensor.is_null() {
        super::boundary_value((), || {
            // SAFETY: created by this library (Box) and freed exactly once by its owner.
            drop(unsafe { Box::from_raw(tensor) })
        });
    }
}

/// Wraps a legacy `DLManagedTensor` from any producer (e.g. `createCudaMatrixDlpack`)
/// in a "dltensor" capsule that owns it: when no consumer takes it, the capsule's
/// destructor (which takes the GIL itself if needed) calls the deleter exactly once.
///
/// Ownership of `managed` passes to this call on every path: on failure its deleter
/// has already been called. `managed` and `out_capsule` must not be NULL (a NULL
/// `managed` fails with PYSCHED_INVALID_ARGUMENT; a NULL `out_capsule` also calls the
/// deleter). `out_capsule` receives a new reference on success only. `out_error` may be
/// NULL.
/// Thread-safe. The GIL MUST be held. Never blocks.
#[no_mangle]
pub extern "C" fn pysched_dlpack_to_capsule(
    managed: *mut DLManagedTensor,
    out_capsule: *mut *mut PyObject,
    out_error: *mut *mut pysched_error,
) -> pysched_status {
    let managed = managed.cast::<cuda::dlpack::DLManagedTensor>();
    boundary(out_error, || {
        let checked = out_ptr(out_capsule, "out_capsule").and_then(|out| {
            require_gil()?;
            Ok(out)
        });
        let out = match checked {
            Ok(out) => out,
            Err(e) => {
                // SAFETY: NULL or a managed tensor now owned by this call (documented).
                unsafe {
                    if let Some(deleter) = managed.as_ref().and_then(|m| m.deleter) {
                        deleter(managed);
                    }
                }
                return Err(e);
            }
        };
        // SAFETY: the caller holds the GIL (checked above).
        let py = unsafe { Python::assume_attached() };
        // SAFETY: NULL (rejected inside) or a managed tensor now owned by this call.
        let capsule = unsafe { cuda::dlpack::legacy_capsule(py, managed)? };
        // SAFETY: checked non-NULL; the new reference is handed to the caller.
        unsafe { *out = capsule.into_ptr() };
        Ok(())
    })
}

/// Creates a stager on `device` (-1: the current device): its own non-blocking CUDA
/// stream plus `pinned_bytes` of pinned host memory (0: 32 MiB), allocated on first
/// upload. Typically one per handler: prepare callbacks upload through it without the
/// GIL while the previous batch runs in Python.
///
/// `out_stager` must not be NULL; it receives, on success only, a stager owned by the
/// caller. `out_error` may be NULL.
/// Thread-safe. Never blocks on Python.
#[no_mangle]
pub extern "C" fn pysched_stager_new(
    device: i32,
    pinned_bytes: u64,
    out_stager: *mut *mut pysched_stager,
    out_error: *mut *mut pysched_error,
) -> pysched_status {
    boundary(out_error, || {
        let out = out_ptr(out_stager, "out_stager")?;
        let bytes = usize::try_from(pinned_bytes)
            .map_err(|_| Error::invalid_argument("pinned_bytes is too large"))?;
        let stager = Stager::new(device, bytes)?;
        // SAFETY: checked non-NULL; writable (documented).
        unsafe { *out = Box::into_raw(Box::new(pysched_stager { inner: stager })) };
        Ok(())
    })
}

/// Stages a host buffer as a device tensor: copies it into the stager's pinned memory
/// and queues the host-to-device copy on the stager's stream. Returns once `host` has
/// been read (the caller may reuse it at once); the device copy may still be running.
/// Exports wait for it correctly: `pysched_tensor_to_pyobject`'s `__dlpack__` makes the
/// consumer's stream wait on the GPU; capsules and managed tensors wait on the host.
/// `desc->device` must be -1 or the stager's device.
///
/// `stager`, `desc` and `out_tensor` must not be NULL; `host` may be NULL when
/// `host_bytes` is 0. `out_tensor` receives, on success only, a tensor owned by the
/// caller. `out_error` may be NULL.
/// Thread-safe: many threads may upload through one stager at once. Call it WITHOUT the
/// GIL (a prepare callback): it neither needs nor takes it. Blocks only while the pinned
/// memory is full of copies in flight.
#[no_mangle]
pub extern "C" fn pysched_stager_upload(
    stager: *const pysched_stager,
    host: *const c_void,
    host_bytes: usize,
    desc: *const pysched_tensor_desc,
    out_tensor: *mut *mut pysched_tensor,
    out_error: *mut *mut pysched_error,
) -> pysched_status {
    boundary(out_error, || {
        let s = &handle(stager, "stager")?.inner;
        let out = out_ptr(out_tensor, "out_tensor")?;
        let desc = read_desc(desc)?;
        let host = host_slice(host, host_bytes)?;
        write_tensor(out, s.upload(host, &desc)?);
        Ok(())
    })
}

/// The stager's `CUstream` handle (for callers that queue their own work behind its
/// uploads); 0 for NULL.
/// Thread-safe. Never blocks.
#[no_mangle]
pub extern "C" fn pysched_stager_stream(stager: *const pysched_stager) -> usize {
    super::boundary_value(0, || handle(stager, "stager").map_or(0, |s| s.inner.stream_handle()))
}

/// Blocks until every upload queued on the stager so far has reached the device (its
/// stream only).
///
/// `stager` must not be NULL; `out_error` may be NULL.
/// Thread-safe. Blocks; releases the GIL while waiting if the caller holds it.
#[no_mangle]
pub extern "C" fn pysched_stager_synchronize(
    stager: *const pysched_stager,
    out_error: *mut *mut pysched_error,
) -> pysched_status {
    boundary(out_error, || handle(stager, "stager")?.inner.synchronize())
}

/// Releases a stager after its queued uploads have finished. Tensors it made stay
/// valid. NULL is a no-op.
/// Thread-safe. Blocks for the uploads in flight; call it without the GIL.
#[no_mangle]
pub extern "C" fn pysched_stager_free(stager: *mut pysched_stager) {
    if !stager.is_null() {
        super::boundary_value((), || {
            // SAFETY: created by pysched_stager_new (Box) and freed exactly once.
            drop(unsafe { Box::from_raw(stager) })
        });
    }
}

fn require_gil() -> Result<()> {
    if crate::runtime::is_attached() {
        Ok(())
    } else {
        Err(Error::invalid_argument(
            "this call needs the GIL: call it with the GIL held (e.g. in a commit callback)",
        ))
    }
}
