//! Tests of the CUDA layer that run on any machine: on one without a driver (CI) every
//! entry point, Rust and C, must return the clear PYSCHED_CUDA error and never panic;
//! arguments are checked before CUDA is touched; and the DLPack export machinery
//! (capsules, `__dlpack__`, versioned exports, exactly-once release) is exercised on
//! tensors in host memory, which need no GPU.

#![cfg(feature = "cuda")]

mod common;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyAnyMethods, PyDict};
use pyscheduler::cuda::{self, dlpack, DType, DeviceTensor, Stager, TensorDesc};
use pyscheduler::ffi::pysched_status::{self, *};
use pyscheduler::ffi::tensor::*;
use pyscheduler::ffi::{error::*, pysched_error};
use pyscheduler::ErrorKind;
use std::ffi::{c_void, CStr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Whether this machine has a usable GPU (then the no-driver tests have nothing to check).
fn gpu_present() -> bool {
    let present = cuda::device_count().is_ok();
    if present {
        eprintln!("a CUDA device is present: skipping the no-driver checks");
    }
    present
}

fn assert_no_cuda(e: &pyscheduler::Error) {
    assert_eq!(e.kind(), ErrorKind::Cuda, "{e}");
    assert!(
        e.message().starts_with(cuda::NO_DRIVER_MESSAGE) || e.message().starts_with(cuda::NO_DEVICE_MESSAGE),
        "unclear message: {e}"
    );
}

/// Takes an error handed out by the C ABI: its status and message.
fn take_error(status: pysched_status, err: *mut pysched_error) -> (pysched_status, String) {
    assert!(!err.is_null(), "status {status:?} without an error object");
    assert_eq!(pysched_error_kind(err), status);
    // SAFETY: a live error; the message is copied before the error is freed.
    let msg = unsafe { CStr::from_ptr(pysched_error_message(err)) }.to_string_lossy().into_owned();
    pysched_error_free(err);
    (status, msg)
}

fn desc_f32(shape: &[i64], device: i32) -> pysched_tensor_desc {
    pysched_tensor_desc {
        dtype: pysched_dtype::PYSCHED_DTYPE_F32 as u32,
        ndim: shape.len() as u32,
        shape: shape.as_ptr(),
        strides: std::ptr::null(),
        device,
    }
}

#[test]
fn rust_entry_points_report_no_driver() {
    if gpu_present() {
        return;
    }
    assert_no_cuda(&cuda::device_count().unwrap_err());
    assert_no_cuda(&cuda::mem_info(0).unwrap_err());
    assert_no_cuda(&cuda::mem_info(-1).unwrap_err());
    let data = vec![1.0f32; 12];
    assert_no_cuda(&DeviceTensor::from_slice(&data, &[3, 4], -1).err().unwrap());
    assert_no_cuda(&DeviceTensor::from_slice(&data, &[3, 4], 0).err().unwrap());
    let bytes = vec![0u8; 8];
    for dtype in [DType::F64, DType::I64] {
        let desc = TensorDesc::new(dtype, &[1]);
        assert_no_cuda(&DeviceTensor::from_host(&bytes, &desc).err().unwrap());
    }
    // Empty tensors still need a device.
    assert_no_cuda(&DeviceTensor::from_host(&[], &TensorDesc::new(DType::U8, &[0, 5])).err().unwrap());
    assert_no_cuda(&Stager::new(-1, 0).unwrap_err());
    assert_no_cuda(&Stager::new(0, 1 << 20).unwrap_err());
}

#[test]
fn arguments_are_checked_before_cuda() {
    let four = [0u8; 16];
    let cases: Vec<(TensorDesc, usize)> = vec![
        // 4 bytes short of a 2x2 f32.
        (TensorDesc::new(DType::F32, &[2, 2]), 12),
        // A byte too many for a contiguous tensor.
        (TensorDesc::new(DType::U8, &[15]), 16),
        (TensorDesc::new(DType::F32, &[-1, 4]), 16),
        (TensorDesc::new(DType::F32, &[2, 2]).with_strides(&[2]), 16),
        (TensorDesc::new(DType::F32, &[2, 2]).with_strides(&[-2, 1]), 16),
        // Strides reaching past the buffer: (1*8 + 1*1 + 1) * 4 bytes > 16.
        (TensorDesc::new(DType::F32, &[2, 2]).with_strides(&[8, 1]), 16),
        (TensorDesc::new(DType::F32, &[i64::MAX, 4]), 16),
        (TensorDesc::new(DType::F32, &[2, 2]).on_device(-2), 16),
        (TensorDesc::new(DType::U8, &[1; 65]), 1),
    ];
    for (desc, n) in cases {
        let e = DeviceTensor::from_host(&four[..n], &desc).err().expect("must fail");
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{desc:?}: {e}");
        let e = DeviceTensor::in_host_memory(&four[..n], &desc).err().expect("must fail");
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{desc:?}: {e}");
    }
    assert_eq!(Stager::new(-5, 0).unwrap_err().kind(), ErrorKind::InvalidArgument);
}

#[test]
fn c_entry_points_report_no_driver() {
    if gpu_present() {
        return;
    }
    let mut err: *mut pysched_error = std::ptr::null_mut();

    let mut count = -7;
    let st = pysched_cuda_device_count(&mut count, &mut err);
    let (st, msg) = take_error(st, err);
    assert_eq!(st, PYSCHED_CUDA);
    assert!(msg.starts_with("no CUDA driver found"), "{msg}");
    assert_eq!(count, -7, "out-parameter written on failure");

    let (mut free, mut total) = (7usize, 7usize);
    err = std::ptr::null_mut();
    let st = pysched_cuda_mem_info(0, &mut free, &mut total, &mut err);
    assert_eq!(take_error(st, err).0, PYSCHED_CUDA);
    assert_eq!((free, total), (7, 7));

    let data = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
    let shape = [2i64, 3];
    let desc = desc_f32(&shape, -1);
    let mut tensor: *mut pysched_tensor = std::ptr::null_mut();
    err = std::ptr::null_mut();
    let st = pysched_tensor_new(data.as_ptr().cast(), 24, &desc, &mut tensor, &mut err);
    let (st, msg) = take_error(st, err);
    assert_eq!(st, PYSCHED_CUDA);
    assert!(msg.contains("no CUDA driver found"), "{msg}");
    assert!(tensor.is_null());

    let mut stager: *mut pysched_stager = std::ptr::null_mut();
    err = std::ptr::null_mut();
    let st = pysched_stager_new(-1, 0, &mut stager, &mut err);
    assert_eq!(take_error(st, err).0, PYSCHED_CUDA);
    assert!(stager.is_null());

    // out_error may be NULL: the status alone still says CUDA.
    assert_eq!(
        pysched_tensor_new(data.as_ptr().cast(), 24, &desc, &mut tensor, std::ptr::null_mut()),
        PYSCHED_CUDA
    );
}

#[test]
fn c_entry_points_reject_null_and_bad_arguments() {
    let mut err: *mut pysched_error = std::ptr::null_mut();
    let data = [0.0f32; 6];
    let shape = [2i64, 3];
    let desc = desc_f32(&shape, 0);
    let mut tensor: *mut pysched_tensor = std::ptr::null_mut();
    let null_err = std::ptr::null_mut();

    let invalid = PYSCHED_INVALID_ARGUMENT;
    assert_eq!(pysched_cuda_device_count(std::ptr::null_mut(), null_err), invalid);
    assert_eq!(pysched_cuda_mem_info(0, std::ptr::null_mut(), std::ptr::null_mut(), null_err), invalid);
    assert_eq!(pysched_tensor_new(data.as_ptr().cast(), 24, &desc, std::ptr::null_mut(), null_err), invalid);
    assert_eq!(
        pysched_tensor_new(data.as_ptr().cast(), 24, std::ptr::null(), &mut tensor, null_err),
        invalid
    );
    assert_eq!(pysched_tensor_new(std::ptr::null(), 24, &desc, &mut tensor, null_err), invalid);
    // Wrong size, bad dtype, NULL shape with ndim > 0, too many dimensions: all before CUDA.
    let st = pysched_tensor_new(data.as_ptr().cast(), 20, &desc, &mut tensor, &mut err);
    let (_, msg) = take_error(st, err);
    assert!(msg.contains("needs 24"), "{msg}");
    let mut bad = desc;
    bad.dtype = 99;
    assert_eq!(pysched_tensor_new(data.as_ptr().cast(), 24, &bad, &mut tensor, null_err), invalid);
    let mut bad = desc;
    bad.shape = std::ptr::null();
    assert_eq!(pysched_tensor_new(data.as_ptr().cast(), 24, &bad, &mut tensor, null_err), invalid);
    let mut bad = desc;
    bad.ndim = 1000;
    assert_eq!(pysched_tensor_new(data.as_ptr().cast(), 24, &bad, &mut tensor, null_err), invalid);
    assert!(tensor.is_null());

    let mut info = std::mem::MaybeUninit::<pysched_tensor_info>::uninit();
    assert_eq!(pysched_tensor_get_info(std::ptr::null(), info.as_mut_ptr(), null_err), invalid);
    assert_eq!(pysched_tensor_synchronize(std::ptr::null(), null_err), invalid);
    let mut obj: *mut ffi::PyObject = std::ptr::null_mut();
    assert_eq!(pysched_tensor_to_pyobject(std::ptr::null(), &mut obj, null_err), invalid);
    assert_eq!(pysched_tensor_to_capsule(std::ptr::null(), &mut obj, null_err), invalid);
    let mut managed: *mut DLManagedTensor = std::ptr::null_mut();
    assert_eq!(pysched_tensor_to_dlpack(std::ptr::null(), &mut managed, null_err), invalid);
    let mut managed_v: *mut DLManagedTensorVersioned = std::ptr::null_mut();
    assert_eq!(pysched_tensor_to_dlpack_versioned(std::ptr::null(), &mut managed_v, null_err), invalid);
    assert!(obj.is_null() && managed.is_null() && managed_v.is_null());

    assert_eq!(pysched_stager_new(-1, 0, std::ptr::null_mut(), null_err), invalid);
    let mut stager: *mut pysched_stager = std::ptr::null_mut();
    assert_eq!(pysched_stager_new(-3, 0, &mut stager, null_err), invalid);
    assert_eq!(
        pysched_stager_upload(std::ptr::null(), data.as_ptr().cast(), 24, &desc, &mut tensor, null_err),
        invalid
    );
    assert_eq!(pysched_stager_synchronize(std::ptr::null(), null_err), invalid);
    assert_eq!(pysched_stager_stream(std::ptr::null()), 0);
    assert_eq!(pysched_dlpack_to_capsule(std::ptr::null_mut(), &mut obj, null_err), invalid);

    // free(NULL) is a no-op.
    pysched_tensor_free(std::ptr::null_mut());
    pysched_stager_free(std::ptr::null_mut());
}

#[test]
fn concurrent_first_calls_never_panic() {
    let threads: Vec<_> = (0..16)
        .map(|i| {
            std::thread::spawn(move || {
                let data = vec![i as f32; 4];
                let r1 = cuda::device_count().map(|_| ());
                let r2 = DeviceTensor::from_slice(&data, &[2, 2], -1).map(|_| ());
                let r3 = Stager::new(-1, 0).map(|_| ());
                (r1, r2, r3)
            })
        })
        .collect();
    let gpu = gpu_present();
    for t in threads {
        let (r1, r2, r3) = t.join().expect("a CUDA call panicked");
        if !gpu {
            assert_no_cuda(&r1.unwrap_err());
            assert_no_cuda(&r2.unwrap_err());
            assert_no_cuda(&r3.unwrap_err());
        }
    }
}

// ---- DLPack export machinery, on tensors in host memory (no GPU needed) ----

fn host_tensor(values: &[f32], shape: &[i64]) -> DeviceTensor {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_ne_bytes()).collect();
    DeviceTensor::in_host_memory(&bytes, &TensorDesc::new(DType::F32, shape)).unwrap()
}

