// pyscheduler/tensor.hpp on a machine without a GPU (CI): sizes are checked before CUDA
// is touched (std::invalid_argument), every CUDA path throws pyscheduler::ext::CudaError with
// the clear "no CUDA driver found" / "no CUDA device" message, and toDlpackCapsule frees
// a foreign tensor exactly once. On a machine with a GPU the CUDA cases check success.
#include <pyscheduler/tensor.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <string>
#include <vector>

namespace {

bool gpu_present() {
  int32_t count = 0;
  return pysched_cuda_device_count(&count, nullptr) == PYSCHED_OK && count > 0;
}

void expect_clear_cuda_error(const pyscheduler::ext::CudaError& e) {
  const std::string what = e.what();
  EXPECT_EQ(e.status(), PYSCHED_CUDA);
  EXPECT_TRUE(what.rfind("no CUDA driver found", 0) == 0 || what.rfind("no CUDA device", 0) == 0) << what;
}

/// One interpreter for the tests that build Python objects (started through the C ABI,
/// as any host would).
pysched_manager* manager() {
  static pysched_manager* m = [] {
    pysched_manager* out = nullptr;
    if (pysched_manager_new(nullptr, &out, nullptr) != PYSCHED_OK) std::abort();
    return out;
  }();
  return m;
}

template <typename T>
void size_mismatch_throws_invalid_argument() {
  const std::vector<T> host(5);
  EXPECT_THROW(pyscheduler::createCudaMatrixDlpack(host, 2, 3), std::invalid_argument);
  EXPECT_THROW(pyscheduler::createCudaMatrixDlpack(host, 3, 2), std::invalid_argument);
  EXPECT_THROW(pyscheduler::createCudaMatrixDlpack(host, -5, -1), std::invalid_argument);
  EXPECT_THROW(pyscheduler::createCudaMatrixDlpack(host, INT64_MAX, 2), std::invalid_argument);
  EXPECT_THROW(pyscheduler::ext::CudaTensor::matrix(host, 1, 4), std::invalid_argument);
}

template <typename T>
void matrix_on_cuda_or_clear_error() {
  const std::vector<T> host(6, T(1));
  if (gpu_present()) {
    DLManagedTensor* m = pyscheduler::createCudaMatrixDlpack(host, 2, 3);
    ASSERT_NE(m, nullptr);
    EXPECT_EQ(m->dl_tensor.device.device_type, kDLCUDA);
    EXPECT_EQ(m->dl_tensor.ndim, 2);
    EXPECT_EQ(m->dl_tensor.dtype.bits, pyscheduler::DLPackTypeTraits<T>::dtype.bits);
    m->deleter(m);
    return;
  }
  try {
    (void)pyscheduler::createCudaMatrixDlpack(host, 2, 3);
    ADD_FAILURE() << "createCudaMatrixDlpack succeeded without a GPU";
  } catch (const pyscheduler::ext::CudaError& e) {
    expect_clear_cuda_error(e);
    const std::runtime_error& as_runtime = e;  // the original threw std::runtime_error
    EXPECT_NE(std::string(as_runtime.what()), "");
  }
}

}  // namespace

TEST(TensorHpp, SizeMismatchThrowsInvalidArgumentBeforeCuda) {
  size_mismatch_throws_invalid_argument<float>();
  size_mismatch_throws_invalid_argument<double>();
  size_mismatch_throws_invalid_argument<int64_t>();
  size_mismatch_throws_invalid_argument<int32_t>();
  size_mismatch_throws_invalid_argument<uint8_t>();
}

TEST(TensorHpp, CreateCudaMatrixDlpackGivesTensorOrClearError) {
  matrix_on_cuda_or_clear_error<float>();
  matrix_on_cuda_or_clear_error<double>();
  matrix_on_cuda_or_clear_error<int64_t>();
  matrix_on_cuda_or_clear_error<int32_t>();
  matrix_on_cuda_or_clear_error<uint8_t>();
}

