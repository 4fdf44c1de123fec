//! DLPack exports of a [`DeviceTensor`]: the legacy `DLManagedTensor` and the versioned
//! `DLManagedTensorVersioned` (the ABI structs and capsules live in `crate::dlpack`).
//!
//! Each export owns a reference to the tensor's storage: the memory is freed exactly
//! once, when the last of the tensor handles and exports is gone. Deleters touch no
//! Python object, so consumers may call them on any thread, with or without the GIL.
//!
//! May call: `tensor`, `crate::dlpack`, `crate::error`.

pub use crate::dlpack::*;

use super::tensor::DeviceTensor;
use crate::error::Result;
use pyo3::prelude::*;
use std::ffi::c_void;

impl DeviceTensor {
    /// A legacy `DLManagedTensor` sharing this tensor's storage, after waiting for the
    /// upload (a bare DLManagedTensor cannot tell its consumer which stream to wait on).
    /// The caller owns it and calls its deleter exactly once, on any thread.
    pub fn to_dlpack(&self) -> Result<*mut DLManagedTensor> {
        self.synchronize()?;
        Ok(to_legacy(self))
    }

    /// Like [`DeviceTensor::to_dlpack`], versioned (DLPack 1.0).
    pub fn to_dlpack_versioned(&self) -> Result<*mut DLManagedTensorVersioned> {
        self.synchronize()?;
        Ok(to_versioned(self))
    }

    /// A "dltensor" capsule (legacy DLPack) owning a share of the storage, after waiting
    /// for the upload. `torch.from_dlpack(capsule)` accepts it.
    /// PRECONDITION: attached to the interpreter (implied by `py`).
    pub fn to_capsule<'py>(&self, py: Python<'py>) -> Result<Bound<'py, PyAny>> {
        self.synchronize()?;
        // SAFETY: a fresh managed tensor owned by us, handed to the capsule.
        unsafe { legacy_capsule(py, to_legacy(self)) }
    }
}

/// The description of `tensor` for an export.
fn desc_of(tensor: &DeviceTensor) -> ExportDesc<'_> {
    ExportDesc {
        data: tensor.raw_data_ptr() as *mut c_void,
        device: tensor.dl_device(),
        dtype: tensor.dtype().dl_data_type(),
        shape: tensor.shape(),
        strides: tensor.strides(),
    }
}

/// A new legacy `DLManagedTensor` sharing `tensor`'s storage. The caller owns it and
/// must call its deleter exactly once (or hand it to a consumer that will).
/// No synchronization: see [`DeviceTensor::synchronize`]. The consumer's stream is
/// unknown, so the final release of device memory waits for the device's context.
pub fn to_legacy(tensor: &DeviceTensor) -> *mut DLManagedTensor {
    tensor.note_unknown_consumer();
    export_legacy(tensor)
}

/// [`to_legacy`] for callers that record the consumer's stream themselves.
pub(crate) fn export_legacy(tensor: &DeviceTensor) -> *mut DLManagedTensor {
    crate::dlpack::export_legacy(&desc_of(tensor), tensor.clone())
}

/// A new `DLManagedTensorVersioned` (version 1.0, flags 0: writable, not a copy)
/// sharing `tensor`'s storage. Ownership and release as in [`to_legacy`].
pub fn to_versioned(tensor: &DeviceTensor) -> *mut DLManagedTensorVersioned {
    tensor.note_unknown_consumer();
    export_versioned(tensor)
}

/// [`to_versioned`] for callers that record the consumer's stream themselves.
pub(crate) fn export_versioned(tensor: &DeviceTensor) -> *mut DLManagedTensorVersioned {
    crate::dlpack::export_versioned(&desc_of(tensor), tensor.clone())
}
