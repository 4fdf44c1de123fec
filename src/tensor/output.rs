//! Reading what a tensor handler's function returned: one array or tensor per output,
//! through the buffer protocol (numpy) or DLPack (torch, and anything with
//! `__dlpack__`), checked against the signature (leading dimension `B`, dtype, item
//! shape, device) and made host-readable and C-contiguous once.

use super::spec::{Placement, TensorSpec};
use crate::dlpack::{
    DLManagedTensor, DLManagedTensorVersioned, DLTensor, DLTENSOR_NAME, DLTENSOR_VERSIONED_NAME, KDL_CPU,
    KDL_CUDA,
};
use crate::dtype::DType;
use crate::error::{Error, ErrorKind, Result};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use std::ffi::{c_void, CStr};
use std::sync::Arc;

/// kDLCUDAHost: pinned host memory, readable by the CPU.
const KDL_CUDA_HOST: i32 = 3;

/// One output of a batch, readable as `rows * row_bytes` contiguous bytes.
pub(crate) struct OutputRows {
    base: *const u8,
    pub(crate) row_bytes: usize,
    /// What keeps `base` valid; released (GIL held) when this is dropped.
    _holder: Holder,
}

enum Holder {
    /// A buffer-protocol view of the result (released with `PyBuffer_Release`).
    Buffer(Box<ffi::Py_buffer>),
    /// A DLPack tensor we consumed (its deleter runs on drop).
    Legacy(*mut DLManagedTensor),
    Versioned(*mut DLManagedTensorVersioned),
    /// Our own contiguous copy (of strided or device data).
    Copy(#[allow(dead_code)] Vec<u8>),
    /// A host copy of device data, owned by the CUDA placement.
    #[allow(dead_code)]
    Staged(Box<dyn Send>),
}

impl Drop for Holder {
    fn drop(&mut self) {
        // SAFETY: each variant owns what it names; the buffer was filled by
        // PyObject_GetBuffer and is released once; DLPack deleters are called once.
        unsafe {
            match self {
                Holder::Buffer(view) => ffi::PyBuffer_Release(&mut **view),
                Holder::Legacy(m) => {
                    if let Some(d) = (**m).deleter {
                        d(*m)
                    }
                }
                Holder::Versioned(m) => {
                    if let Some(d) = (**m).deleter {
                        d(*m)
                    }
                }
                Holder::Copy(_) | Holder::Staged(_) => {}
            }
        }
    }
}

impl OutputRows {
    /// The address of row `i`. PRECONDITION: `i < rows`.
    pub(crate) fn row(&self, i: usize) -> *const u8 {
        // SAFETY: within the `rows * row_bytes` region (the precondition).
        unsafe { self.base.add(i * self.row_bytes) }
    }
}

/// Splits the function's result into one object per output.
pub(crate) fn split_result<'py>(
    result: Bound<'py, PyAny>,
    outputs: usize,
    name: &str,
) -> Result<Vec<Bound<'py, PyAny>>> {
    match outputs {
        0 => Ok(Vec::new()),
        1 => match result.cast::<PyTuple>() {
            Ok(t) if t.len() == 1 => Ok(vec![t.get_item(0).map_err(py_internal)?]),
            _ => Ok(vec![result]),
        },
        n => {
            let items: Vec<Bound<'py, PyAny>> = if let Ok(t) = result.cast::<PyTuple>() {
                t.iter().collect()
            } else if let Ok(l) = result.cast::<PyList>() {
                l.iter().collect()
            } else {
                return Err(bad_result(format!(
                    "{name} must return a tuple of {n} arrays or tensors (one per output), got {}",
                    type_name(&result)
                )));
            };
            if items.len() != n {
                return Err(bad_result(format!(
                    "{name} must return a tuple of {n} arrays or tensors (one per output), got {} of them",
                    items.len()
                )));
            }
            Ok(items)
        }
    }
}

fn py_internal(e: PyErr) -> Error {
    Error::internal(format!("reading the result: {e}"))
}

fn bad_result(message: String) -> Error {
    Error::new(ErrorKind::PythonException, message)
}

pub(crate) fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type().qualname().map(|n| n.to_string()).unwrap_or_else(|_| "<unknown>".into())
}

/// What output `k` of a batch of `rows` items must be (and the names error messages use).
pub(crate) struct Expect<'a> {
    pub(crate) name: &'a str,
    pub(crate) k: usize,
    pub(crate) spec: &'a TensorSpec,
    pub(crate) rows: usize,
    pub(crate) placement: Placement,
}

