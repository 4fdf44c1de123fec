// tensor.hpp in two translation units of one program (inline definitions must not
// clash). This unit forces the header's own DLPack declarations.
#define PYSCHEDULER_NO_SYSTEM_DLPACK 1
#include <pyscheduler/tensor.hpp>

#include <cstdio>

int tensor_unit_b(const std::vector<float>& host);

int tensor_unit_a(const std::vector<double>& host) {
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

int main() {
  const int a = tensor_unit_a({1.0, 2.0});  // size mismatch
  const int b = tensor_unit_b({1.f, 2.f});  // size mismatch
  static_assert(sizeof(DLTensor) == 48, "DLTensor layout");
  static_assert(sizeof(DLManagedTensor) == 64, "DLManagedTensor layout");
  static_assert(sizeof(DLManagedTensorVersioned) == 80, "DLManagedTensorVersioned layout");
  static_assert(offsetof(DLManagedTensorVersioned, dl_tensor) == 32, "DLManagedTensorVersioned layout");
  std::printf("%d passed, %d failed\n", (a == 1) + (b == 1), (a != 1) + (b != 1));
  return a == 1 && b == 1 ? 0 : 1;
}