TEST(TensorHpp, EmptyMatrixIsFine) {
  const std::vector<float> none;
  if (gpu_present()) {
    DLManagedTensor* m = pyscheduler::createCudaMatrixDlpack(none, 0, 7);
    EXPECT_EQ(m->dl_tensor.data, nullptr);
    m->deleter(m);
  } else {
    EXPECT_THROW(pyscheduler::createCudaMatrixDlpack(none, 0, 7), pyscheduler::ext::CudaError);
  }
}

TEST(TensorHpp, StagerGivesClearErrorWithoutGpu) {
  if (gpu_present()) GTEST_SKIP() << "a GPU is present";
  try {
    pyscheduler::ext::CudaStager stager;
    ADD_FAILURE() << "a stager was created without a GPU";
  } catch (const pyscheduler::ext::CudaError& e) {
    expect_clear_cuda_error(e);
  }
  int32_t count = -1;
  pysched_error* err = nullptr;
  EXPECT_EQ(pysched_cuda_device_count(&count, &err), PYSCHED_CUDA);
  EXPECT_STREQ(std::string(pysched_error_message(err)).substr(0, 20).c_str(), "no CUDA driver found");
  EXPECT_EQ(count, -1);
  pysched_error_free(err);
}

TEST(TensorHpp, PythonObjectHelperChecksSizeThenCuda) {
  manager();
  pybind11::gil_scoped_acquire gil;
  const std::vector<double> host(4, 2.0);
  EXPECT_THROW(pyscheduler::ext::createCudaMatrixObject(host, 3, 3), std::invalid_argument);
  if (gpu_present()) {
    pybind11::object obj = pyscheduler::ext::createCudaMatrixObject(host, 2, 2);
    EXPECT_TRUE(pybind11::hasattr(obj, "__dlpack__"));
    EXPECT_EQ(obj.attr("__dlpack_device__")().cast<pybind11::tuple>()[0].cast<int>(), 2);
  } else {
    EXPECT_THROW(pyscheduler::ext::createCudaMatrixObject(host, 2, 2), pyscheduler::ext::CudaError);
  }
}

namespace {
std::atomic<int> g_deleted{0};
struct Foreign {
  DLManagedTensor managed{};
  int64_t shape[1] = {3};
  float data[3] = {1.f, 2.f, 3.f};
};
Foreign* make_foreign() {
  auto* f = new Foreign();
  f->managed.dl_tensor.data = f->data;
  f->managed.dl_tensor.device = DLDevice{kDLCPU, 0};
  f->managed.dl_tensor.ndim = 1;
  f->managed.dl_tensor.dtype = pyscheduler::DLPackTypeTraits<float>::dtype;
  f->managed.dl_tensor.shape = f->shape;
  f->managed.manager_ctx = f;
  f->managed.deleter = [](DLManagedTensor* self) {
    delete static_cast<Foreign*>(self->manager_ctx);
    g_deleted.fetch_add(1);
  };
  return f;
}
}  // namespace

TEST(TensorHpp, ToDlpackCapsuleOwnsTheTensorUntilConsumed) {
  manager();
  pybind11::gil_scoped_acquire gil;
  g_deleted = 0;
  {
    pybind11::object cap = pyscheduler::ext::toDlpackCapsule(&make_foreign()->managed);
    EXPECT_TRUE(PyCapsule_IsValid(cap.ptr(), "dltensor"));
    EXPECT_EQ(g_deleted.load(), 0);
  }
  EXPECT_EQ(g_deleted.load(), 1);  // unconsumed: the capsule's destructor freed it
  Foreign* f = make_foreign();
  {
    pybind11::object cap = pyscheduler::ext::toDlpackCapsule(&f->managed);
    PyCapsule_SetName(cap.ptr(), "used_dltensor");  // what a consumer does on import
  }
  EXPECT_EQ(g_deleted.load(), 1);  // consumed: left to the consumer
  f->managed.deleter(&f->managed);
  EXPECT_EQ(g_deleted.load(), 2);
  EXPECT_THROW(pyscheduler::ext::toDlpackCapsule(nullptr), std::invalid_argument);
}