fn capsule_name(capsule: &Bound<'_, PyAny>) -> String {
    // SAFETY: GIL held; the capsule is alive; the name is copied at once.
    unsafe {
        let name = ffi::PyCapsule_GetName(capsule.as_ptr());
        assert!(!name.is_null());
        CStr::from_ptr(name).to_string_lossy().into_owned()
    }
}

#[test]
fn dlpack_object_exports_legacy_and_versioned_capsules() {
    let _m = common::manager();
    let t = host_tensor(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
    assert_eq!(t.share_count(), 1);
    Python::attach(|py| {
        let obj = t.to_pyobject(py).unwrap();
        assert_eq!(t.share_count(), 2);
        let dev: (i32, i32) = obj.call_method0("__dlpack_device__").unwrap().extract().unwrap();
        assert_eq!(dev, (1, 0));
        assert_eq!(obj.getattr("shape").unwrap().extract::<Vec<i64>>().unwrap(), vec![2, 3]);
        assert_eq!(obj.getattr("strides").unwrap().extract::<Vec<i64>>().unwrap(), vec![3, 1]);
        assert_eq!(obj.getattr("dtype").unwrap().extract::<String>().unwrap(), "float32");

        let legacy = obj.call_method0("__dlpack__").unwrap();
        assert_eq!(capsule_name(&legacy), "dltensor");
        assert_eq!(t.share_count(), 3);

        let kwargs = PyDict::new(py);
        kwargs.set_item("max_version", (1, 0)).unwrap();
        let versioned = obj.call_method("__dlpack__", (), Some(&kwargs)).unwrap();
        assert_eq!(capsule_name(&versioned), "dltensor_versioned");
        // SAFETY: GIL held; the capsule holds a DLManagedTensorVersioned made by us.
        unsafe {
            let m = ffi::PyCapsule_GetPointer(versioned.as_ptr(), c"dltensor_versioned".as_ptr())
                .cast::<dlpack::DLManagedTensorVersioned>();
            assert_eq!((*m).version, dlpack::DLPACK_VERSION);
            assert_eq!((*m).flags, 0);
            let dl = &(*m).dl_tensor;
            assert_eq!(dl.ndim, 2);
            assert_eq!(dl.dtype, dlpack::DLDataType { code: 2, bits: 32, lanes: 1 });
            assert_eq!(std::slice::from_raw_parts(dl.shape, 2), &[2, 3]);
            assert_eq!(std::slice::from_raw_parts(dl.strides, 2), &[3, 1]);
            assert_eq!(*(dl.data as *const f32).add(5), 6.0);
        }
        assert_eq!(t.share_count(), 4);

        kwargs.set_item("max_version", (0, 8)).unwrap();
        let old = obj.call_method("__dlpack__", (), Some(&kwargs)).unwrap();
        assert_eq!(capsule_name(&old), "dltensor");

        // Unconsumed capsules release their share in their destructor, exactly once.
        drop((legacy, versioned, old));
        assert_eq!(t.share_count(), 2);
        drop(obj);
    });
    assert_eq!(t.share_count(), 1);
}

#[test]
fn dlpack_object_rejects_what_it_cannot_do() {
    let _m = common::manager();
    let t = host_tensor(&[1.0; 4], &[4]);
    Python::attach(|py| {
        let obj = t.to_pyobject(py).unwrap();
        let call = |key: &str, value: Bound<'_, PyAny>| {
            let kwargs = PyDict::new(py);
            kwargs.set_item(key, value).unwrap();
            obj.call_method("__dlpack__", (), Some(&kwargs)).map(|_| ()).unwrap_err()
        };
        let e = call("dl_device", (2, 0).into_pyobject(py).unwrap().into_any());
        assert!(e.is_instance_of::<pyo3::exceptions::PyBufferError>(py), "{e}");
        let e = call("copy", true.into_pyobject(py).unwrap().to_owned().into_any());
        assert!(e.is_instance_of::<pyo3::exceptions::PyBufferError>(py), "{e}");
        // Positional arguments are not part of the protocol.
        assert!(obj.call_method1("__dlpack__", (1,)).is_err());
    });
    assert_eq!(t.share_count(), 1, "failed exports leaked a share");
}

