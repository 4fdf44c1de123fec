//! DLPack exports of a [`DeviceTensor`]: the legacy `DLManagedTensor` and the versioned
//! `DLManagedTensorVersioned` (the ABI structs and capsules live in `crate::dlpack`).
//!
//! Each export owns a reference to the tensor's storage: the memory is freed exactly
//! once, when the last of the tensor handles and exports is gone. Deleters touch no
//! Python object, so consumers may call them on any thread, with or without the GIL.

pub use crate::dlpack::*;

use super::tensor::DeviceTensor;
use std::ffi::c_void;

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
