//! Element types of tensors (numbers shared with the C ABI's `pysched_dtype`) and the
//! Rust number types that have one. A leaf.

use crate::dlpack::{DLDataType, KDL_BFLOAT, KDL_FLOAT, KDL_INT, KDL_UINT};

/// Element types. The numbers are those of the C ABI's `pysched_dtype` and never change.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32 = 0,
    F64 = 1,
    I64 = 2,
    I32 = 3,
    U8 = 4,
    /// IEEE half precision, passed through as raw 16-bit values.
    F16 = 5,
    /// bfloat16, passed through as raw 16-bit values.
    BF16 = 6,
}

impl DType {
    /// The dtype with this C ABI number.
    pub fn from_raw(raw: u32) -> Option<DType> {
        Some(match raw {
            0 => DType::F32,
            1 => DType::F64,
            2 => DType::I64,
            3 => DType::I32,
            4 => DType::U8,
            5 => DType::F16,
            6 => DType::BF16,
            _ => return None,
        })
    }

    pub fn size_bytes(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::U8 => 1,
        }
    }

    /// The name array libraries use ("float32", "bfloat16", ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F64 => "float64",
            DType::I64 => "int64",
            DType::I32 => "int32",
            DType::U8 => "uint8",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
        }
    }

    /// The dtype a DLPack data type describes (single lane only).
    pub fn from_dl(t: DLDataType) -> Option<DType> {
        [DType::F32, DType::F64, DType::I64, DType::I32, DType::U8, DType::F16, DType::BF16]
            .into_iter()
            .find(|d| d.dl_data_type() == t)
    }

    pub fn dl_data_type(self) -> DLDataType {
        let code = match self {
            DType::F32 | DType::F64 | DType::F16 => KDL_FLOAT,
            DType::I64 | DType::I32 => KDL_INT,
            DType::U8 => KDL_UINT,
            DType::BF16 => KDL_BFLOAT,
        };
        DLDataType { code, bits: (self.size_bytes() * 8) as u8, lanes: 1 }
    }
}

/// Rust element types with a [`DType`].
pub trait Element: Copy + Send + Sync + 'static {
    const DTYPE: DType;
}
impl Element for f32 {
    const DTYPE: DType = DType::F32;
}
impl Element for f64 {
    const DTYPE: DType = DType::F64;
}
impl Element for i64 {
    const DTYPE: DType = DType::I64;
}
impl Element for i32 {
    const DTYPE: DType = DType::I32;
}
impl Element for u8 {
    const DTYPE: DType = DType::U8;
}

/// The bytes of a slice of plain numbers.
pub(crate) fn as_bytes<T: Element>(data: &[T]) -> &[u8] {
    // SAFETY: Element types are plain numbers without padding or invalid bit patterns;
    // the byte view covers exactly the slice's memory and borrows it.
    unsafe { std::slice::from_raw_parts(data.as_ptr().cast(), std::mem::size_of_val(data)) }
}
