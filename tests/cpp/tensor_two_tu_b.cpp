// tensor.hpp after a DLPack header (here a stand-in that defines dlpack.h's include
// guard and types, as <dlpack/dlpack.h> or <ATen/dlpack.h> would): the header must use
// those declarations instead of declaring its own.
#ifndef DLPACK_DLPACK_H_
#define DLPACK_DLPACK_H_
#include <stdint.h>
extern "C" {
typedef struct { uint32_t major; uint32_t minor; } DLPackVersion;
typedef enum : int32_t { kDLCPU = 1, kDLCUDA = 2 } DLDeviceType;
typedef struct { DLDeviceType device_type; int32_t device_id; } DLDevice;
typedef enum { kDLInt = 0U, kDLUInt = 1U, kDLFloat = 2U, kDLBfloat = 4U } DLDataTypeCode;
typedef struct { uint8_t code; uint8_t bits; uint16_t lanes; } DLDataType;
typedef struct {
  void* data; DLDevice device; int32_t ndim; DLDataType dtype;
  int64_t* shape; int64_t* strides; uint64_t byte_offset;
} DLTensor;
typedef struct DLManagedTensor {
  DLTensor dl_tensor; void* manager_ctx; void (*deleter)(struct DLManagedTensor* self);
} DLManagedTensor;
typedef struct DLManagedTensorVersioned {
  DLPackVersion version; void* manager_ctx; void (*deleter)(struct DLManagedTensorVersioned* self);
  uint64_t flags; DLTensor dl_tensor;
} DLManagedTensorVersioned;
}
#endif
#include <pyscheduler/tensor.hpp>
#ifdef PYSCHEDULER_DLPACK_DECLARED
#error "tensor.hpp re-declared DLPack although dlpack.h was included first"
#endif

int tensor_unit_b(const std::vector<float>& host) {
  try {
    DLManagedTensor* m = pyscheduler::createCudaMatrixDlpack(host, 1, 1);
    m->deleter(m);
    return 0;
  } catch (const std::invalid_argument&) {
    return 1;
  } catch (const pyscheduler::ext::CudaError&) {
    return 2;
  }
}
