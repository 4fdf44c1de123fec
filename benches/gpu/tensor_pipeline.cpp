// The GPU pipeline through a CUDA tensor handler (issue 12): N items, each two random
// 128x128 float32 matrices filled with mt19937 IN PLACE by the item's fill callback (on
// pool threads, without the GIL, straight into the batch's pinned buffers), one upload
// per input per batch, one torch.bmm per batch, sum(A @ B) per item copied back once per
// batch into the caller's float. Every item is checked against an O(n^2) CPU reference.
//
// Then checks of the CUDA path: kernels on the handler's stream, a host result from a
// CUDA handler, a wrong dtype failing every item with a clear message, a function that
// keeps its inputs never seeing them overwritten.
//
// Usage: tensor_pipeline [items=4000] [runs=3]. Prints one line per run, then the min /
// median / max items/s per configuration, then "N passed, M failed"; exits non-zero on
// any failure. Uses only the C ABI.
#include <pyscheduler.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace {

constexpr int64_t kDim = 128;
constexpr size_t kElems = kDim * kDim;

int g_failed = 0, g_passed = 0;

void check(bool ok, const std::string& what) {
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
  (ok ? g_passed : g_failed)++;
}

void fill_matrix(float* out, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  for (size_t i = 0; i < kElems; i++) out[i] = dist(rng);
}

double reference(uint32_t seed) {
  std::vector<float> a(kElems), b(kElems);
  fill_matrix(a.data(), seed);
  fill_matrix(b.data(), seed ^ 0x9e3779b9u);
  std::vector<double> col(kDim, 0.0), row(kDim, 0.0);
  for (int64_t i = 0; i < kDim; i++)
    for (int64_t p = 0; p < kDim; p++) col[p] += a[i * kDim + p];
  for (int64_t p = 0; p < kDim; p++)
    for (int64_t j = 0; j < kDim; j++) row[p] += b[p * kDim + j];
  double s = 0.0;
  for (int64_t p = 0; p < kDim; p++) s += col[p] * row[p];
  return s;
}

struct Run {
  std::vector<float> results;
  std::vector<uint8_t> errors;
  std::mutex error_lock;
  std::vector<std::string> first_error;  // guarded by error_lock
  std::atomic<int> completed{0};
  std::atomic<uint64_t> fill_ns{0};
};

struct ItemCtx {
  Run* run;
  uint32_t index;
};

int fill_cb(void* user_data, void* const* slots) {
  auto* ctx = static_cast<ItemCtx*>(user_data);
  const auto t0 = std::chrono::steady_clock::now();
  fill_matrix(static_cast<float*>(slots[0]), ctx->index);
  fill_matrix(static_cast<float*>(slots[1]), ctx->index ^ 0x9e3779b9u);
  ctx->run->fill_ns += std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count();
  return 0;
}

void complete_cb(void* user_data, const pysched_error* error) {
  auto* ctx = static_cast<ItemCtx*>(user_data);
  if (error != nullptr) {
    ctx->run->errors[ctx->index] = 1;
    std::lock_guard<std::mutex> lock(ctx->run->error_lock);
    if (ctx->run->first_error.empty()) ctx->run->first_error.push_back(pysched_error_message(error));
  }
  ctx->run->completed.fetch_add(1, std::memory_order_release);
}

void drop_cb(void* user_data) { delete static_cast<ItemCtx*>(user_data); }

pysched_tensor_handler* load(pysched_manager* m, const char* fn, uint32_t batch, uint32_t prefetch) {
  const int64_t shape[2] = {kDim, kDim};
  pysched_tensor_spec in[2] = {{PYSCHED_DTYPE_F32, 2, shape}, {PYSCHED_DTYPE_F32, 2, shape}};
  pysched_tensor_spec out[1] = {{PYSCHED_DTYPE_F32, 0, nullptr}};
  pysched_tensor_signature sig{in, 2, out, 1, 0};
  pysched_handler_options o = pysched_handler_options_default();
  o.batch_size = batch;
  o.prefetch_depth = prefetch;
  pysched_tensor_handler* h = nullptr;
  pysched_error* e = nullptr;
  if (pysched_manager_load_tensor(m, "tensor_gpu", fn, &sig, &o, &h, &e) != PYSCHED_OK) {
    std::printf("load %s failed: %s\n%s\n", fn, pysched_error_message(e), pysched_error_traceback(e));
    pysched_error_free(e);
    return nullptr;
  }
  return h;
}

/// Queues `items` fill items on `h` and waits for all; returns seconds, or -1.
double run_once(pysched_tensor_handler* h, int items, Run& run) {
  run.results.assign(items, NAN);
  run.errors.assign(items, 0);
  run.first_error.clear();
  run.completed = 0;
  run.fill_ns = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < items; i++) {
    void* outputs[1] = {&run.results[i]};
    pysched_tensor_item item{};
    item.user_data = new ItemCtx{&run, static_cast<uint32_t>(i)};
    item.fill = fill_cb;
    item.outputs = outputs;
    item.complete = complete_cb;
    item.drop = drop_cb;
    pysched_error* e = nullptr;
    if (pysched_tensor_handler_queue(h, &item, nullptr, &e) != PYSCHED_OK) {
      std::printf("queue failed: %s\n", pysched_error_message(e));
      pysched_error_free(e);
      return -1;
    }
  }
  pysched_tensor_handler_drain(h, nullptr);
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

