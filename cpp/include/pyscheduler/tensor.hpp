// pyscheduler/tensor.hpp: host data -> CUDA tensors exported through DLPack, without
// CUDA headers or a CUDA toolkit at build time (the driver is loaded at run time by
// libpyscheduler). Header-only C++20 over the C ABI's pysched_tensor_* / pysched_stager_*.
//
//   pyscheduler::createCudaMatrixDlpack<T>(host, rows, cols)   the original's function:
//                                                   a DLManagedTensor*
//   pyscheduler::DLPackTypeTraits<T>                the original's element type -> DLDataType
//
// Beyond the original, in pyscheduler::ext (not brought in by `using namespace
// pyscheduler;`, so a user's own helper of the same name keeps compiling unchanged):
//   ext::createCudaMatrixObject<T>(host, rows, cols)  a pybind11::object for torch.from_dlpack
//   ext::toDlpackCapsule(DLManagedTensor*)            a "dltensor" capsule owning the tensor
//   ext::CudaTensor, ext::CudaStager                  RAII handles; the stager uploads without
//                                                     the GIL (prepare) through pinned memory
//   ext::CudaError                                    the exception for CUDA failures
//
// Errors are exceptions: std::invalid_argument for bad arguments (checked before CUDA is
// touched) and pyscheduler::ext::CudaError (a std::runtime_error) for CUDA failures,
// including "no CUDA driver found" / "no CUDA device" on machines without a GPU.
//
// DLPack: if <dlpack/dlpack.h> is on the include path (or was included first), it is used;
// otherwise the DLPack v1.1 declarations below are provided. In that case include
// dlpack.h (or ATen/dlpack.h) BEFORE this header if a translation unit needs both.
#pragma once

#include <pyscheduler.h>
#include <pybind11/pybind11.h>

#include <cassert>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#if !defined(DLPACK_DLPACK_H_) && !defined(PYSCHEDULER_NO_SYSTEM_DLPACK) && defined(__has_include)
#if __has_include(<dlpack/dlpack.h>)
#include <dlpack/dlpack.h>
#endif
#endif

#if !defined(DLPACK_DLPACK_H_) && !defined(PYSCHEDULER_DLPACK_DECLARED)
#define PYSCHEDULER_DLPACK_DECLARED 1
// The DLPack v1.1 ABI (dlpack.h), declared here so no DLPack header is required.
extern "C" {
typedef struct {
  uint32_t major;
  uint32_t minor;
} DLPackVersion;

typedef enum : int32_t {
  kDLCPU = 1,
  kDLCUDA = 2,
  kDLCUDAHost = 3,
  kDLOpenCL = 4,
  kDLVulkan = 7,
  kDLMetal = 8,
  kDLVPI = 9,
  kDLROCM = 10,
  kDLROCMHost = 11,
  kDLExtDev = 12,
  kDLCUDAManaged = 13,
  kDLOneAPI = 14,
  kDLWebGPU = 15,
  kDLHexagon = 16,
  kDLMAIA = 17,
} DLDeviceType;

typedef struct {
  DLDeviceType device_type;
  int32_t device_id;
} DLDevice;

typedef enum {
  kDLInt = 0U,
  kDLUInt = 1U,
  kDLFloat = 2U,
  kDLOpaqueHandle = 3U,
  kDLBfloat = 4U,
  kDLComplex = 5U,
  kDLBool = 6U,
} DLDataTypeCode;

typedef struct {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
} DLDataType;

typedef struct {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;
  uint64_t byte_offset;
} DLTensor;

typedef struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(struct DLManagedTensor* self);
} DLManagedTensor;

#define DLPACK_FLAG_BITMASK_READ_ONLY (1UL << 0UL)
#define DLPACK_FLAG_BITMASK_IS_COPIED (1UL << 1UL)

typedef struct DLManagedTensorVersioned {
  DLPackVersion version;
  void* manager_ctx;
  void (*deleter)(struct DLManagedTensorVersioned* self);
  uint64_t flags;
  DLTensor dl_tensor;
} DLManagedTensorVersioned;
}  // extern "C"
#endif

namespace pyscheduler {
namespace ext {

/// A CUDA failure: no driver or device, or a driver call that failed. `status()` is the
/// C ABI status (PYSCHED_CUDA for driver trouble).
class CudaError : public std::runtime_error {
 public:
  CudaError(pysched_status status, const std::string& message)
      : std::runtime_error(message), status_(status) {}
  pysched_status status() const noexcept { return status_; }

