// A program written for the original library, unchanged (issue 15), for the GPU machine:
// `using namespace pyscheduler;`, its own capsule helper (the original's tensor.hpp has
// none) whose destructor calls PyCapsule_GetPointer(cap, "dltensor") and so leaves a
// ValueError set once torch has consumed (renamed) the capsule; CUDA matrices from
// createCudaMatrixDlpack, batch 8, 24 random shapes, a callback casting to double; then
// a synchronous call. Build it WITHOUT NDEBUG (a Debug build: pybind11's casters assert
// on a stray error). Exits 0 when every item has the right sum, the synchronous call
// works, the stray errors went to sys.unraisablehook, and the process exits cleanly
// (the original segfaults at exit with torch loaded). tests/cpp/gpu/run_original_style.sh
// builds and runs it.
#include <pyscheduler/pyscheduler.hpp>
#include <pyscheduler/tensor.hpp>

#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#ifdef NDEBUG
#error "build original_style.cpp with assertions on (a Debug build)"
#endif

using namespace pyscheduler;

namespace {

pybind11::capsule toDlpackCapsule(DLManagedTensor* tensor) {
  return pybind11::capsule(tensor, "dltensor", [](PyObject* capsule) {
    auto* managed = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule, "dltensor"));
    if (managed != nullptr && managed->deleter != nullptr) {
      managed->deleter(managed);
    }
  });
}

}  // namespace

int run() {
  const char* dir = std::getenv("PYSCHED_TEST_PYTHON_DIR");
  if (dir == nullptr) {
    std::fprintf(stderr, "set PYSCHED_TEST_PYTHON_DIR to tests/python\n");
    return 2;
  }
  int failures = 0;
  PyManager manager;
  manager.add_path(dir);
  {
    pybind11::gil_scoped_acquire gil;
    pybind11::module_::import("pysched_compat").attr("watch_unraisable")();
  }
  auto sums = manager.loadPythonModule("gpu_compat", "sums", 8, 2);
  auto has_cuda = manager.loadPythonModule("gpu_compat", "has_cuda");

  std::mt19937 random(15);
  std::uniform_int_distribution<int64_t> size(1, 512);
  const auto commit = [](std::vector<float> host, int64_t rows, int64_t cols) -> pybind11::object {
    return toDlpackCapsule(createCudaMatrixDlpack(host, rows, cols));
  };
  const auto to_double = [](pybind11::object&& result) { return result.cast<double>(); };
  std::vector<std::future<double>> futures;
  std::vector<double> expected;
  for (int i = 0; i < 24; ++i) {
    const int64_t rows = size(random);
    const int64_t cols = size(random);
    std::vector<float> host(static_cast<std::size_t>(rows * cols));
    double sum = 0;
    for (std::size_t k = 0; k < host.size(); ++k) {
      host[k] = static_cast<float>((k % 7) * 0.25);
      sum += host[k];
    }
    expected.push_back(sum);
    futures.push_back(sums.queue_invoke(commit, to_double, std::move(host), rows, cols));
  }
  for (std::size_t i = 0; i < futures.size(); ++i) {
    try {
      const double got = futures[i].get();
      if (std::fabs(got - expected[i]) > 1e-6 * std::max(1.0, expected[i])) {
        std::fprintf(stderr, "item %zu: sum %f, expected %f\n", i, got, expected[i]);
        ++failures;
      }
    } catch (const std::exception& e) {
      std::fprintf(stderr, "item %zu failed: %s\n", i, e.what());
      ++failures;
    }
  }
  try {
    if (!has_cuda.invoke<bool>()) {
      std::fprintf(stderr, "has_cuda() returned false\n");
      ++failures;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "synchronous call failed: %s\n", e.what());
    ++failures;
  }
  std::size_t reports = 0;
  {
    pybind11::gil_scoped_acquire gil;
    using Reports = std::vector<std::tuple<std::string, std::string, std::string>>;
    const auto seen = pybind11::module_::import("pysched_compat").attr("unraisable")().cast<Reports>();
    reports = seen.size();
    for (const auto& [type, message, context] : seen) {
      if (type != "ValueError" || context.find("gpu_compat.sums") == std::string::npos) {
        std::fprintf(stderr, "unexpected report: %s: %s (%s)\n", type.c_str(), message.c_str(), context.c_str());
        ++failures;
      }
    }
  }
  // torch releases the consumed tensors when it frees them; each batch's capsules die
  // together, leaving one error per batch (the last destructor's), reported once.
  if (reports < 1 || reports > futures.size()) {
    std::fprintf(stderr, "%zu unraisable reports, expected 1..%zu\n", reports, futures.size());
    ++failures;
  }
  std::printf("original_style: %zu items, %zu stray errors reported as unraisable, %d failures\n", futures.size(),
              reports, failures);
  return failures == 0 ? 0 : 1;
}

int main() {
  try {
    return run();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "original_style: %s\n", e.what());
    return 1;
  }
}