impl Expect<'_> {
    fn shape(&self) -> Vec<i64> {
        std::iter::once(self.rows).chain(self.spec.shape.iter().copied()).map(|n| n as i64).collect()
    }

    fn fail(&self, what: String) -> Error {
        bad_result(format!(
            "{}: output {} {what}; expected shape {} {} (B={} items of {})",
            self.name,
            self.k,
            fmt_shape(&self.shape()),
            self.spec.dtype.name(),
            self.rows,
            self.spec.describe()
        ))
    }

    fn check(&self, dtype: Option<DType>, dtype_text: &str, shape: &[i64]) -> Result<()> {
        if shape != self.shape().as_slice() {
            return Err(self.fail(format!("has shape {}", fmt_shape(shape))));
        }
        if dtype != Some(self.spec.dtype) {
            return Err(self.fail(format!("has dtype {dtype_text}")));
        }
        Ok(())
    }
}

fn fmt_shape(shape: &[i64]) -> String {
    match shape {
        [one] => format!("({one},)"),
        _ => format!("({})", shape.iter().map(i64::to_string).collect::<Vec<_>>().join(", ")),
    }
}

/// Reads one output (`obj`) of a batch, as `expect` describes it.
pub(crate) fn read_output(
    py: Python<'_>,
    obj: &Bound<'_, PyAny>,
    expect: &Expect<'_>,
    device: Option<&Arc<super::cuda::Placement>>,
) -> Result<OutputRows> {
    // SAFETY: GIL held; only inspects the type.
    let has_buffer = unsafe { ffi::PyObject_CheckBuffer(obj.as_ptr()) } != 0;
    let has_dlpack = obj.hasattr("__dlpack__").unwrap_or(false);
    if has_buffer {
        // The buffer protocol is the cheaper read; an exporter that refuses it (a CUDA
        // batch tensor returned as is) may still speak DLPack.
        match read_buffer(py, obj, expect) {
            Err(_) if has_dlpack => {}
            read => return read,
        }
    }
    if has_dlpack {
        return read_dlpack(py, obj, expect, device);
    }
    Err(expect.fail(format!(
        "is a {}, not an array or tensor (it needs __dlpack__ or the buffer protocol)",
        type_name(obj)
    )))
}

/// The dtype a `struct` format describes (native byte order only).
fn format_dtype(format: &CStr, itemsize: usize) -> Option<DType> {
    let f = format.to_bytes();
    let f = match f {
        [b'@' | b'=' | b'<', rest @ ..] if cfg!(target_endian = "little") || f[0] != b'<' => rest,
        _ => f,
    };
    Some(match (f, itemsize) {
        (b"f", 4) => DType::F32,
        (b"d", 8) => DType::F64,
        (b"e", 2) => DType::F16,
        (b"B", 1) => DType::U8,
        (b"b" | b"h" | b"i" | b"l" | b"q" | b"n", 4) => DType::I32,
        (b"b" | b"h" | b"i" | b"l" | b"q" | b"n", 8) => DType::I64,
        _ => return None,
    })
}

fn read_buffer(py: Python<'_>, obj: &Bound<'_, PyAny>, expect: &Expect<'_>) -> Result<OutputRows> {
    // SAFETY: zeroed Py_buffer is a valid "empty" value to be filled by GetBuffer.
    let mut view: Box<ffi::Py_buffer> = Box::new(unsafe { std::mem::zeroed() });
    // SAFETY: GIL held; `view` is writable; on success it must be released (Holder).
    if unsafe { ffi::PyObject_GetBuffer(obj.as_ptr(), &mut *view, ffi::PyBUF_RECORDS_RO) } != 0 {
        let e = PyErr::fetch(py);
        return Err(expect.fail(format!("could not be read through the buffer protocol ({e})")));
    }
    let holder = Holder::Buffer(view);
    let Holder::Buffer(v) = &holder else { unreachable!() };
    let ndim = v.ndim as usize;
    // SAFETY: PyBUF_RECORDS_RO asks for shape and strides arrays of ndim entries.
    let (shape, strides): (Vec<i64>, Vec<i64>) = unsafe {
        (
            (0..ndim).map(|d| *v.shape.add(d) as i64).collect(),
            (0..ndim).map(|d| *v.strides.add(d) as i64).collect(),
        )
    };
    let format = if v.format.is_null() {
        c"B"
    } else {
        // SAFETY: a NUL-terminated format string owned by the exporter.
        unsafe { CStr::from_ptr(v.format) }
    };
    let itemsize = v.itemsize as usize;
    let dtype = format_dtype(format, itemsize);
    let text = match dtype {
        Some(d) => d.name().to_owned(),
        None => format!("with buffer format {:?} ({itemsize} bytes)", format.to_string_lossy()),
    };
    expect.check(dtype, &text, &shape)?;
    let base = v.buf as *const u8;
    from_strided(base, &shape, &strides, itemsize, expect, holder)
}