 private:
  pysched_status status_;
};

}  // namespace ext

/// DLPack type of each element type createCudaMatrixDlpack accepts (as in the original).
template <typename T>
struct DLPackTypeTraits;
template <>
struct DLPackTypeTraits<float> {
  static constexpr DLDataType dtype = {kDLFloat, 32, 1};
  static constexpr pysched_dtype pysched = PYSCHED_DTYPE_F32;
};
template <>
struct DLPackTypeTraits<double> {
  static constexpr DLDataType dtype = {kDLFloat, 64, 1};
  static constexpr pysched_dtype pysched = PYSCHED_DTYPE_F64;
};
template <>
struct DLPackTypeTraits<int64_t> {
  static constexpr DLDataType dtype = {kDLInt, 64, 1};
  static constexpr pysched_dtype pysched = PYSCHED_DTYPE_I64;
};
template <>
struct DLPackTypeTraits<int32_t> {
  static constexpr DLDataType dtype = {kDLInt, 32, 1};
  static constexpr pysched_dtype pysched = PYSCHED_DTYPE_I32;
};
template <>
struct DLPackTypeTraits<uint8_t> {
  static constexpr DLDataType dtype = {kDLUInt, 8, 1};
  static constexpr pysched_dtype pysched = PYSCHED_DTYPE_U8;
};

namespace pysched_detail {

using namespace ext;

/// Throws the exception matching a failed C ABI call and frees its error object.
[[noreturn]] inline void throw_tensor_error(pysched_status status, pysched_error* err) {
  std::string message = err != nullptr ? pysched_error_message(err) : pysched_status_name(status);
  pysched_error_free(err);
  if (status == PYSCHED_INVALID_ARGUMENT) throw std::invalid_argument(message);
  throw CudaError(status, message);
}

/// `err` is taken by reference: it must be read after the call that fills it has run
/// (in `check_tensor(f(..., &err), err)` argument evaluation order is unspecified).
inline void check_tensor(pysched_status status, pysched_error*& err) {
  if (status != PYSCHED_OK) throw_tensor_error(status, std::exchange(err, nullptr));
}

/// rows * cols elements, or std::invalid_argument (negative sizes, overflow, mismatch).
inline void check_matrix_size(std::size_t elements, int64_t rows, int64_t cols) {
  if (rows < 0 || cols < 0) {
    throw std::invalid_argument("createCudaMatrixDlpack: rows and cols must be non-negative, got " +
                                std::to_string(rows) + "x" + std::to_string(cols));
  }
  const auto r = static_cast<unsigned long long>(rows);
  const auto c = static_cast<unsigned long long>(cols);
  if (c != 0 && r > static_cast<unsigned long long>(SIZE_MAX) / c) {
    throw std::invalid_argument("createCudaMatrixDlpack: rows*cols overflows");
  }
  if (elements != static_cast<std::size_t>(r * c)) {
    throw std::invalid_argument("host_data size does not match rows*cols (" + std::to_string(elements) +
                                " elements for a " + std::to_string(rows) + "x" + std::to_string(cols) +
                                " matrix)");
  }
}

template <typename T>
inline constexpr bool is_dlpack_element_v =
    std::is_same_v<T, float> || std::is_same_v<T, double> || std::is_same_v<T, int64_t> ||
    std::is_same_v<T, int32_t> || std::is_same_v<T, uint8_t>;

}  // namespace pysched_detail

namespace ext {

/// A device tensor (RAII over pysched_tensor). Move-only. Its memory is shared with
/// every export made from it and freed when the last of them (and this handle) is gone.
class CudaTensor {
 public:
  CudaTensor() noexcept = default;
  explicit CudaTensor(pysched_tensor* raw) noexcept : raw_(raw) {}
  CudaTensor(CudaTensor&& other) noexcept : raw_(std::exchange(other.raw_, nullptr)) {}
  CudaTensor& operator=(CudaTensor&& other) noexcept {
    if (this != &other) {
      pysched_tensor_free(raw_);
      raw_ = std::exchange(other.raw_, nullptr);
    }
    return *this;
  }
  CudaTensor(const CudaTensor&) = delete;
  CudaTensor& operator=(const CudaTensor&) = delete;
  ~CudaTensor() { pysched_tensor_free(raw_); }

