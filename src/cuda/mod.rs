//! CUDA staging without a CUDA toolkit at build time: the driver is loaded at run time
//! (through cudarc), host buffers become device tensors (synchronously, or staged on a
//! per-handler stream through pinned memory so copies overlap with Python), and tensors
//! leave as DLPack (legacy and versioned capsules, or a `__dlpack__` object).
//!
//! On a machine without libcuda every entry point returns an error of kind
//! [`ErrorKind::Cuda`](crate::ErrorKind::Cuda) saying "no CUDA driver found", and
//! without a GPU "no CUDA device"; nothing here panics or aborts.
//!
//! Layout, each file importing only those before it: `driver` (the driver API and its
//! RAII owners) <- `tensor` (a device tensor; the DLPack ABI structs come from the leaf
//! `crate::dlpack`) <- `dlpack` (its exports) <- `pyobject` (its Python object) and
//! `stager` (staged uploads).

pub mod dlpack;
pub(crate) mod driver;
mod pyobject;
mod stager;
mod tensor;

pub use driver::{device_count, mem_info, NO_DEVICE_MESSAGE, NO_DRIVER_MESSAGE};
pub use pyobject::PyCudaTensor;
pub use stager::{Stager, DEFAULT_PINNED_BYTES};
pub use tensor::{DType, DeviceTensor, Element, TensorDesc, MAX_NDIM};
