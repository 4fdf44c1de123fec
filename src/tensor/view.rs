//! `pyscheduler.BatchTensor`: the Python face of one input of one batch, shape
//! `(B, *item_shape)`, C order, over the batch's buffers. numpy imports it without a copy
//! (`np.asarray` through the buffer protocol, `np.from_dlpack`), and so does torch
//! (`torch.from_dlpack`). Every view and every DLPack export holds the batch's lease: the
//! buffers go back to the pool only when Python has released all of them.
//!
//! May call: `buffers` (the lease), `cuda` (a consumer stream's ordering),
//! `crate::dlpack`, `crate::dtype`.

use super::buffers::Lease;
use crate::dlpack::{self, DLDevice, KDL_CPU};
use crate::dtype::DType;
use pyo3::exceptions::{PyBufferError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use std::ffi::{c_int, c_void, CStr};
use std::sync::Arc;

/// One input of a batch, as the handler's function receives it.
#[pyclass(name = "BatchTensor", module = "pyscheduler", frozen)]
pub struct BatchTensor {
    lease: Arc<Lease>,
    /// Address of the first element (host memory, or device memory for CUDA placement).
    data: usize,
    dtype: DType,
    /// `(B, *item_shape)`, and C-order strides in elements and in bytes.
    shape: Vec<i64>,
    strides: Vec<i64>,
    /// For the buffer protocol, which wants `Py_ssize_t` arrays that outlive the export.
    shape_ssize: Vec<ffi::Py_ssize_t>,
    strides_bytes: Vec<ffi::Py_ssize_t>,
    device: DLDevice,
    /// The handler's CUDA stream (0 on the host), for `torch.cuda.ExternalStream`.
    stream: usize,
}

impl BatchTensor {
    pub(crate) fn new(
        lease: Arc<Lease>,
        data: *mut u8,
        dtype: DType,
        rows: usize,
        item_shape: &[usize],
        device: DLDevice,
        stream: usize,
    ) -> BatchTensor {
        let shape: Vec<i64> =
            std::iter::once(rows).chain(item_shape.iter().copied()).map(|n| n as i64).collect();
        let mut strides = vec![1i64; shape.len()];
        for d in (0..shape.len().saturating_sub(1)).rev() {
            strides[d] = strides[d + 1] * shape[d + 1];
        }
        let size = dtype.size_bytes() as i64;
        BatchTensor {
            shape_ssize: shape.iter().map(|&n| n as ffi::Py_ssize_t).collect(),
            strides_bytes: strides.iter().map(|&s| (s * size) as ffi::Py_ssize_t).collect(),
            lease,
            data: data as usize,
            dtype,
            shape,
            strides,
            device,
            stream,
        }
    }

    fn byte_len(&self) -> usize {
        self.shape.iter().product::<i64>() as usize * self.dtype.size_bytes()
    }

    fn is_host(&self) -> bool {
        self.device.device_type == KDL_CPU
    }
}

impl BatchTensor {
    fn desc(&self) -> dlpack::ExportDesc<'_> {
        dlpack::ExportDesc {
            data: self.data as *mut c_void,
            device: self.device,
            dtype: self.dtype.dl_data_type(),
            shape: &self.shape,
            strides: &self.strides,
        }
    }

    fn device_tuple(&self) -> (i32, i32) {
        (self.device.device_type, self.device.device_id)
    }
}

/// `struct` format characters of the element types the buffer protocol can describe.
fn buffer_format(dtype: DType) -> Option<&'static CStr> {
    Some(match dtype {
        DType::F32 => c"f",
        DType::F64 => c"d",
        DType::I64 => c"q",
        DType::I32 => c"i",
        DType::U8 => c"B",
        DType::F16 => c"e",
        DType::BF16 => return None,
    })
}