/// Checks every item of a run against the CPU reference (on all cores).
int wrong_items(const Run& run, int items) {
  std::atomic<int> wrong{0};
  const unsigned threads = std::max(1u, std::thread::hardware_concurrency());
  std::vector<std::thread> pool;
  for (unsigned t = 0; t < threads; t++) {
    pool.emplace_back([&, t] {
      for (int i = static_cast<int>(t); i < items; i += static_cast<int>(threads)) {
        const double want = reference(static_cast<uint32_t>(i));
        const double got = run.results[i];
        if (run.errors[i] || !(std::abs(got - want) <= 1e-3 * (1.0 + std::abs(want)) + 1e-2)) wrong++;
      }
    });
  }
  for (auto& th : pool) th.join();
  return wrong.load();
}

}  // namespace

int main(int argc, char** argv) {
  const int items = argc > 1 ? std::atoi(argv[1]) : 4000;
  const int runs = argc > 2 ? std::atoi(argv[2]) : 3;
  pysched_manager* m = nullptr;
  pysched_error* e = nullptr;
  if (pysched_manager_new(nullptr, &m, &e) != PYSCHED_OK) {
    std::printf("manager failed: %s\n", pysched_error_message(e));
    return 2;
  }
  const char* dir = std::getenv("PYSCHED_TEST_PYTHON_DIR");
  if (dir != nullptr) pysched_manager_add_path(m, dir, nullptr);
  std::printf("tensor pipeline: %d items, two mt19937-filled 128x128 float32 matrices each, %u pool threads\n",
              items, pysched_manager_worker_threads(m));

  struct Config {
    const char* fn;
    uint32_t batch, prefetch;
  };
  const Config configs[] = {{"bmm_sum", 64, 4}, {"bmm_sum_on_handler_stream", 64, 4}, {"bmm_sum", 32, 4},
                            {"bmm_sum", 64, 2}};
  Run run;
  for (const Config& c : configs) {
    pysched_tensor_handler* h = load(m, c.fn, c.batch, c.prefetch);
    if (h == nullptr) {
      check(false, std::string("load ") + c.fn);
      continue;
    }
    run_once(h, std::min(items, 512), run);  // warm-up: buffers, torch, cuBLAS
    std::vector<double> rates;
    for (int r = 0; r < runs; r++) {
      const double s = run_once(h, items, run);
      const int wrong = wrong_items(run, items);
      pysched_stats st{};
      pysched_tensor_handler_stats(h, &st, nullptr);
      pysched_latency lat{};
      pysched_tensor_handler_latency(h, &lat, nullptr);
      std::printf(
          "run %s batch %u prefetch %u: %.3f s, %.0f items/s; fill %.1f ms CPU in all (%.1f us/item); per batch: "
          "views+call+outputs %.0f us (EMA), gil wait p50 %.0f us, queue wait p50 %.0f us\n",
          c.fn, c.batch, c.prefetch, s, items / s, run.fill_ns / 1e6, run.fill_ns / 1e3 / items,
          st.execute_ns_per_batch_ema / 1e3, lat.gil_wait_ns_p50 / 1e3, lat.queue_wait_ns_p50 / 1e3);
      check(s > 0 && wrong == 0, std::string(c.fn) + " batch " + std::to_string(c.batch) + ": every item matches the CPU reference (" +
                                     std::to_string(wrong) + " wrong)" +
                                     (run.first_error.empty() ? "" : "; first error: " + run.first_error[0]));
      if (s > 0) rates.push_back(items / s);
    }
    std::sort(rates.begin(), rates.end());
    if (!rates.empty())
      std::printf("RESULT %s batch %u prefetch %u: items/s min %.0f median %.0f max %.0f (%d runs of %d items)\n", c.fn,
                  c.batch, c.prefetch, rates.front(), rates[rates.size() / 2], rates.back(), runs, items);
    pysched_tensor_handler_free(h);
  }

  // A long run: the batch buffers come from the handler's pool, so device memory does not
  // grow once warm (torch's caching allocator keeps its own blocks: allow it 64 MiB).
  if (pysched_tensor_handler* h = load(m, "bmm_sum", 64, 4)) {
    run_once(h, 4000, run);
    size_t free_before = 0, free_after = 0, total = 0;
    pysched_cuda_mem_info(0, &free_before, &total, nullptr);
    int wrong = 0;
    for (int round = 0; round < 5; round++) {
      run_once(h, 4000, run);
      wrong += wrong_items(run, 4000);
    }
    pysched_cuda_mem_info(0, &free_after, &total, nullptr);
    const double grew_mib = (static_cast<double>(free_before) - static_cast<double>(free_after)) / (1 << 20);
    check(wrong == 0 && grew_mib <= 64.0, "20000 more items: device memory in use grew by " + std::to_string(grew_mib) +
                                              " MiB (<= 64), " + std::to_string(wrong) + " wrong");
    pysched_tensor_handler_free(h);
  } else {
    check(false, "load bmm_sum for the long run");
  }

  // A CPU result from a CUDA handler is accepted; a wrong dtype fails every item clearly.
  for (const char* fn : {"bmm_sum_on_host", "wrong_dtype", "bmm_sum_keeping_inputs"}) {
    pysched_tensor_handler* h = load(m, fn, 16, 2);
    if (h == nullptr) {
      check(false, std::string("load ") + fn);
      continue;
    }
    const int n = 200;
    run_once(h, n, run);
    const int wrong = wrong_items(run, n);
    if (std::strcmp(fn, "wrong_dtype") == 0) {
      const bool all_failed = std::all_of(run.errors.begin(), run.errors.end(), [](uint8_t x) { return x == 1; });
      const std::string msg = run.first_error.empty() ? "" : run.first_error[0];
      check(all_failed && msg.find("has dtype float64") != std::string::npos &&
                msg.find(") float32 (B=") != std::string::npos,
            std::string("wrong dtype fails every item with a clear message: ") + msg);
    } else {
      check(wrong == 0, std::string(fn) + ": every item right (" + std::to_string(wrong) + " wrong)");
    }
    pysched_tensor_handler_free(h);
  }
  pysched_manager_free(m);
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