/// Rows from host memory at `base` with byte `strides`: read in place when C-contiguous,
/// else copied once into a contiguous buffer.
fn from_strided(
    base: *const u8,
    shape: &[i64],
    strides: &[i64],
    itemsize: usize,
    expect: &Expect<'_>,
    holder: Holder,
) -> Result<OutputRows> {
    let row_bytes = expect.spec.item_bytes();
    if is_c_contiguous(shape, strides, itemsize as i64) {
        return Ok(OutputRows { base, row_bytes, _holder: holder });
    }
    let total = row_bytes * expect.rows;
    let mut copy = vec![0u8; total];
    let mut index = vec![0i64; shape.len()];
    let mut out = 0usize;
    while out < total {
        let offset: i64 = index.iter().zip(strides).map(|(i, s)| i * s).sum();
        // SAFETY: `offset` addresses an element inside the exporter's buffer (indices
        // within `shape`, strides as the exporter declared them).
        unsafe {
            std::ptr::copy_nonoverlapping(base.offset(offset as isize), copy.as_mut_ptr().add(out), itemsize)
        };
        out += itemsize;
        for d in (0..shape.len()).rev() {
            index[d] += 1;
            if index[d] < shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    drop(holder);
    let base = copy.as_ptr();
    Ok(OutputRows { base, row_bytes, _holder: Holder::Copy(copy) })
}

/// C order (dimensions of size 1 may have any stride).
fn is_c_contiguous(shape: &[i64], strides: &[i64], itemsize: i64) -> bool {
    let mut expected = itemsize;
    for d in (0..shape.len()).rev() {
        if shape[d] != 1 && strides[d] != expected {
            return false;
        }
        expected *= shape[d];
    }
    true
}

fn read_dlpack(
    py: Python<'_>,
    obj: &Bound<'_, PyAny>,
    expect: &Expect<'_>,
    device: Option<&Arc<super::cuda::Placement>>,
) -> Result<OutputRows> {
    let kwargs = PyDict::new(py);
    // A stream is passed only to a CUDA producer (CPU producers refuse one): it orders
    // the producer's work before our copy of the result.
    let on_cuda = obj
        .call_method0("__dlpack_device__")
        .and_then(|d| d.extract::<(i32, i32)>())
        .is_ok_and(|(kind, _)| kind == KDL_CUDA);
    if let (Some(d), true) = (device, on_cuda) {
        kwargs.set_item("stream", d.stream_handle()).map_err(py_internal)?;
    }
    kwargs.set_item("max_version", (1, 0)).map_err(py_internal)?;
    let method = obj.getattr("__dlpack__").map_err(py_internal)?;
    let capsule = match method.call((), Some(&kwargs)) {
        Ok(c) => c,
        // Producers older than DLPack 1.0 take no max_version.
        Err(e) if e.is_instance_of::<pyo3::exceptions::PyTypeError>(py) => {
            kwargs.del_item("max_version").map_err(py_internal)?;
            method
                .call((), Some(&kwargs))
                .map_err(|e| expect.fail(format!("could not be exported through __dlpack__ ({e})")))?
        }
        Err(e) => return Err(expect.fail(format!("could not be exported through __dlpack__ ({e})"))),
    };
    let cap = capsule.as_ptr();
    // SAFETY: GIL held; IsValid sets no exception; GetPointer is called only when the
    // name matches; renaming to "used_*" takes ownership (the DLPack consumer protocol).
    let (holder, dl): (Holder, *const DLTensor) = unsafe {
        if ffi::PyCapsule_IsValid(cap, DLTENSOR_VERSIONED_NAME.as_ptr()) == 1 {
            let m = ffi::PyCapsule_GetPointer(cap, DLTENSOR_VERSIONED_NAME.as_ptr())
                .cast::<DLManagedTensorVersioned>();
            if (*m).version.major > 1 {
                return Err(
                    expect.fail(format!("is a DLPack {}.x tensor (1.x expected)", (*m).version.major))
                );
            }
            ffi::PyCapsule_SetName(cap, c"used_dltensor_versioned".as_ptr());
            (Holder::Versioned(m), &(*m).dl_tensor)
        } else if ffi::PyCapsule_IsValid(cap, DLTENSOR_NAME.as_ptr()) == 1 {
            let m = ffi::PyCapsule_GetPointer(cap, DLTENSOR_NAME.as_ptr()).cast::<DLManagedTensor>();
            ffi::PyCapsule_SetName(cap, c"used_dltensor".as_ptr());
            (Holder::Legacy(m), &(*m).dl_tensor)
        } else {
            return Err(expect
                .fail(format!("returned {} from __dlpack__, not a DLPack capsule", type_name(&capsule))));
        }
    };
    // SAFETY: the consumed tensor stays valid until `holder` calls its deleter.
    let t = unsafe { &*dl };
    let ndim = t.ndim.max(0) as usize;
    // SAFETY: DLPack: shape has ndim entries; strides is NULL (C order) or ndim entries.
    let shape: Vec<i64> = unsafe { (0..ndim).map(|d| *t.shape.add(d)).collect() };
    let dtype = DType::from_dl(t.dtype);
    let text = match dtype {
        Some(d) => d.name().to_owned(),
        None => format!("with DLPack code {} bits {} lanes {}", t.dtype.code, t.dtype.bits, t.dtype.lanes),
    };
    expect.check(dtype, &text, &shape)?;
    let itemsize = expect.spec.dtype.size_bytes() as i64;
    let strides: Vec<i64> = if t.strides.is_null() {
        let mut s = vec![itemsize; ndim];
        for d in (0..ndim.saturating_sub(1)).rev() {
            s[d] = s[d + 1] * shape[d + 1];
        }
        s
    } else {
        // SAFETY: as above; DLPack strides count elements.
        unsafe { (0..ndim).map(|d| *t.strides.add(d) * itemsize).collect() }
    };
    // SAFETY: data plus byte_offset is the first element (DLPack).
    let base = unsafe { (t.data as *const u8).add(t.byte_offset as usize) };
    let dev = (t.device.device_id, t.device.device_type);
    match (dev.1, expect.placement) {
        (KDL_CPU | KDL_CUDA_HOST, _) => {
            from_strided(base, &shape, &strides, itemsize as usize, expect, holder)
        }
        (KDL_CUDA, Placement::Cuda(ordinal)) if dev.0 == ordinal => {
            if !is_c_contiguous(&shape, &strides, itemsize) {
                return Err(
                    expect.fail("is a non-contiguous CUDA tensor (call .contiguous() on it)".to_owned())
                );
            }
            let placement =
                device.ok_or_else(|| Error::internal("a CUDA output without a CUDA placement"))?;
            let bytes = expect.spec.item_bytes() * expect.rows;
            let src = base as usize;
            let (copy, keep) = py.detach(|| {
                placement.copy_to_host(src as *const c_void, bytes).map(|(p, keep)| (p as usize, keep))
            })?;
            let copy = copy as *const u8;
            drop(holder);
            let base = copy;
            Ok(OutputRows { base, row_bytes: expect.spec.item_bytes(), _holder: Holder::Staged(keep) })
        }
        _ => Err(expect.fail(format!("is on {}", device_name((dev.1, dev.0))))),
    }
}

fn device_name((kind, id): (i32, i32)) -> String {
    match kind {
        KDL_CPU => "the host (cpu)".to_owned(),
        KDL_CUDA => format!("cuda:{id}"),
        KDL_CUDA_HOST => "pinned host memory".to_owned(),
        other => format!("DLPack device ({other}, {id})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguity_ignores_unit_dimensions() {
        assert!(is_c_contiguous(&[4, 3], &[12, 4], 4));
        assert!(is_c_contiguous(&[1, 3], &[999, 4], 4));
        assert!(!is_c_contiguous(&[4, 3], &[4, 16], 4));
        assert!(!is_c_contiguous(&[3], &[-4], 4));
    }

    #[test]
    fn formats_map_to_dtypes() {
        assert_eq!(format_dtype(c"f", 4), Some(DType::F32));
        assert_eq!(format_dtype(c"<d", 8), Some(DType::F64));
        assert_eq!(format_dtype(c"l", 8), Some(DType::I64));
        assert_eq!(format_dtype(c"i", 4), Some(DType::I32));
        assert_eq!(format_dtype(c"B", 1), Some(DType::U8));
        assert_eq!(format_dtype(c"e", 2), Some(DType::F16));
        assert_eq!(format_dtype(c">f", 4), None);
        assert_eq!(format_dtype(c"Zf", 8), None);
    }
}
