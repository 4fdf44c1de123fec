//! `pyscheduler.CudaTensor`: the Python face of a [`DeviceTensor`], speaking the DLPack
//! Python protocol (`__dlpack__` / `__dlpack_device__`) so that `torch.from_dlpack`
//! and array libraries import it without a copy. Each `__dlpack__` call exports a new
//! capsule sharing the storage; the consumer's stream is ordered after the upload on
//! the GPU (an event wait), never by a host or device-wide synchronize.
//!
//! May call: `tensor`, `dlpack`, `driver`, `crate::error`.

use super::dlpack::{self, KDL_CPU, KDL_CUDA};
use super::driver::{CUstream, CU_STREAM_LEGACY, CU_STREAM_PER_THREAD};
use super::tensor::DeviceTensor;
use crate::error::{Error, ErrorKind, Result};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

impl DeviceTensor {
    /// A Python object with `__dlpack__` / `__dlpack_device__` sharing the storage; it
    /// tells each consumer's stream to wait for the upload (no host wait).
    /// PRECONDITION: attached to the interpreter (implied by `py`).
    pub fn to_pyobject<'py>(&self, py: Python<'py>) -> Result<Bound<'py, PyAny>> {
        new_object(py, self.clone())
    }
}

/// A tensor in GPU memory made by pyscheduler. Immutable; safe to share between
/// threads.
#[pyclass(name = "CudaTensor", module = "pyscheduler", frozen)]
pub struct PyCudaTensor {
    tensor: DeviceTensor,
}

pub(crate) fn new_object(py: Python<'_>, tensor: DeviceTensor) -> Result<Bound<'_, PyAny>> {
    Bound::new(py, PyCudaTensor { tensor })
        .map(Bound::into_any)
        .map_err(|e| Error::from_pyerr_context(py, &e, ErrorKind::Internal, "creating a CudaTensor"))
}

fn to_pyerr(e: Error) -> PyErr {
    match e.kind() {
        ErrorKind::InvalidArgument => PyValueError::new_err(e.to_string()),
        _ => PyRuntimeError::new_err(e.to_string()),
    }
}

impl PyCudaTensor {
    /// The tensor behind a `CudaTensor` object, if `obj` is one.
    pub fn tensor_of(obj: &Bound<'_, PyAny>) -> Option<DeviceTensor> {
        obj.cast::<PyCudaTensor>().ok().map(|t| t.get().tensor.clone())
    }

    fn device_tuple(&self) -> (i32, i32) {
        let dev = self.tensor.dl_device();
        (dev.device_type, dev.device_id)
    }

    /// Orders the consumer's stream after the upload, following the DLPack Python
    /// specification for CUDA: None = the legacy default stream, 1 = legacy default,
    /// 2 = per-thread default, -1 = the consumer asks for no synchronization, 0 is
    /// disallowed, anything else is a `cudaStream_t` of this device. The stream is
    /// remembered so that the final release frees the memory on it, after the
    /// consumer's work (stream-ordered, no host wait); -1 leaves it unknown.
    fn order_consumer(&self, stream: Option<i64>) -> PyResult<()> {
        let consumer: CUstream = match stream {
            Some(-1) => {
                self.tensor.note_unknown_consumer();
                return Ok(());
            }
            None | Some(1) => CU_STREAM_LEGACY,
            Some(2) => CU_STREAM_PER_THREAD,
            Some(0) => {
                return Err(PyValueError::new_err(
                    "stream=0 is ambiguous and disallowed by the DLPack protocol; pass 1 for the \
                     legacy default stream or 2 for the per-thread default stream",
                ))
            }
            Some(s) if s < 0 => {
                return Err(PyValueError::new_err(format!("stream={s} is not a CUDA stream")))
            }
            Some(s) => s as usize as CUstream,
        };
        self.tensor.order_before(consumer).map_err(to_pyerr)?;
        // Per-thread default streams count as unknown (see DeviceMemory::note_consumer).
        self.tensor.note_consumer(consumer);
        Ok(())
    }
}

#[pymethods]
impl PyCudaTensor {
    /// Exports the tensor as a DLPack capsule: "dltensor_versioned" (DLPack 1.0) when
    /// `max_version` allows major version 1, else the legacy "dltensor".
    #[pyo3(signature = (*, stream=None, max_version=None, dl_device=None, copy=None))]
    fn __dlpack__<'py>(
        &self,
        py: Python<'py>,
        stream: Option<i64>,
        max_version: Option<(u32, u32)>,
        dl_device: Option<(i32, i32)>,
        copy: Option<bool>,
    ) -> PyResult<Bound<'py, PyAny>> {
        dlpack::check_export_request("the tensor", self.device_tuple(), dl_device, copy)?;
        if self.tensor.is_host() {
            // CPU data is complete at construction; there is no stream to order.
        } else {
            self.order_consumer(stream)?;
        }
        let versioned = max_version.is_some_and(|(major, _)| major >= 1);
        let capsule = if versioned {
            // SAFETY: a fresh export owned by us, handed to the capsule.
            unsafe { dlpack::versioned_capsule(py, dlpack::export_versioned(&self.tensor)) }
        } else {
            // SAFETY: as above.
            unsafe { dlpack::legacy_capsule(py, dlpack::export_legacy(&self.tensor)) }
        };
        capsule.map_err(to_pyerr)
    }

    /// `(device_type, device_id)`: `(2, ordinal)` for CUDA (kDLCUDA), `(1, 0)` for a
    /// tensor in host memory.
    fn __dlpack_device__(&self) -> (i32, i32) {
        self.device_tuple()
    }

    #[getter]
    fn shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.tensor.shape())
    }

    #[getter]
    fn strides<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.tensor.strides())
    }

    #[getter]
    fn dtype(&self) -> &'static str {
        self.tensor.dtype().name()
    }

    /// CUDA device ordinal (-1 for a tensor in host memory).
    #[getter]
    fn device(&self) -> i32 {
        self.tensor.device()
    }

    #[getter]
    fn nbytes(&self) -> usize {
        self.tensor.nbytes()
    }

    /// The device address of the first element. Handing it out means the memory may be
    /// used on any stream: its final free then waits for the device's context.
    #[getter]
    fn data_ptr(&self) -> u64 {
        self.tensor.data_ptr()
    }

    /// The `CUstream` the upload was queued on (0 when it had finished at creation).
    #[getter]
    fn stream(&self) -> usize {
        self.tensor.stream_handle()
    }

    /// Whether the upload has finished (never blocks).
    fn is_ready(&self) -> PyResult<bool> {
        self.tensor.is_ready().map_err(to_pyerr)
    }

    /// Blocks (without the GIL) until the upload has finished.
    fn synchronize(&self) -> PyResult<()> {
        self.tensor.synchronize().map_err(to_pyerr)
    }

    fn __repr__(&self) -> String {
        let place = match self.device_tuple() {
            (KDL_CUDA, id) => format!("cuda:{id}"),
            (KDL_CPU, _) => "cpu".to_owned(),
            (t, id) => format!("dlpack device ({t}, {id})"),
        };
        format!(
            "CudaTensor(shape={:?}, dtype={}, device={place})",
            self.tensor.shape(),
            self.tensor.dtype().name()
        )
    }
}
