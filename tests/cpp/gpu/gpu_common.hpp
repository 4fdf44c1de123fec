// Shared helpers of the GPU checks and benchmark: a manager started through the C ABI
// (seeing the active virtualenv), handlers whose items are C++ jobs with prepare/commit/
// complete, random matrices and CPU references. Plain programs, no test framework: each
// check prints one line, and the program ends with "N passed, M failed".
#pragma once

#include <pyscheduler.h>
#include <pyscheduler/tensor.hpp>
#include <pybind11/pybind11.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace gpu_test {

inline std::atomic<int> g_passed{0};
inline std::atomic<int> g_failed{0};

inline void check(bool ok, const std::string& what) {
  (ok ? g_passed : g_failed).fetch_add(1);
  std::printf("[%s] %s\n", ok ? "PASS" : "FAIL", what.c_str());
  std::fflush(stdout);
}

inline int finish() {
  std::printf("%d passed, %d failed\n", g_passed.load(), g_failed.load());
  return g_failed.load() == 0 ? 0 : 1;
}

/// Turns a failed C ABI call into an exception. `err` by reference: it is read after the
/// call that fills it (argument evaluation order is unspecified).
inline void ok(pysched_status status, pysched_error*& err, const char* what) {
  if (status == PYSCHED_OK) return;
  std::string msg = std::string(what) + ": " + (err ? pysched_error_message(err) : pysched_status_name(status));
  if (err && *pysched_error_traceback(err)) msg += std::string("\n") + pysched_error_traceback(err);
  pysched_error_free(err);
  throw std::runtime_error(msg);
}

/// The process's manager; the interpreter sees $PYSCHED_PYTHON (or $VIRTUAL_ENV's python)
/// and the test modules in $PYSCHED_TEST_PYTHON_DIR.
inline pysched_manager* manager() {
  static pysched_manager* m = [] {
    pysched_manager_options options{};
    const char* exe = std::getenv("PYSCHED_PYTHON");
    options.python_executable = (exe && *exe) ? exe : nullptr;
    pysched_manager* out = nullptr;
    pysched_error* err = nullptr;
    ok(pysched_manager_new(&options, &out, &err), err, "pysched_manager_new");
    const char* dir = std::getenv("PYSCHED_TEST_PYTHON_DIR");
    if (!dir) throw std::runtime_error("PYSCHED_TEST_PYTHON_DIR is not set");
    err = nullptr;
    ok(pysched_manager_add_path(out, dir, &err), err, "pysched_manager_add_path");
    return out;
  }();
  return m;
}

inline pysched_handler* load(const char* entry, uint32_t batch, uint32_t prefetch) {
  pysched_handler_options o = pysched_handler_options_default();
  o.batch_size = batch;
  o.prefetch_depth = prefetch;
  pysched_handler* h = nullptr;
  pysched_error* err = nullptr;
  ok(pysched_manager_load(manager(), "gpu_matmul", entry, &o, &h, &err), err, entry);
  return h;
}

/// Counts finished items; wait() blocks (GIL not held) until `expected` have finished.
class Latch {
 public:
  void done(bool success) {
    std::lock_guard<std::mutex> lock(mu_);
    (success ? ok_ : failed_)++;
    cv_.notify_all();
  }
  void wait(int expected) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return ok_ + failed_ >= expected; });
  }
  int succeeded() {
    std::lock_guard<std::mutex> lock(mu_);
    return ok_;
  }
  int failed() {
    std::lock_guard<std::mutex> lock(mu_);
    return failed_;
  }
  std::string first_error() {
    std::lock_guard<std::mutex> lock(mu_);
    return first_error_;
  }
  void note_error(const std::string& e) {
    std::lock_guard<std::mutex> lock(mu_);
    if (first_error_.empty()) first_error_ = e;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int ok_ = 0;
  int failed_ = 0;
  std::string first_error_;
};

/// One queued item. prepare() runs on a pool thread WITHOUT the GIL; commit() and
/// complete() with it. check_result() returns "" when the item's result is right.
struct Job {
  Latch* latch = nullptr;
  virtual ~Job() = default;
  virtual bool has_prepare() const { return false; }
  virtual void prepare() {}
  virtual pybind11::object commit() = 0;
  virtual std::string check_result(pybind11::handle result) = 0;
};

