//! DLPack: the C structs (layout of `dlpack.h` v1.x, declared here so no header or
//! toolkit is needed), the two managed-tensor exports of a [`DeviceTensor`] (legacy
//! `DLManagedTensor` and versioned `DLManagedTensorVersioned`) and their Python capsules.
//!
//! The structs are hidden from cbindgen (`cbindgen:ignore`): the C header declares
//! `DLManagedTensor` opaquely (see `ffi::tensor`) so it never clashes with `dlpack.h`.
//!
//! Each export owns a reference to the tensor's storage: the memory is freed exactly
//! once, when the last of the tensor handles and exports is gone. Deleters touch no
//! Python object, so consumers may call them on any thread, with or without the GIL.

use super::tensor::DeviceTensor;
use crate::error::{Error, ErrorKind, Result};
use pyo3::ffi;
use pyo3::prelude::*;
use std::ffi::{c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// `DLPackVersion`.
/// cbindgen:ignore
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DLPackVersion {
    pub major: u32,
    pub minor: u32,
}

/// The DLPack version pyscheduler's versioned exports declare.
pub const DLPACK_VERSION: DLPackVersion = DLPackVersion { major: 1, minor: 0 };

/// `DLDeviceType` values used here.
pub const KDL_CPU: i32 = 1;
pub const KDL_CUDA: i32 = 2;

/// `DLDataTypeCode` values used here.
pub const KDL_INT: u8 = 0;
pub const KDL_UINT: u8 = 1;
pub const KDL_FLOAT: u8 = 2;
pub const KDL_BFLOAT: u8 = 4;

/// `DLDevice`.
/// cbindgen:ignore
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DLDevice {
    pub device_type: i32,
    pub device_id: i32,
}

/// `DLDataType`.
/// cbindgen:ignore
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DLDataType {
    pub code: u8,
    pub bits: u8,
    pub lanes: u16,
}

/// `DLTensor`.
/// cbindgen:ignore
#[repr(C)]
#[derive(Debug)]
pub struct DLTensor {
    pub data: *mut c_void,
    pub device: DLDevice,
    pub ndim: i32,
    pub dtype: DLDataType,
    pub shape: *mut i64,
    pub strides: *mut i64,
    pub byte_offset: u64,
}

/// `DLManagedTensor` (the legacy, unversioned export; capsule name "dltensor").
/// cbindgen:ignore
#[repr(C)]
#[derive(Debug)]
pub struct DLManagedTensor {
    pub dl_tensor: DLTensor,
    pub manager_ctx: *mut c_void,
    pub deleter: Option<unsafe extern "C" fn(*mut DLManagedTensor)>,
}

/// `DLManagedTensorVersioned` (DLPack >= 1.0; capsule name "dltensor_versioned").
/// cbindgen:ignore
#[repr(C)]
#[derive(Debug)]
pub struct DLManagedTensorVersioned {
    pub version: DLPackVersion,
    pub manager_ctx: *mut c_void,
    pub deleter: Option<unsafe extern "C" fn(*mut DLManagedTensorVersioned)>,
    pub flags: u64,
    pub dl_tensor: DLTensor,
}

pub const DLTENSOR_NAME: &CStr = c"dltensor";
pub const DLTENSOR_VERSIONED_NAME: &CStr = c"dltensor_versioned";

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

/// Runs `f` attached to the interpreter: directly when this thread already is, else
/// through `PyGILState_Ensure` (capsule destructors may in principle run on a thread
/// that holds no thread state; nothing here may assume the GIL is held).
fn with_gil_state(f: impl FnOnce()) {
    if crate::runtime::is_attached() {
        f();
    } else {
        // SAFETY: the interpreter is running (a capsule exists); Ensure/Release pair.
        let state = unsafe { ffi::PyGILState_Ensure() };
        f();
        // SAFETY: releases what Ensure acquired, on the same thread.
        unsafe { ffi::PyGILState_Release(state) };
    }
}

/// Destructor of "dltensor" capsules: frees the tensor only if no consumer took it (a
/// consumer renames the capsule "used_dltensor" and calls the deleter itself).
unsafe extern "C" fn legacy_capsule_destructor(capsule: *mut ffi::PyObject) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        with_gil_state(|| {
            // SAFETY: `capsule` is the capsule being destroyed; IsValid sets no exception
            // and GetPointer is called only when the name matches.
            unsafe {
                if ffi::PyCapsule_IsValid(capsule, DLTENSOR_NAME.as_ptr()) == 1 {
                    let managed =
                        ffi::PyCapsule_GetPointer(capsule, DLTENSOR_NAME.as_ptr()).cast::<DLManagedTensor>();
                    if let Some(deleter) = managed.as_ref().and_then(|m| m.deleter) {
                        deleter(managed);
                    }
                }
            }
        })
    }));
}