  /// Copies `bytes` of host memory into a new tensor described by `desc`; returns when
  /// the copy has finished. Needs no GIL (releases it during the copy if held).
  static CudaTensor fromHost(const void* host, std::size_t bytes, const pysched_tensor_desc& desc) {
    pysched_tensor* raw = nullptr;
    pysched_error* err = nullptr;
    pysched_detail::check_tensor(pysched_tensor_new(host, bytes, &desc, &raw, &err), err);
    return CudaTensor(raw);
  }

  /// A row-major rows x cols matrix on `device` (-1: the current device).
  template <typename T>
  static CudaTensor matrix(const std::vector<T>& host, int64_t rows, int64_t cols, int32_t device = -1) {
    static_assert(pysched_detail::is_dlpack_element_v<T>,
                  "element type must be float, double, int64_t, int32_t or uint8_t");
    pysched_detail::check_matrix_size(host.size(), rows, cols);
    const int64_t shape[2] = {rows, cols};
    const pysched_tensor_desc desc{static_cast<uint32_t>(DLPackTypeTraits<T>::pysched), 2, shape, nullptr, device};
    return fromHost(host.data(), host.size() * sizeof(T), desc);
  }

  explicit operator bool() const noexcept { return raw_ != nullptr; }
  pysched_tensor* get() const noexcept { return raw_; }
  pysched_tensor* release() noexcept { return std::exchange(raw_, nullptr); }

  pysched_tensor_info info() const {
    pysched_tensor_info out{};
    pysched_error* err = nullptr;
    pysched_detail::check_tensor(pysched_tensor_get_info(raw_, &out, &err), err);
    return out;
  }

  /// Blocks until the upload has finished (this tensor's copy only).
  void synchronize() const {
    pysched_error* err = nullptr;
    pysched_detail::check_tensor(pysched_tensor_synchronize(raw_, &err), err);
  }

  /// A legacy DLManagedTensor sharing the memory, after the upload has finished. The
  /// caller owns it: call its deleter once (any thread), or pass it to toDlpackCapsule.
  DLManagedTensor* toDlpack() const {
    ::DLManagedTensor* out = nullptr;
    pysched_error* err = nullptr;
    pysched_detail::check_tensor(pysched_tensor_to_dlpack(raw_, &out, &err), err);
    return out;
  }

  /// Like toDlpack(), versioned (DLPack 1.0).
  DLManagedTensorVersioned* toDlpackVersioned() const {
    ::DLManagedTensorVersioned* out = nullptr;
    pysched_error* err = nullptr;
    pysched_detail::check_tensor(pysched_tensor_to_dlpack_versioned(raw_, &out, &err), err);
    return out;
  }

  /// An object with __dlpack__ / __dlpack_device__ for torch.from_dlpack and array
  /// libraries; the consumer's stream waits for a staged upload on the GPU.
  /// PRECONDITION: the GIL is held.
  pybind11::object toObject() const {
    assert(PyGILState_Check());
    PyObject* out = nullptr;
    pysched_error* err = nullptr;
    pysched_detail::check_tensor(pysched_tensor_to_pyobject(raw_, &out, &err), err);
    return pybind11::reinterpret_steal<pybind11::object>(out);
  }

  /// A "dltensor" capsule sharing the memory, after the upload has finished.
  /// PRECONDITION: the GIL is held.
  pybind11::object toCapsule() const {
    assert(PyGILState_Check());
    PyObject* out = nullptr;
    pysched_error* err = nullptr;
    pysched_detail::check_tensor(pysched_tensor_to_capsule(raw_, &out, &err), err);
    return pybind11::reinterpret_steal<pybind11::object>(out);
  }

