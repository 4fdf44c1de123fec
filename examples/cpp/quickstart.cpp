// The three examples of the original pyscheduler README, unchanged in their use of the
// API: a synchronous call, a synchronous call with a callback, and batched SVD ranks of
// 1000 numpy matrices (32 per Python call, 3 batches committed ahead).
//
// Python side: examples/python/my_module.py and examples/python/svd.py.
#include <pyscheduler/pyscheduler.hpp>

#include <pybind11/pybind11.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>  // setenv
#include <future>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#ifndef PYSCHEDULER_EXAMPLES_PYTHON_DIR
#error "PYSCHEDULER_EXAMPLES_PYTHON_DIR must name the directory of the example Python modules"
#endif

namespace {

int failures = 0;

void check(bool ok, const std::string& what) {
  if (!ok) {
    std::cerr << "FAILED: " << what << "\n";
    ++failures;
  }
}

void synchronous(pyscheduler::PyManager& manager) {
  auto add = manager.loadPythonModule("my_module", "invoke");

  // 1. Synchronous invoke: call the function directly and cast the result.
  int64_t result = add.invoke<int64_t>(3000, -1234);
  std::cout << "add.invoke<int64_t>(3000, -1234)     = " << result << "\n";
  check(result == 1766, "3000 + -1234 == 1766");

  // 2. Synchronous invoke with a callback: it sees the raw pybind11::object while the
  //    GIL is still held.
  auto to_string = [](const pybind11::object& obj) { return obj.cast<std::string>(); };
  std::string text = add.invoke(to_string, "hello", " world");
  std::cout << "add.invoke(to_string, \"hello\", \" world\") = \"" << text << "\"\n";
  check(text == "hello world", "\"hello\" + \" world\" == \"hello world\"");
}

void batched_svd(pyscheduler::PyManager& manager) {
  constexpr int kMatrices = 1000;
  constexpr int kSize = 100;

  // batch_size=1 (default): one matrix per Python call.
  auto generate = manager.loadPythonModule("svd", "generate");
  // batch_size=32, prefetch_depth=3: up to 32 matrices per call, 96 pre-committed.
  auto compute = manager.loadPythonModule("svd", "compute_svd_rank", 32, 3);

  const auto start = std::chrono::steady_clock::now();

  // Step 1: generate the random matrices.
  auto commit = [](int n) -> pybind11::object { return pybind11::cast(n); };
  auto extract = [](pybind11::object&& obj) { return obj.release().ptr(); };

  std::vector<std::future<PyObject*>> gen_futures;
  gen_futures.reserve(kMatrices);
  for (int i = 0; i < kMatrices; i++) gen_futures.push_back(generate.queue_invoke(commit, extract, kSize));

  // Raw PyObject* pointers: ownership is transferred out of pybind11 ...
  std::vector<PyObject*> matrices;
  matrices.reserve(kMatrices);
  for (auto& f : gen_futures) matrices.push_back(f.get());

  // Step 2: the rank of each matrix, batched 32 at a time. ... and back into it here.
  auto commit2 = [](PyObject* p) -> pybind11::object { return pybind11::reinterpret_steal<pybind11::object>(p); };
  auto to_int = [](pybind11::object&& obj) { return obj.cast<int>(); };

  std::vector<std::future<int>> rank_futures;
  rank_futures.reserve(kMatrices);
  for (int i = 0; i < kMatrices; i++) rank_futures.push_back(compute.queue_invoke(commit2, to_int, matrices[i]));

  std::map<int, int> matrices_by_rank;
  for (auto& f : rank_futures) ++matrices_by_rank[f.get()];
  const auto elapsed = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start);

  std::cout << "SVD rank of " << kMatrices << " random " << kSize << "x" << kSize << " matrices ("
            << elapsed.count() << " ms):\n";
  for (const auto& [rank, count] : matrices_by_rank) std::cout << "  rank " << rank << ": " << count << " matrices\n";
  // A random dense matrix has full rank (with probability 1).
  check(matrices_by_rank.size() == 1 && matrices_by_rank.begin()->first == kSize &&
            matrices_by_rank.begin()->second == kMatrices,
        "every random matrix has full rank");

  const auto stats = compute.get_queue_stats();
  std::cout << "  compute_svd_rank: " << stats.total_enqueued << " items, " << stats.execute_batch_size_ema
            << " items per Python call on average (batch_size 32), "
            << stats.execute_ns_per_batch_ema / 1e6 << " ms per call\n";
  check(stats.total_enqueued == kMatrices, "total_enqueued == 1000");
  check(stats.execute_batch_size_ema > 0 && stats.execute_batch_size_ema <= 32, "0 < batch size EMA <= 32");
}

}  // namespace

int main() {
  // numpy's BLAS starts a thread per core inside every SVD; tiny 100x100 problems then
  // spend their time in thread hand-offs (20x slower on a busy 2-core machine). One BLAS
  // thread per call is the usual serving setting; an explicit user setting wins.
  setenv("OPENBLAS_NUM_THREADS", "1", /*overwrite=*/0);
  setenv("OMP_NUM_THREADS", "1", /*overwrite=*/0);
  try {
    pyscheduler::PyManager manager;
    manager.add_path(PYSCHEDULER_EXAMPLES_PYTHON_DIR);
    synchronous(manager);
    batched_svd(manager);
  } catch (const std::exception& e) {
    std::cerr << "quickstart: " << e.what() << "\n";
    return EXIT_FAILURE;
  }
  if (failures != 0) {
    std::cerr << "quickstart: " << failures << " check(s) failed\n";
    return EXIT_FAILURE;
  }
  std::cout << "quickstart: all results as expected\n";
  return EXIT_SUCCESS;
}