#[test]
fn numpy_imports_the_dlpack_object() {
    let _m = common::manager();
    let values: Vec<f32> = (0..12).map(|v| v as f32 * 0.5).collect();
    Python::attach(|py| {
        let Ok(np) = py.import("numpy") else {
            eprintln!("numpy is not installed: skipping the numpy import check");
            return;
        };
        // A transposed view: shape (3, 4) over a (4, 3) row-major buffer.
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_ne_bytes()).collect();
        let desc = TensorDesc::new(DType::F32, &[3, 4]).with_strides(&[1, 3]);
        let t = DeviceTensor::in_host_memory(&bytes, &desc).unwrap();
        let obj = t.to_pyobject(py).unwrap();
        let arr = np.call_method1("from_dlpack", (&obj,)).unwrap();
        let got: Vec<Vec<f32>> = arr.call_method0("tolist").unwrap().extract().unwrap();
        for (r, row) in got.iter().enumerate() {
            for (c, &v) in row.iter().enumerate() {
                assert_eq!(v, values[c * 3 + r], "[{r}][{c}]");
            }
        }
        // numpy holds a share while the array lives (it consumed its capsule).
        assert_eq!(t.share_count(), 3);
        drop(arr);
        drop(obj);
        assert_eq!(t.share_count(), 1);

        for (dtype, size) in [(DType::F64, 8), (DType::I64, 8), (DType::I32, 4), (DType::U8, 1)] {
            let bytes: Vec<u8> = (0..size * 6).map(|b| b as u8).collect();
            let t = DeviceTensor::in_host_memory(&bytes, &TensorDesc::new(dtype, &[2, 3])).unwrap();
            let arr = np.call_method1("from_dlpack", (t.to_pyobject(py).unwrap(),)).unwrap();
            assert_eq!(arr.getattr("dtype").unwrap().str().unwrap().to_string(), dtype.name());
            let back: Vec<u8> = arr.call_method0("tobytes").unwrap().extract().unwrap();
            assert_eq!(back, bytes);
        }
    });
}

