// Code written for the original library, unchanged (issue 15): `using namespace
// pyscheduler;` next to helpers of its own, among them the DLPack capsule helper the
// original's users write (its tensor.hpp has none). It must compile: no name of ours may
// capture (make ambiguous) one of the user's. Built with assertions on in every build
// type (tests/cpp/CMakeLists.txt).
#include <pyscheduler/pyscheduler.hpp>
#include <pyscheduler/tensor.hpp>


#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <future>
#include <random>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#ifdef NDEBUG
#error "test_compat must be built with assertions on (pybind11's casters assert on a stray error)"
#endif

#ifndef PYSCHED_TEST_PYTHON_DIR
#error "PYSCHED_TEST_PYTHON_DIR must name tests/python (set by pyscheduler_add_test)"
#endif

using namespace pyscheduler;

namespace {

std::atomic<int> tensors_deleted{0};

// --- What users of the original write themselves ------------------------------------------

/// The capsule helper of the original's own tests and benchmark.
pybind11::capsule toDlpackCapsule(DLManagedTensor* tensor) {
  return pybind11::capsule(tensor, "dltensor", [](PyObject* capsule) {
    // Once consumed, the capsule is named "used_dltensor": this fails, returns NULL and
    // leaves a ValueError set, without raising it anywhere.
    auto* managed = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule, "dltensor"));
    if (managed != nullptr && managed->deleter != nullptr) {
      managed->deleter(managed);
    }
  });
}

/// Other names such code plausibly has, which the wrapper also offers (in pyscheduler::ext).
struct Error {
  int code = 7;
};
template <typename T>
struct Future {
  T value;
};
std::string version() { return "the user's own"; }
struct CudaTensor {
  int rows = 0;
};

}  // namespace

/// A namespace many code bases have; ours is pysched_detail.
namespace detail {
inline constexpr int answer = 42;
}  // namespace detail

namespace {

/// A row-major rows x cols float64 matrix on the host, as a DLManagedTensor.
DLManagedTensor* hostMatrix(int64_t rows, int64_t cols, double value) {
  struct Owner {
    std::vector<double> data;
    int64_t shape[2];
  };
  auto* owner = new Owner{std::vector<double>(static_cast<std::size_t>(rows * cols), value), {rows, cols}};
  auto* managed = new DLManagedTensor{};
  managed->dl_tensor.data = owner->data.data();
  managed->dl_tensor.device = DLDevice{kDLCPU, 0};
  managed->dl_tensor.ndim = 2;
  managed->dl_tensor.dtype = DLDataType{kDLFloat, 64, 1};
  managed->dl_tensor.shape = owner->shape;
  managed->dl_tensor.strides = nullptr;
  managed->dl_tensor.byte_offset = 0;
  managed->manager_ctx = owner;
  managed->deleter = [](DLManagedTensor* self) {
    delete static_cast<Owner*>(self->manager_ctx);
    delete self;
    tensors_deleted.fetch_add(1);
  };
  return managed;
}

}  // namespace

// The tests live outside the anonymous namespace, as the code calls its helper:
// from there, unqualified lookup sees the anonymous namespace's names and those of the
// using-directive at the same level, so any name of ours equal to the user's would make
// the call ambiguous (from inside the anonymous namespace, the user's would hide ours).
TEST(CompatNames, TheUsersOwnHelpersAreTheOnesCalled) {
  // Unqualified calls resolve to the user's helpers, unambiguously.
  static_assert(std::is_same_v<decltype(toDlpackCapsule(nullptr)), pybind11::capsule>);
  static_assert(std::is_same_v<decltype(version()), std::string>);
  EXPECT_EQ(version(), "the user's own");
  EXPECT_EQ(Error{}.code, 7);
  EXPECT_EQ(Future<int>{3}.value, 3);
  EXPECT_EQ(CudaTensor{}.rows, 0);
  static_assert(detail::answer == 42);
  // The original's names are still reachable unqualified...
  static_assert(std::is_same_v<decltype(&createCudaMatrixDlpack<float>),
                               DLManagedTensor* (*)(const std::vector<float>&, int64_t, int64_t)>);
  static_assert(DLPackTypeTraits<double>::dtype.bits == 64);
  static_assert(std::is_class_v<PyManager::InvokeHandler::QueueStats>);
  // ...and ours, qualified.
  static_assert(std::is_same_v<decltype(ext::toDlpackCapsule(nullptr)), pybind11::object>);
  EXPECT_NE(std::string(ext::version()), "the user's own");
  // The user's helper works: a capsule nothing consumed deletes its tensor once.
  PyManager manager;
  tensors_deleted = 0;
  {
    pybind11::gil_scoped_acquire gil;
    pybind11::capsule capsule = toDlpackCapsule(hostMatrix(2, 2, 1.0));
    EXPECT_STREQ(capsule.name(), "dltensor");
  }
  EXPECT_EQ(tensors_deleted.load(), 1);
}
