// Code written for the original library, unchanged (issue 15): `using namespace
// pyscheduler;` next to helpers of its own, among them the DLPack capsule helper the
// original's users write (its tensor.hpp has none), whose destructor calls
// PyCapsule_GetPointer(cap, "dltensor") and so leaves a ValueError set once a consumer
// renamed the capsule "used_dltensor". It must compile (no name of ours captures the
// user's), every item must complete, later calls must work, and each stray error must
// be reported once through sys.unraisablehook. Built with assertions on in every build
// type (tests/cpp/CMakeLists.txt): pybind11's casters assert when an error is set.
#include <pyscheduler/pyscheduler.hpp>
#include <pyscheduler/tensor.hpp>

#include <pybind11/stl.h>

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

using Reports = std::vector<std::tuple<std::string, std::string, std::string>>;

class Compat : public ::testing::Test {
 protected:
  Compat() {
    manager.add_path(PYSCHED_TEST_PYTHON_DIR);
    pybind11::gil_scoped_acquire gil;
    pybind11::module_::import("pysched_compat").attr("watch_unraisable")();
    tensors_deleted = 0;
  }

  Reports reports() {
    pybind11::gil_scoped_acquire gil;
    return pybind11::module_::import("pysched_compat").attr("unraisable")().cast<Reports>();
  }

  PyManager manager;
};

void expectCapsuleErrors(const Reports& seen, const std::string& handler) {
  for (const auto& [type, message, context] : seen) {
    EXPECT_EQ(type, "ValueError");
    EXPECT_NE(message.find("PyCapsule_GetPointer called with incorrect name"), std::string::npos) << message;
    EXPECT_NE(context.find(handler), std::string::npos) << context;
  }
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

// The program on the host: items whose capsules the Python function consumes,
// batch 8, 24 random shapes, a callback casting to double; then a synchronous call.
TEST_F(Compat, QueuedCapsulesWhoseDestructorsLeaveAnError) {
  auto consume = manager.loadPythonModule("pysched_compat", "consume", 8, 2);
  auto ping = manager.loadPythonModule("pysched_compat", "ping");
  std::mt19937 random(15);
  std::uniform_int_distribution<int64_t> size(1, 40);
  const auto commit = [](int64_t rows, int64_t cols, double value) -> pybind11::object {
    return toDlpackCapsule(hostMatrix(rows, cols, value));
  };
  const auto to_double = [](pybind11::object&& result) { return result.cast<double>(); };
  constexpr int kItems = 24;
  std::vector<std::future<double>> futures;
  std::vector<double> expected;
  for (int i = 0; i < kItems; ++i) {
    const int64_t rows = size(random);
    const int64_t cols = size(random);
    const double value = 0.5 * i;
    expected.push_back(static_cast<double>(rows * cols) * value);
    futures.push_back(consume.queue_invoke(commit, to_double, rows, cols, value));
  }
  for (int i = 0; i < kItems; ++i) {
    EXPECT_DOUBLE_EQ(futures[i].get(), expected[i]) << "item " << i;
  }
  EXPECT_EQ(tensors_deleted.load(), kItems);
  EXPECT_EQ(ping.invoke<int>(42), 42);
  const Reports seen = reports();
  // One destructor's error per released batch (a later one in the same batch replaces
  // an earlier one before pyscheduler regains control), each reported once.
  EXPECT_GE(seen.size(), 1u);
  EXPECT_LE(seen.size(), static_cast<std::size_t>(kItems));
  expectCapsuleErrors(seen, "pysched_compat.consume");
}

// Batch 1: every item's Python call releases one capsule, so there is exactly one
// report per item.
TEST_F(Compat, EachStrayErrorIsReportedExactlyOnce) {
  auto consume = manager.loadPythonModule("pysched_compat", "consume");
  const auto commit = [](int64_t n) -> pybind11::object { return toDlpackCapsule(hostMatrix(n, n, 1.0)); };
  const auto to_double = [](pybind11::object&& result) { return result.cast<double>(); };
  std::vector<std::future<double>> futures;
  for (int64_t n = 1; n <= 10; ++n) {
    futures.push_back(consume.queue_invoke(commit, to_double, n));
  }
  for (int64_t n = 1; n <= 10; ++n) {
    EXPECT_DOUBLE_EQ(futures[static_cast<std::size_t>(n - 1)].get(), static_cast<double>(n * n));
  }
  EXPECT_EQ(tensors_deleted.load(), 10);
  const Reports seen = reports();
  EXPECT_EQ(seen.size(), 10u);
  expectCapsuleErrors(seen, "pysched_compat.consume");
}

// The synchronous path: the caller's capsule dies on the caller's thread after the call
// consumed it, leaving the error there; the next call must not fail with it.
TEST_F(Compat, SynchronousCallAfterTheCallersCapsuleDied) {
  auto consume = manager.loadPythonModule("pysched_compat", "consume_single");
  auto ping = manager.loadPythonModule("pysched_compat", "ping");
  for (int round = 1; round <= 3; ++round) {
    {
      pybind11::gil_scoped_acquire gil;
      pybind11::capsule capsule = toDlpackCapsule(hostMatrix(2, 3, 1.0));
      EXPECT_DOUBLE_EQ(consume.invoke<double>(capsule), 6.0);
      // `capsule` dies here, under the GIL: its destructor leaves the ValueError set.
    }
    EXPECT_EQ(ping.invoke<int>(round), round);
    // A callback form, and a cast in it, see no stray error either.
    EXPECT_DOUBLE_EQ(ping.invoke([](const pybind11::object& r) { return r.cast<double>(); }, 2.5), 2.5);
  }
  EXPECT_EQ(tensors_deleted.load(), 3);
  const Reports seen = reports();
  EXPECT_EQ(seen.size(), 3u);
  expectCapsuleErrors(seen, "pysched_compat.ping");
}

// A commit that returns its object but leaves an error set: the item proceeds with its
// object (the commit reported success); the error is reported, naming the commit.
// Likewise a callback that returns normally with an error set completes its item.
TEST_F(Compat, CommitOrCallbackThatLeavesAnErrorSet) {
  auto handler = manager.loadPythonModule("pysched_compat", "plus_one", 4);
  const auto sloppy_commit = [](int x) -> pybind11::object {
    pybind11::object obj = pybind11::cast(x);
    if (x % 2 == 0) PyErr_SetString(PyExc_RuntimeError, "left set by the commit");
    return obj;
  };
  const auto sloppy_callback = [](pybind11::object&& result) {
    const int v = result.cast<int>();
    if (v % 3 == 0) PyErr_SetString(PyExc_KeyError, "left set by the callback");
    return v;
  };
  std::vector<std::future<int>> futures;
  for (int i = 0; i < 12; ++i) futures.push_back(handler.queue_invoke(sloppy_commit, sloppy_callback, i));
  for (int i = 0; i < 12; ++i) EXPECT_EQ(futures[static_cast<std::size_t>(i)].get(), i + 1);
  const Reports seen = reports();
  int commits = 0;
  int callbacks = 0;
  for (const auto& [type, message, context] : seen) {
    EXPECT_NE(context.find("pysched_compat.plus_one"), std::string::npos) << context;
    if (type == "RuntimeError" && context.find("commit") != std::string::npos) ++commits;
    if (type == "KeyError" && context.find("completion callback") != std::string::npos) ++callbacks;
  }
  EXPECT_EQ(commits, 6);    // 0, 2, ..., 10
  EXPECT_EQ(callbacks, 4);  // results 3, 6, 9, 12
  EXPECT_EQ(seen.size(), 10u);
}
