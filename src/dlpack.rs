//! DLPack's C ABI (the structs of `dlpack.h` v1.x, declared here so that no header or
//! toolkit is needed) and the Python capsules that carry managed tensors. A leaf: it
//! knows nothing of who produces a tensor (CUDA device tensors in `cuda`, batch buffers
//! of tensor handlers in `tensor`).
//!
//! The structs are hidden from cbindgen (`cbindgen:ignore`): the C header declares
//! `DLManagedTensor` opaquely (see `ffi::tensor`) so it never clashes with `dlpack.h`.
//! Capsule destructors touch no Python object but the capsule, and take the GIL
//! themselves when the thread that drops the capsule does not hold it.
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

/// Where an export's data is and what it is: everything of a `DLTensor` but the shape and
/// stride pointers, which the export owns.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ExportDesc<'a> {
    pub(crate) data: *mut c_void,
    pub(crate) device: DLDevice,
    pub(crate) dtype: DLDataType,
    pub(crate) shape: &'a [i64],
    /// In elements.
    pub(crate) strides: &'a [i64],
}

/// What an export owns: its own copies of shape and strides (consumers get mutable
/// pointers) and `owner`, which keeps the data alive until the deleter drops it.
struct ExportOwned<O> {
    shape: Box<[i64]>,
    strides: Box<[i64]>,
    _owner: O,
}

impl<O> ExportOwned<O> {
    fn new(desc: &ExportDesc<'_>, owner: O) -> (ExportOwned<O>, DLTensor) {
        let mut owned = ExportOwned { shape: desc.shape.into(), strides: desc.strides.into(), _owner: owner };
        let dl_tensor = DLTensor {
            data: desc.data,
            device: desc.device,
            ndim: owned.shape.len() as i32,
            dtype: desc.dtype,
            shape: owned.shape.as_mut_ptr(),
            strides: owned.strides.as_mut_ptr(),
            byte_offset: 0,
        };
        (owned, dl_tensor)
    }
}

/// The heap block behind a legacy export; `managed` first, so that the block's address
/// is the `DLManagedTensor*` handed out (and its `manager_ctx`).
#[repr(C)]
struct LegacyExport<O> {
    managed: DLManagedTensor,
    owned: ExportOwned<O>,
}

#[repr(C)]
struct VersionedExport<O> {
    managed: DLManagedTensorVersioned,
    owned: ExportOwned<O>,
}

unsafe extern "C" fn legacy_deleter<O>(managed: *mut DLManagedTensor) {
    if managed.is_null() {
        return;
    }
    // Dropping the owner may take locks or free memory; never unwind into the consumer.
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: made by `export_legacy::<O>` (a leaked Box<LegacyExport<O>> whose first
        // field is the managed tensor); DLPack calls the deleter exactly once.
        drop(unsafe { Box::from_raw(managed.cast::<LegacyExport<O>>()) });
    }));
}

unsafe extern "C" fn versioned_deleter<O>(managed: *mut DLManagedTensorVersioned) {
    if managed.is_null() {
        return;
    }
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: as in legacy_deleter, for a Box<VersionedExport<O>>.
        drop(unsafe { Box::from_raw(managed.cast::<VersionedExport<O>>()) });
    }));
}

/// A new legacy `DLManagedTensor` describing `desc`, owning `owner` until its deleter
/// runs. The caller owns it and must call its deleter exactly once (or hand it to a
/// consumer that will). The deleter touches no Python object.
pub(crate) fn export_legacy<O: Send + 'static>(desc: &ExportDesc<'_>, owner: O) -> *mut DLManagedTensor {
    let (owned, dl_tensor) = ExportOwned::new(desc, owner);
    let block = Box::into_raw(Box::new(LegacyExport {
        managed: DLManagedTensor {
            dl_tensor,
            manager_ctx: std::ptr::null_mut(),
            deleter: Some(legacy_deleter::<O>),
        },
        owned,
    }));
    // SAFETY: block is a fresh, valid allocation; moving the Box did not move the heap
    // data the shape/strides pointers refer to.
    unsafe { (*block).managed.manager_ctx = block.cast() };
    block.cast()
}

/// As [`export_legacy`], a `DLManagedTensorVersioned` (version 1.0, flags 0: writable,
/// not a copy).
pub(crate) fn export_versioned<O: Send + 'static>(
    desc: &ExportDesc<'_>,
    owner: O,
) -> *mut DLManagedTensorVersioned {
    let (owned, dl_tensor) = ExportOwned::new(desc, owner);
    let block = Box::into_raw(Box::new(VersionedExport {
        managed: DLManagedTensorVersioned {
            version: DLPACK_VERSION,
            manager_ctx: std::ptr::null_mut(),
            deleter: Some(versioned_deleter::<O>),
            flags: 0,
            dl_tensor,
        },
        owned,
    }));
    // SAFETY: as in export_legacy.
    unsafe { (*block).managed.manager_ctx = block.cast() };
    block.cast()
}

/// Checks what a consumer asked of `__dlpack__` that a producer exporting its memory as is
/// (`what`, e.g. "the tensor", on DLPack device `own`) can refuse: another device, or a
/// copy.
pub(crate) fn check_export_request(
    what: &str,
    own: (i32, i32),
    dl_device: Option<(i32, i32)>,
    copy: Option<bool>,
) -> PyResult<()> {
    if let Some(requested) = dl_device.filter(|&d| d != own) {
        return Err(pyo3::exceptions::PyBufferError::new_err(format!(
            "cannot export {what} on DLPack device {own:?} to device {requested:?}"
        )));
    }
    if copy == Some(true) {
        return Err(pyo3::exceptions::PyBufferError::new_err(format!(
            "copy=True is not supported: {what} is exported without a copy"
        )));
    }
    Ok(())
}

/// Runs `f` attached to the interpreter: directly when this thread already is, else
/// through `PyGILState_Ensure` (capsule destructors may in principle run on a thread
/// that holds no thread state; nothing here may assume the GIL is held).
pub(crate) fn with_gil_state(f: impl FnOnce()) {
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