namespace detail {
inline int prepare(void* u) {
  try {
    static_cast<Job*>(u)->prepare();
    return 0;
  } catch (const std::exception& e) {
    static_cast<Job*>(u)->latch->note_error(std::string("prepare: ") + e.what());
    return 1;
  }
}
inline PyObject* commit(void* u) {
  try {
    return static_cast<Job*>(u)->commit().release().ptr();
  } catch (pybind11::error_already_set& e) {
    e.restore();
    return nullptr;
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return nullptr;
  }
}
inline int complete(void* u, PyObject* result, const pysched_error* error) {
  auto* job = static_cast<Job*>(u);
  std::string problem;
  if (result == nullptr) {
    problem = std::string("item failed: ") + pysched_error_message(error);
  } else {
    try {
      problem = job->check_result(pybind11::handle(result));
    } catch (const std::exception& e) {
      problem = std::string("check_result threw: ") + e.what();
    }
  }
  if (!problem.empty()) job->latch->note_error(problem);
  job->latch->done(problem.empty());
  return problem.empty() ? 0 : 1;
}
inline void drop(void* u) { delete static_cast<Job*>(u); }
}  // namespace detail

/// Queues `job` (ownership passes to the handler; its callbacks run exactly once).
inline void queue(pysched_handler* h, Job* job) {
  pysched_item item{};
  item.user_data = job;
  item.commit = detail::commit;
  item.prepare = job->has_prepare() ? detail::prepare : nullptr;
  item.complete = detail::complete;
  item.drop = detail::drop;
  pysched_error* err = nullptr;
  pysched_status st = pysched_handler_queue(h, &item, nullptr, &err);
  if (st != PYSCHED_OK) pysched_error_free(err);  // complete() already saw the error
}

inline std::vector<float> random_matrix(int64_t rows, int64_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> out(static_cast<size_t>(rows * cols));
  for (float& v : out) v = dist(rng);
  return out;
}

template <typename T>
std::vector<double> matmul_reference(const std::vector<T>& a, const std::vector<T>& b, int64_t n, int64_t k,
                                     int64_t m) {
  std::vector<double> out(static_cast<size_t>(n * m), 0.0);
  for (int64_t i = 0; i < n; i++)
    for (int64_t p = 0; p < k; p++) {
      const double av = a[i * k + p];
      for (int64_t j = 0; j < m; j++) out[i * m + j] += av * b[p * m + j];
    }
  return out;
}

/// sum(A @ B) = sum_p (sum_i A[i][p]) * (sum_j B[p][j]): an O(n^2) reference.
inline double matmul_sum_reference(const std::vector<float>& a, const std::vector<float>& b, int64_t n, int64_t k,
                                   int64_t m) {
  std::vector<double> col(static_cast<size_t>(k), 0.0), row(static_cast<size_t>(k), 0.0);
  for (int64_t i = 0; i < n; i++)
    for (int64_t p = 0; p < k; p++) col[p] += a[i * k + p];
  for (int64_t p = 0; p < k; p++)
    for (int64_t j = 0; j < m; j++) row[p] += b[p * m + j];
  double s = 0.0;
  for (int64_t p = 0; p < k; p++) s += col[p] * row[p];
  return s;
}

/// "" when the nested list `got` (n x m) matches `expect` within a float32 tolerance.
inline std::string compare_matrix(pybind11::handle got, const std::vector<double>& expect, int64_t n, int64_t m,
                                  double tol) {
  pybind11::list rows = pybind11::reinterpret_borrow<pybind11::list>(got);
  if (static_cast<int64_t>(rows.size()) != n) return "wrong number of rows";
  for (int64_t i = 0; i < n; i++) {
    pybind11::list row = rows[i];
    if (static_cast<int64_t>(row.size()) != m) return "wrong number of columns";
    for (int64_t j = 0; j < m; j++) {
      const double g = row[j].cast<double>();
      const double e = expect[i * m + j];
      if (std::abs(g - e) > tol * (1.0 + std::abs(e))) {
        return "element [" + std::to_string(i) + "][" + std::to_string(j) + "] = " + std::to_string(g) +
               ", expected " + std::to_string(e);
      }
    }
  }
  return "";
}

/// Device memory in use (total - free), from cuMemGetInfo through the C ABI.
inline size_t used_device_bytes() {
  size_t free_bytes = 0, total_bytes = 0;
  pysched_error* err = nullptr;
  ok(pysched_cuda_mem_info(0, &free_bytes, &total_bytes, &err), err, "pysched_cuda_mem_info");
  return total_bytes - free_bytes;
}

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace gpu_test
