// Benchmark of issue 5: 4000 items, each two random 128x128 float matrices multiplied by
// torch in Python (gpu_matmul.matmul_batch_sum: one device sync per batch), for batch 32
// and 64 and prefetch 1..3, in two styles:
//   gil     the original's: commit (under the GIL) fills the matrices and uploads them
//           with createCudaMatrixDlpack (synchronous copies), wrapped as capsules;
//   staged  prepare (pool threads, no GIL, up to prefetch batches ahead) fills the
//           matrices and uploads them through the handler's CudaStager (pinned memory,
//           its own stream); commit only wraps the tensors as __dlpack__ objects.
// Every item's result is checked against an O(n^2) CPU reference of sum(A @ B). Prints a
// table (items/s, seconds) and "N passed, M failed"; exits non-zero on any failure.
// Optional argument: number of items (default 4000).
#include "../../tests/cpp/gpu/gpu_common.hpp"

#include <cstring>

namespace py = pybind11;
using namespace gpu_test;

namespace {

constexpr int64_t kDim = 128;

struct BenchJob : Job {
  uint32_t seed;
  pyscheduler::ext::CudaStager* stager;  // nullptr: the GIL style
  double expect = 0.0;
  pyscheduler::ext::CudaTensor ta, tb;
  BenchJob(uint32_t s, pyscheduler::ext::CudaStager* st) : seed(s), stager(st) {}

  void fill(std::vector<float>& a, std::vector<float>& b) {
    a = random_matrix(kDim, kDim, seed);
    b = random_matrix(kDim, kDim, seed ^ 0x9e3779b9u);
    expect = matmul_sum_reference(a, b, kDim, kDim, kDim);
  }
  bool has_prepare() const override { return stager != nullptr; }
  void prepare() override {
    std::vector<float> a, b;
    fill(a, b);
    ta = stager->uploadMatrix(a, kDim, kDim);
    tb = stager->uploadMatrix(b, kDim, kDim);
  }
  py::object commit() override {
    if (stager != nullptr) {
      py::object out = py::make_tuple(ta.toObject(), tb.toObject());
      ta = pyscheduler::ext::CudaTensor();
      tb = pyscheduler::ext::CudaTensor();
      return out;
    }
    std::vector<float> a, b;
    fill(a, b);
    return py::make_tuple(pyscheduler::ext::toDlpackCapsule(pyscheduler::createCudaMatrixDlpack(a, kDim, kDim)),
                          pyscheduler::ext::toDlpackCapsule(pyscheduler::createCudaMatrixDlpack(b, kDim, kDim)));
  }
  std::string check_result(py::handle result) override {
    const double got = result.cast<double>();
    if (std::abs(got - expect) <= 1e-3 * (1.0 + std::abs(expect)) + 1e-2) return "";
    return "seed " + std::to_string(seed) + ": sum " + std::to_string(got) + ", expected " + std::to_string(expect);
  }
};

struct Row {
  std::string mode;
  uint32_t batch, prefetch;
  int items;
  double seconds;
  int failed;
  double batch_ema;
};

Row run(const char* mode, uint32_t batch, uint32_t prefetch, int items) {
  const bool staged = std::strcmp(mode, "staged") == 0;
  pysched_handler* h = load("matmul_batch_sum", batch, prefetch);
  pyscheduler::ext::CudaStager stager(0);
  Latch latch;
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < items; i++) {
    auto* job = new BenchJob(static_cast<uint32_t>(i + 1), staged ? &stager : nullptr);
    job->latch = &latch;
    queue(h, job);
  }
  latch.wait(items);
  const double seconds = seconds_since(t0);
  pysched_stats stats{};
  pysched_handler_stats(h, &stats, nullptr);
  pysched_handler_free(h);
  if (latch.failed() > 0) std::printf("  first failure: %s\n", latch.first_error().c_str());
  return Row{mode, batch, prefetch, items, seconds, latch.failed(), stats.execute_batch_size_ema};
}

}  // namespace

int main(int argc, char** argv) {
  const int items = argc > 1 ? std::atoi(argv[1]) : 4000;
  std::vector<Row> rows;
  try {
    manager();
    {
      py::gil_scoped_acquire gil;
      std::printf("%s\n", py::module_::import("gpu_matmul").attr("describe")().cast<std::string>().c_str());
    }
    run("gil", 32, 1, 256);  // warm-up: CUDA context, torch kernels, pinned memory
    run("staged", 32, 1, 256);
    for (uint32_t batch : {32u, 64u})
      for (uint32_t prefetch : {1u, 2u, 3u})
        for (const char* mode : {"gil", "staged"}) rows.push_back(run(mode, batch, prefetch, items));
  } catch (const std::exception& e) {
    check(false, std::string("unexpected exception: ") + e.what());
    return finish();
  }
  std::printf("\n%-7s %5s %8s %6s %10s %9s %9s %8s\n", "mode", "batch", "prefetch", "items", "items/s", "seconds",
              "avg.batch", "speedup");
  for (size_t i = 0; i < rows.size(); i++) {
    const Row& r = rows[i];
    const Row& gil_row = rows[i - (i % 2)];
    std::printf("%-7s %5u %8u %6d %10.0f %9.3f %9.1f %7.2fx\n", r.mode.c_str(), r.batch, r.prefetch, r.items,
                r.items / r.seconds, r.seconds, r.batch_ema, gil_row.seconds / r.seconds);
  }
  std::printf("\n");
  for (const Row& r : rows)
    check(r.failed == 0, r.mode + " batch " + std::to_string(r.batch) + " prefetch " + std::to_string(r.prefetch) +
                             ": every item's sum(A@B) matches the CPU reference (" + std::to_string(r.failed) +
                             " wrong)");
  return finish();
}