#[test]
fn raw_managed_tensors_are_freed_once_from_any_thread() {
    let t = host_tensor(&[1.0, 2.0], &[2]);
    let legacy = t.to_dlpack().unwrap() as usize;
    let versioned = t.to_dlpack_versioned().unwrap() as usize;
    assert_eq!(t.share_count(), 3);
    std::thread::spawn(move || {
        // SAFETY: each managed tensor is released exactly once, here, without the GIL.
        unsafe {
            let m = legacy as *mut dlpack::DLManagedTensor;
            ((*m).deleter.unwrap())(m);
            let v = versioned as *mut dlpack::DLManagedTensorVersioned;
            ((*v).deleter.unwrap())(v);
        }
    })
    .join()
    .unwrap();
    assert_eq!(t.share_count(), 1);
}

/// A foreign producer's managed tensor whose deleter counts its calls.
struct Foreign {
    managed: dlpack::DLManagedTensor,
    shape: [i64; 1],
    data: [f32; 3],
    deleted: Arc<AtomicUsize>,
}

unsafe extern "C" fn foreign_deleter(m: *mut dlpack::DLManagedTensor) {
    // SAFETY: manager_ctx is the leaked Box<Foreign> of `foreign()`; called once.
    let f = unsafe { Box::from_raw((*m).manager_ctx.cast::<Foreign>()) };
    f.deleted.fetch_add(1, Ordering::SeqCst);
}

