//! DLPack exports of a [`DeviceTensor`]: the legacy `DLManagedTensor` and the versioned
//! `DLManagedTensorVersioned` (the ABI structs and capsules live in `crate::dlpack`).
//!
//! Each export owns a reference to the tensor's storage: the memory is freed exactly
//! once, when the last of the tensor handles and exports is gone. Deleters touch no
//! Python object, so consumers may call them on any thread, with or without the GIL.

pub use crate::dlpack::*;

use super::tensor::DeviceTensor;
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// What an export owns: its own copies of shape and strides (consumers get mutable
/// pointers) and a reference to the tensor's storage.
struct ExportOwned {
    shape: Box<[i64]>,
    strides: Box<[i64]>,
    _tensor: DeviceTensor,
}

impl ExportOwned {
    fn new(tensor: &DeviceTensor) -> ExportOwned {
        ExportOwned {
            shape: tensor.shape().into(),
            strides: tensor.strides().into(),
            _tensor: tensor.clone(),
        }
    }

    fn dl_tensor(&mut self, tensor: &DeviceTensor) -> DLTensor {
        DLTensor {
            data: tensor.raw_data_ptr() as *mut c_void,
            device: tensor.dl_device(),
            ndim: self.shape.len() as i32,
            dtype: tensor.dtype().dl_data_type(),
            shape: self.shape.as_mut_ptr(),
            strides: self.strides.as_mut_ptr(),
            byte_offset: 0,
        }
    }
}

/// The heap block behind a legacy export; `managed` first so that the block's address
/// is the `DLManagedTensor*` handed out.
#[repr(C)]
struct LegacyExport {
    managed: DLManagedTensor,
    owned: ExportOwned,
}

#[repr(C)]
struct VersionedExport {
    managed: DLManagedTensorVersioned,
    owned: ExportOwned,
}

unsafe extern "C" fn legacy_deleter(managed: *mut DLManagedTensor) {
    if managed.is_null() {
        return;
    }
    // A panic must not unwind into the consumer; dropping only frees memory.
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `managed` was produced by `to_legacy` (a leaked Box<LegacyExport>
        // whose first field it is, and manager_ctx points at the same block); the
        // DLPack contract is that the deleter is called exactly once.
        drop(unsafe { Box::from_raw((*managed).manager_ctx.cast::<LegacyExport>()) });
    }));
}

unsafe extern "C" fn versioned_deleter(managed: *mut DLManagedTensorVersioned) {
    if managed.is_null() {
        return;
    }
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: as in legacy_deleter, for a Box<VersionedExport> from `to_versioned`.
        drop(unsafe { Box::from_raw((*managed).manager_ctx.cast::<VersionedExport>()) });
    }));
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
    let mut owned = ExportOwned::new(tensor);
    let dl_tensor = owned.dl_tensor(tensor);
    let block = Box::into_raw(Box::new(LegacyExport {
        managed: DLManagedTensor {
            dl_tensor,
            manager_ctx: std::ptr::null_mut(),
            deleter: Some(legacy_deleter),
        },
        owned,
    }));
    // SAFETY: block is a fresh, valid allocation; moving the Box did not move the heap
    // data the shape/strides pointers refer to.
    unsafe { (*block).managed.manager_ctx = block.cast() };
    block.cast()
}

/// A new `DLManagedTensorVersioned` (version 1.0, flags 0: writable, not a copy)
/// sharing `tensor`'s storage. Ownership and release as in [`to_legacy`].
pub fn to_versioned(tensor: &DeviceTensor) -> *mut DLManagedTensorVersioned {
    tensor.note_unknown_consumer();
    export_versioned(tensor)
}

/// [`to_versioned`] for callers that record the consumer's stream themselves.
pub(crate) fn export_versioned(tensor: &DeviceTensor) -> *mut DLManagedTensorVersioned {
    let mut owned = ExportOwned::new(tensor);
    let dl_tensor = owned.dl_tensor(tensor);
    let block = Box::into_raw(Box::new(VersionedExport {
        managed: DLManagedTensorVersioned {
            version: DLPACK_VERSION,
            manager_ctx: std::ptr::null_mut(),
            deleter: Some(versioned_deleter),
            flags: 0,
            dl_tensor,
        },
        owned,
    }));
    // SAFETY: as in to_legacy.
    unsafe { (*block).managed.manager_ctx = block.cast() };
    block.cast()
}