/// Destructor of "dltensor_versioned" capsules (consumed: "used_dltensor_versioned").
unsafe extern "C" fn versioned_capsule_destructor(capsule: *mut ffi::PyObject) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        with_gil_state(|| {
            // SAFETY: as in legacy_capsule_destructor.
            unsafe {
                if ffi::PyCapsule_IsValid(capsule, DLTENSOR_VERSIONED_NAME.as_ptr()) == 1 {
                    let managed = ffi::PyCapsule_GetPointer(capsule, DLTENSOR_VERSIONED_NAME.as_ptr())
                        .cast::<DLManagedTensorVersioned>();
                    if let Some(deleter) = managed.as_ref().and_then(|m| m.deleter) {
                        deleter(managed);
                    }
                }
            }
        })
    }));
}

/// Wraps a legacy managed tensor (from any producer) in a "dltensor" capsule that owns
/// it: if no consumer takes it, the capsule's destructor calls the deleter. The tensor
/// is consumed on every path: on failure its deleter has been called.
///
/// # Safety
/// `managed` is NULL or a valid `DLManagedTensor` owned by the caller.
pub unsafe fn legacy_capsule<'py>(
    py: Python<'py>,
    managed: *mut DLManagedTensor,
) -> Result<Bound<'py, PyAny>> {
    if managed.is_null() {
        return Err(Error::invalid_argument("managed tensor is NULL"));
    }
    // SAFETY: GIL held (py); the name is a static string; the destructor is ours.
    let capsule = unsafe {
        ffi::PyCapsule_New(managed.cast(), DLTENSOR_NAME.as_ptr(), Some(legacy_capsule_destructor))
    };
    if capsule.is_null() {
        // SAFETY: the capsule was not created, so the caller's ownership passes to us.
        unsafe {
            if let Some(deleter) = (*managed).deleter {
                deleter(managed);
            }
        }
        return Err(Error::fetch(py, ErrorKind::Internal, "creating a DLPack capsule"));
    }
    // SAFETY: a new reference, owned from here on.
    Ok(unsafe { Bound::from_owned_ptr(py, capsule) })
}

/// Like [`legacy_capsule`] for a versioned managed tensor ("dltensor_versioned").
///
/// # Safety
/// `managed` is NULL or a valid `DLManagedTensorVersioned` owned by the caller.
pub unsafe fn versioned_capsule<'py>(
    py: Python<'py>,
    managed: *mut DLManagedTensorVersioned,
) -> Result<Bound<'py, PyAny>> {
    if managed.is_null() {
        return Err(Error::invalid_argument("managed tensor is NULL"));
    }
    // SAFETY: as in legacy_capsule.
    let capsule = unsafe {
        ffi::PyCapsule_New(
            managed.cast(),
            DLTENSOR_VERSIONED_NAME.as_ptr(),
            Some(versioned_capsule_destructor),
        )
    };
    if capsule.is_null() {
        // SAFETY: as in legacy_capsule.
        unsafe {
            if let Some(deleter) = (*managed).deleter {
                deleter(managed);
            }
        }
        return Err(Error::fetch(py, ErrorKind::Internal, "creating a DLPack capsule"));
    }
    // SAFETY: a new reference, owned from here on.
    Ok(unsafe { Bound::from_owned_ptr(py, capsule) })
}