fn foreign(deleted: &Arc<AtomicUsize>) -> *mut DLManagedTensor {
    let f = Box::into_raw(Box::new(Foreign {
        managed: dlpack::DLManagedTensor {
            dl_tensor: dlpack::DLTensor {
                data: std::ptr::null_mut(),
                device: dlpack::DLDevice { device_type: 1, device_id: 0 },
                ndim: 1,
                dtype: dlpack::DLDataType { code: 2, bits: 32, lanes: 1 },
                shape: std::ptr::null_mut(),
                strides: std::ptr::null_mut(),
                byte_offset: 0,
            },
            manager_ctx: std::ptr::null_mut(),
            deleter: Some(foreign_deleter),
        },
        shape: [3],
        data: [1.0, 2.0, 3.0],
        deleted: deleted.clone(),
    }));
    // SAFETY: f is a fresh allocation; the pointers refer into it.
    unsafe {
        (*f).managed.dl_tensor.data = (*f).data.as_mut_ptr().cast::<c_void>();
        (*f).managed.dl_tensor.shape = (*f).shape.as_mut_ptr();
        (*f).managed.manager_ctx = f.cast();
        std::ptr::addr_of_mut!((*f).managed).cast()
    }
}

#[test]
fn capsules_of_foreign_tensors_free_only_unconsumed_ones() {
    let _m = common::manager();
    let deleted = Arc::new(AtomicUsize::new(0));
    Python::attach(|py| {
        // Unconsumed: the capsule's destructor calls the deleter.
        let mut cap: *mut ffi::PyObject = std::ptr::null_mut();
        assert_eq!(pysched_dlpack_to_capsule(foreign(&deleted), &mut cap, std::ptr::null_mut()), PYSCHED_OK);
        // SAFETY: a new reference, owned here.
        let cap = unsafe { Bound::from_owned_ptr(py, cap) };
        assert_eq!(capsule_name(&cap), "dltensor");
        drop(cap);
        assert_eq!(deleted.load(Ordering::SeqCst), 1);

        // Consumed: the consumer renamed it and owns the tensor; the destructor leaves it.
        let managed = foreign(&deleted);
        let mut cap: *mut ffi::PyObject = std::ptr::null_mut();
        assert_eq!(pysched_dlpack_to_capsule(managed, &mut cap, std::ptr::null_mut()), PYSCHED_OK);
        // SAFETY: GIL held; renaming is what a DLPack consumer does on import.
        unsafe { assert_eq!(ffi::PyCapsule_SetName(cap, c"used_dltensor".as_ptr()), 0) };
        // SAFETY: the new reference is released here.
        unsafe { ffi::Py_DECREF(cap) };
        assert_eq!(deleted.load(Ordering::SeqCst), 1);
        // SAFETY: as the consumer, release it exactly once.
        unsafe { foreign_deleter(managed.cast()) };
        assert_eq!(deleted.load(Ordering::SeqCst), 2);

        // A NULL out-parameter still consumes the tensor.
        assert_eq!(
            pysched_dlpack_to_capsule(foreign(&deleted), std::ptr::null_mut(), std::ptr::null_mut()),
            PYSCHED_INVALID_ARGUMENT
        );
        assert_eq!(deleted.load(Ordering::SeqCst), 3);
    });
    // Without the GIL the call fails, and still consumes the tensor.
    let mut cap: *mut ffi::PyObject = std::ptr::null_mut();
    let mut err: *mut pysched_error = std::ptr::null_mut();
    let st = pysched_dlpack_to_capsule(foreign(&deleted), &mut cap, &mut err);
    let (st, msg) = take_error(st, err);
    assert_eq!(st, PYSCHED_INVALID_ARGUMENT);
    assert!(msg.contains("GIL"), "{msg}");
    assert!(cap.is_null());
    assert_eq!(deleted.load(Ordering::SeqCst), 4);
}

#[test]
fn capsule_from_host_tensor_is_released_by_its_destructor_off_the_main_thread() {
    let _m = common::manager();
    let t = host_tensor(&[3.0; 8], &[2, 4]);
    let t2 = t.clone();
    // Made and dropped on another thread, which attaches on its own.
    std::thread::spawn(move || {
        pyscheduler::runtime::attach(|py| {
            let cap = t2.to_capsule(py).unwrap();
            assert_eq!(capsule_name(&cap), "dltensor");
            assert_eq!(t2.share_count(), 3);
        });
    })
    .join()
    .unwrap();
    assert_eq!(t.share_count(), 1);
}