#[pymethods]
impl BatchTensor {
    /// Exports the batch tensor as a DLPack capsule ("dltensor_versioned" when
    /// `max_version` allows DLPack 1.x, else "dltensor"), sharing its memory. On a CUDA
    /// handler, the consumer's `stream` is ordered after the batch's upload.
    #[pyo3(signature = (*, stream=None, max_version=None, dl_device=None, copy=None))]
    fn __dlpack__<'py>(
        &self,
        py: Python<'py>,
        stream: Option<i64>,
        max_version: Option<(u32, u32)>,
        dl_device: Option<(i32, i32)>,
        copy: Option<bool>,
    ) -> PyResult<Bound<'py, PyAny>> {
        dlpack::check_export_request("the batch tensor", self.device_tuple(), dl_device, copy)?;
        if !self.is_host() {
            super::cuda::order_consumer(self.lease.device_set(), stream)?;
        }
        let capsule = if max_version.is_some_and(|(major, _)| major >= 1) {
            // SAFETY: a fresh export owned by us, handed to the capsule.
            unsafe {
                dlpack::versioned_capsule(py, dlpack::export_versioned(&self.desc(), self.lease.clone()))
            }
        } else {
            // SAFETY: as above.
            unsafe { dlpack::legacy_capsule(py, dlpack::export_legacy(&self.desc(), self.lease.clone())) }
        };
        capsule.map_err(|e| PyValueError::new_err(e.to_string()))
    }

    /// `(1, 0)` on the host, `(2, ordinal)` on a CUDA device.
    fn __dlpack_device__(&self) -> (i32, i32) {
        self.device_tuple()
    }

    /// The buffer protocol (host batches): C-contiguous, writable, with shape, strides
    /// and a `struct` format (bfloat16 has none: use DLPack).
    unsafe fn __getbuffer__(slf: Bound<'_, Self>, view: *mut ffi::Py_buffer, flags: c_int) -> PyResult<()> {
        let me = slf.get();
        if !me.is_host() {
            return Err(PyBufferError::new_err(
                "a batch tensor on a CUDA device has no host buffer: use __dlpack__",
            ));
        }
        let Some(format) = buffer_format(me.dtype) else {
            return Err(PyBufferError::new_err(format!(
                "{} has no buffer-protocol format: use __dlpack__ (torch.from_dlpack)",
                me.dtype.name()
            )));
        };
        if view.is_null() {
            return Err(PyBufferError::new_err("view is NULL"));
        }
        // SAFETY: `view` is the caller's Py_buffer to fill (checked non-NULL); the shape
        // and stride arrays live in `me`, which the buffer keeps alive through `obj`.
        unsafe {
            (*view).buf = me.data as *mut c_void;
            (*view).len = me.byte_len() as ffi::Py_ssize_t;
            (*view).readonly = 0;
            (*view).itemsize = me.dtype.size_bytes() as ffi::Py_ssize_t;
            (*view).format =
                if flags & ffi::PyBUF_FORMAT != 0 { format.as_ptr() as *mut _ } else { std::ptr::null_mut() };
            (*view).ndim = me.shape.len() as c_int;
            let nd = flags & ffi::PyBUF_ND == ffi::PyBUF_ND;
            let strided = flags & ffi::PyBUF_STRIDES == ffi::PyBUF_STRIDES;
            (*view).shape = if nd { me.shape_ssize.as_ptr() as *mut _ } else { std::ptr::null_mut() };
            (*view).strides =
                if strided { me.strides_bytes.as_ptr() as *mut _ } else { std::ptr::null_mut() };
            (*view).suboffsets = std::ptr::null_mut();
            (*view).internal = std::ptr::null_mut();
            (*view).obj = slf.clone().into_any().into_ptr();
        }
        Ok(())
    }

    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {}

    #[getter]
    fn shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, &self.shape)
    }

    #[getter]
    fn dtype(&self) -> &'static str {
        self.dtype.name()
    }

    /// `"cpu"` or `"cuda:N"`.
    #[getter]
    fn device(&self) -> String {
        if self.is_host() {
            "cpu".to_owned()
        } else {
            format!("cuda:{}", self.device.device_id)
        }
    }

    /// The handler's CUDA stream (a `CUstream` as an int, usable with
    /// `torch.cuda.ExternalStream`); 0 on the host.
    #[getter]
    fn cuda_stream(&self) -> usize {
        self.stream
    }

    #[getter]
    fn nbytes(&self) -> usize {
        self.byte_len()
    }

    fn __len__(&self) -> usize {
        self.shape[0] as usize
    }

    fn __repr__(&self) -> String {
        format!("BatchTensor(shape={:?}, dtype={}, device={})", self.shape, self.dtype.name(), self.device())
    }
}