 private:
  pysched_tensor* raw_ = nullptr;
};

/// A CUDA stream plus pinned staging memory (RAII over pysched_stager), typically one
/// per handler. upload() is meant for the GIL-free prepare phase: it returns once the
/// host data is in pinned memory, with the device copy queued on the stager's stream;
/// the commit phase then calls CudaTensor::toObject() under the GIL. Thread-safe;
/// move-only. Destruction waits for the copies in flight (call it without the GIL).
class CudaStager {
 public:
  /// `device` -1: the current device; `pinned_bytes` 0: 32 MiB.
  explicit CudaStager(int32_t device = -1, uint64_t pinned_bytes = 0) {
    pysched_error* err = nullptr;
    pysched_detail::check_tensor(pysched_stager_new(device, pinned_bytes, &raw_, &err), err);
  }
  CudaStager(CudaStager&& other) noexcept : raw_(std::exchange(other.raw_, nullptr)) {}
  CudaStager& operator=(CudaStager&& other) noexcept {
    if (this != &other) {
      pysched_stager_free(raw_);
      raw_ = std::exchange(other.raw_, nullptr);
    }
    return *this;
  }
  CudaStager(const CudaStager&) = delete;
  CudaStager& operator=(const CudaStager&) = delete;
  ~CudaStager() { pysched_stager_free(raw_); }

  CudaTensor upload(const void* host, std::size_t bytes, const pysched_tensor_desc& desc) const {
    pysched_tensor* out = nullptr;
    pysched_error* err = nullptr;
    pysched_detail::check_tensor(pysched_stager_upload(raw_, host, bytes, &desc, &out, &err), err);
    return CudaTensor(out);
  }

  /// Stages a row-major rows x cols matrix.
  template <typename T>
  CudaTensor uploadMatrix(const T* host, std::size_t elements, int64_t rows, int64_t cols) const {
    static_assert(pysched_detail::is_dlpack_element_v<T>,
                  "element type must be float, double, int64_t, int32_t or uint8_t");
    pysched_detail::check_matrix_size(elements, rows, cols);
    const int64_t shape[2] = {rows, cols};
    const pysched_tensor_desc desc{static_cast<uint32_t>(DLPackTypeTraits<T>::pysched), 2, shape, nullptr, -1};
    return upload(host, elements * sizeof(T), desc);
  }

  template <typename T>
  CudaTensor uploadMatrix(const std::vector<T>& host, int64_t rows, int64_t cols) const {
    return uploadMatrix(host.data(), host.size(), rows, cols);
  }

  /// Blocks until every upload so far has reached the device (this stream only).
  void synchronize() const {
    pysched_error* err = nullptr;
    pysched_detail::check_tensor(pysched_stager_synchronize(raw_, &err), err);
  }

  /// The CUstream handle, as an integer.
  std::uintptr_t stream() const noexcept { return pysched_stager_stream(raw_); }
  pysched_stager* get() const noexcept { return raw_; }

 private:
  pysched_stager* raw_ = nullptr;
};

}  // namespace ext

/// Copies a row-major rows x cols host matrix to the current CUDA device and returns a
/// DLManagedTensor that frameworks import with from_dlpack (e.g. through
/// ext::toDlpackCapsule). The copy has finished when this returns. The caller owns the result
/// and must call its deleter exactly once, or hand it to a consumer that will.
/// Throws std::invalid_argument when host.size() != rows * cols (checked before CUDA is
/// touched) and pyscheduler::ext::CudaError for CUDA failures ("no CUDA driver found",
/// "no CUDA device", ...). Needs no GIL.
template <typename T>
inline DLManagedTensor* createCudaMatrixDlpack(const std::vector<T>& host_data, int64_t rows, int64_t cols) {
  return ext::CudaTensor::matrix(host_data, rows, cols).toDlpack();
}

namespace ext {

/// Wraps a DLManagedTensor in a "dltensor" capsule that owns it: if nothing consumes the
/// capsule, its destructor calls the deleter exactly once. The tensor is consumed even
/// when this throws. PRECONDITION: the GIL is held.
inline pybind11::object toDlpackCapsule(DLManagedTensor* managed) {
  assert(PyGILState_Check());
  PyObject* out = nullptr;
  pysched_error* err = nullptr;
  pysched_detail::check_tensor(
      pysched_dlpack_to_capsule(reinterpret_cast<::DLManagedTensor*>(managed), &out, &err), err);
  return pybind11::reinterpret_steal<pybind11::object>(out);
}

/// createCudaMatrixDlpack's matrix as a Python object with __dlpack__ /
/// __dlpack_device__, ready for torch.from_dlpack (and for other array libraries, which
/// accept only such objects). PRECONDITION: the GIL is held (it is released during the
/// copy).
template <typename T>
inline pybind11::object createCudaMatrixObject(const std::vector<T>& host_data, int64_t rows, int64_t cols) {
  return CudaTensor::matrix(host_data, rows, cols).toObject();
}

}  // namespace ext
}  // namespace pyscheduler
