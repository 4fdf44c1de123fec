// GPU verification of issue 5 (run by benches/gpu/run_on_device.sh on the GPU machine):
//  1. every dtype round-trips through each export path into torch;
//  2. a C++ matrix -> CUDA tensor -> torch matmul in Python equals a CPU reference
//     (capsule, __dlpack__ object, staged upload consumed on torch's default stream and
//     on a side stream);
//  3. the DLPack protocol details of pyscheduler.CudaTensor (versioned capsules, stream,
//     errors);
//  4. 24 random shapes queued through a batching handler (batch 8), each checked, in the
//     original style (capsules made under the GIL) and staged (uploads without the GIL);
//  5. 10k tensors made and dropped along each path with no growth of used device memory
//     (cuMemGetInfo before/after), including deleters called from other threads.
// Prints one line per check and "N passed, M failed"; exits non-zero on any failure.
#include "gpu_common.hpp"

#include <pybind11/stl.h>

#include <thread>

namespace py = pybind11;
using namespace gpu_test;

namespace {

template <typename T>
std::vector<T> sample(int64_t n) {
  std::vector<T> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; i++) {
    if constexpr (std::is_same_v<T, uint8_t>) {
      v[i] = static_cast<T>((i * 7) % 251);
    } else if constexpr (std::is_integral_v<T>) {
      v[i] = static_cast<T>(i * 1000003 % 65537) - 30000;
    } else {
      v[i] = static_cast<T>(i) * static_cast<T>(0.25) - static_cast<T>(3);
    }
  }
  return v;
}

template <typename T>
bool same_values(py::handle nested, const std::vector<T>& host, int64_t rows, int64_t cols) {
  auto got = nested.cast<std::vector<std::vector<T>>>();
  if (static_cast<int64_t>(got.size()) != rows) return false;
  for (int64_t r = 0; r < rows; r++) {
    if (static_cast<int64_t>(got[r].size()) != cols) return false;
    for (int64_t c = 0; c < cols; c++)
      if (got[r][c] != host[r * cols + c]) return false;
  }
  return true;
}

template <typename T>
void roundtrip_dtype(const char* name, pyscheduler::ext::CudaStager& stager) {
  const int64_t rows = 37, cols = 53;
  const auto host = sample<T>(rows * cols);
  py::gil_scoped_acquire gil;
  py::object to_list = py::module_::import("gpu_matmul").attr("to_nested_list");
  check(same_values(to_list(pyscheduler::ext::toDlpackCapsule(pyscheduler::createCudaMatrixDlpack(host, rows, cols))), host,
                    rows, cols),
        std::string("round trip ") + name + ": createCudaMatrixDlpack -> capsule -> torch");
  check(same_values(to_list(pyscheduler::ext::createCudaMatrixObject(host, rows, cols)), host, rows, cols),
        std::string("round trip ") + name + ": createCudaMatrixObject -> torch");
  pyscheduler::ext::CudaTensor staged;
  {
    py::gil_scoped_release nogil;
    staged = stager.uploadMatrix(host, rows, cols);
  }
  check(same_values(to_list(staged.toObject()), host, rows, cols),
        std::string("round trip ") + name + ": stager upload -> __dlpack__ object -> torch");
  check(same_values(to_list(staged.toCapsule()), host, rows, cols),
        std::string("round trip ") + name + ": stager upload -> capsule -> torch");
}

void matmul_equals_cpu(pyscheduler::ext::CudaStager& stager) {
  {
    // The original's example: [[1,2,3],[4,5,6]] @ [[7,8],[9,10],[11,12]].
    const std::vector<float> a = {1, 2, 3, 4, 5, 6}, b = {7, 8, 9, 10, 11, 12};
    py::gil_scoped_acquire gil;
    py::object matmul = py::module_::import("gpu_matmul").attr("matmul");
    auto got = matmul(pyscheduler::ext::toDlpackCapsule(pyscheduler::createCudaMatrixDlpack(a, 2, 3)),
                      pyscheduler::ext::toDlpackCapsule(pyscheduler::createCudaMatrixDlpack(b, 3, 2)))
                   .cast<std::vector<std::vector<float>>>();
    check(got == std::vector<std::vector<float>>{{58, 64}, {139, 154}}, "2x3 @ 3x2 in torch == [[58,64],[139,154]]");
  }
  const int64_t n = 96, k = 80, m = 112;
  const auto a = random_matrix(n, k, 11), b = random_matrix(k, m, 12);
  const auto expect = matmul_reference(a, b, n, k, m);
  {
    py::gil_scoped_acquire gil;
    py::object matmul = py::module_::import("gpu_matmul").attr("matmul");
    auto r = compare_matrix(matmul(pyscheduler::ext::toDlpackCapsule(pyscheduler::createCudaMatrixDlpack(a, n, k)),
                                   pyscheduler::ext::toDlpackCapsule(pyscheduler::createCudaMatrixDlpack(b, k, m))),
                            expect, n, m, 1e-4);
    check(r.empty(), "float matmul via capsules == CPU reference " + r);
    r = compare_matrix(
        matmul(pyscheduler::ext::createCudaMatrixObject(a, n, k), pyscheduler::ext::createCudaMatrixObject(b, k, m)), expect,
        n, m, 1e-4);
    check(r.empty(), "float matmul via __dlpack__ objects == CPU reference " + r);
    std::vector<double> ad(a.begin(), a.end()), bd(b.begin(), b.end());
    r = compare_matrix(matmul(pyscheduler::ext::createCudaMatrixObject(ad, n, k), pyscheduler::ext::createCudaMatrixObject(bd, k, m)),
                       matmul_reference(ad, bd, n, k, m), n, m, 1e-10);
    check(r.empty(), "double matmul == CPU reference " + r);
  }
  // Staged uploads consumed right away: large enough that the copies are still running
  // when torch imports them, so only the stream ordering makes the result right.
  const int64_t big = 1024;
  const auto ba = random_matrix(big, big, 21), bb = random_matrix(big, big, 22);
  const double expect_sum = matmul_sum_reference(ba, bb, big, big, big);
  for (const char* entry : {"matmul", "matmul_on_side_stream"}) {
    for (int round = 0; round < 3; round++) {
      pyscheduler::ext::CudaTensor ta = stager.uploadMatrix(ba, big, big), tb = stager.uploadMatrix(bb, big, big);
      py::gil_scoped_acquire gil;
      auto got = py::module_::import("gpu_matmul").attr(entry)(ta.toObject(), tb.toObject());
      double sum = 0.0;
      for (auto row : got.cast<py::list>())
        for (auto v : row.cast<py::list>()) sum += v.cast<double>();
      const bool good = std::abs(sum - expect_sum) <= 1e-3 * (1.0 + std::abs(expect_sum)) + 1e-2;
      check(good, std::string("staged 1024x1024 upload, torch ") + entry + " round " + std::to_string(round) +
                      ": sum " + std::to_string(sum) + " vs " + std::to_string(expect_sum));
    }
  }
}

void protocol_details(pyscheduler::ext::CudaStager& stager) {
  const auto host = random_matrix(64, 64, 5);
  pyscheduler::ext::CudaTensor t = stager.uploadMatrix(host, 64, 64);
  py::gil_scoped_acquire gil;
  auto problems = py::module_::import("gpu_matmul")
                      .attr("dlpack_protocol_problems")(t.toObject(), 0)
                      .cast<std::vector<std::string>>();
  std::string all;
  for (auto& p : problems) all += p + "; ";
  check(problems.empty(), "DLPack protocol of CudaTensor (versioned capsule, stream, errors) " + all);
}

struct MatmulJob : Job {
  int64_t n, k, m;
  uint32_t seed;
  bool staged;
  pyscheduler::ext::CudaStager* stager;
  std::vector<float> a, b;
  pyscheduler::ext::CudaTensor ta, tb;
  MatmulJob(int64_t n_, int64_t k_, int64_t m_, uint32_t seed_, bool staged_, pyscheduler::ext::CudaStager* s)
      : n(n_), k(k_), m(m_), seed(seed_), staged(staged_), stager(s) {}
  bool has_prepare() const override { return staged; }
  void prepare() override {
    a = random_matrix(n, k, seed);
    b = random_matrix(k, m, seed ^ 0x9e3779b9u);
    ta = stager->uploadMatrix(a, n, k);
    tb = stager->uploadMatrix(b, k, m);
  }
  py::object commit() override {
    if (staged) return py::make_tuple(ta.toObject(), tb.toObject());
    a = random_matrix(n, k, seed);
    b = random_matrix(k, m, seed ^ 0x9e3779b9u);
    return py::make_tuple(pyscheduler::ext::toDlpackCapsule(pyscheduler::createCudaMatrixDlpack(a, n, k)),
                          pyscheduler::ext::toDlpackCapsule(pyscheduler::createCudaMatrixDlpack(b, k, m)));
  }
  std::string check_result(py::handle result) override {
    return compare_matrix(result, matmul_reference(a, b, n, k, m), n, m, 1e-4);
  }
};

void random_shapes_through_batching_handler(pyscheduler::ext::CudaStager& stager) {
  for (bool staged : {false, true}) {
    pysched_handler* h = load("matmul_batch", 8, 1);
    Latch latch;
    std::mt19937 rng(1337);
    std::uniform_int_distribution<int> dim(100, 200);
    const int items = 24;
    for (int i = 0; i < items; i++) {
      auto* job = new MatmulJob(dim(rng), dim(rng), dim(rng), rng(), staged, &stager);
      job->latch = &latch;
      queue(h, job);
    }
    latch.wait(items);
    pysched_stats stats{};
    pysched_handler_stats(h, &stats, nullptr);
    pysched_handler_free(h);
    check(latch.succeeded() == items && latch.failed() == 0,
          std::string("24 random shapes, batch 8, ") + (staged ? "staged uploads" : "capsules under the GIL") + ": " +
              std::to_string(latch.succeeded()) + " correct " + latch.first_error());
    check(stats.batches >= 3 && stats.execute_batch_size_ema <= 8.0,
          "batches of at most 8 formed (" + std::to_string(stats.batches) + " Python calls)");
  }
}

void no_growth(const std::string& what, size_t before, size_t after) {
  const double grown_mib = (static_cast<double>(after) - static_cast<double>(before)) / (1 << 20);
  check(grown_mib <= 16.0, what + ": used device memory " + std::to_string(before >> 20) + " MiB -> " +
                               std::to_string(after >> 20) + " MiB");
}

void ten_thousand_tensors(pyscheduler::ext::CudaStager& stager) {
  const int count = 10000;
  const auto host = random_matrix(64, 64, 9);
  auto settle = [] {
    py::gil_scoped_acquire gil;
    py::module_::import("gc").attr("collect")();
    py::module_::import("gpu_matmul").attr("empty_cache")();
  };
  auto warm = [&] {
    DLManagedTensor* m = pyscheduler::createCudaMatrixDlpack(host, 64, 64);
    m->deleter(m);
    py::gil_scoped_acquire gil;
    py::module_::import("gpu_matmul").attr("consume_and_drop")(stager.uploadMatrix(host, 64, 64).toObject());
  };
  warm();
  settle();

  // Made here, released by deleters called on other threads without the GIL. Tensor
  // memory comes from the device's stream-ordered pool, which keeps freed memory cached:
  // the first round grows the pool to its peak, so "no growth" is checked on a second
  // round against the level after the first.
  auto make_and_release = [&](bool check_occupancy) {
    const size_t start = used_device_bytes();
    std::vector<DLManagedTensor*> made;
    made.reserve(count);
    for (int i = 0; i < count; i++) made.push_back(pyscheduler::createCudaMatrixDlpack(host, 64, 64));
    if (check_occupancy) {
      check(used_device_bytes() > start + static_cast<size_t>(count) * 16384 / 2,
            "10k live tensors do occupy device memory");
    }
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; t++)
      threads.emplace_back([&made, t] {
        for (size_t i = t; i < made.size(); i += 4) made[i]->deleter(made[i]);
      });
    for (auto& th : threads) th.join();
    settle();
  };
  make_and_release(true);
  size_t before = used_device_bytes();
  make_and_release(false);
  no_growth("10k createCudaMatrixDlpack, deleters on 4 other threads", before, used_device_bytes());

  before = used_device_bytes();
  {
    py::gil_scoped_acquire gil;
    for (int i = 0; i < count; i++) {
      py::object unconsumed = pyscheduler::ext::toDlpackCapsule(pyscheduler::createCudaMatrixDlpack(host, 64, 64));
      py::object obj = pyscheduler::ext::createCudaMatrixObject(host, 64, 64);
      py::object cap = obj.attr("__dlpack__")(py::arg("max_version") = py::make_tuple(1, 0));
    }
  }
  settle();
  no_growth("10k unconsumed capsules and objects dropped", before, used_device_bytes());

  before = used_device_bytes();
  {
    py::object consume;
    {
      py::gil_scoped_acquire gil;
      consume = py::module_::import("gpu_matmul").attr("consume_and_drop");
    }
    double total = 0.0;
    for (int i = 0; i < count; i++) {
      pyscheduler::ext::CudaTensor t = stager.uploadMatrix(host, 64, 64);
      py::gil_scoped_acquire gil;
      total += consume(t.toObject()).cast<double>();
      if (i % 2 == 0) total += consume(pyscheduler::ext::toDlpackCapsule(pyscheduler::createCudaMatrixDlpack(host, 64, 64)))
                                   .cast<double>();
    }
    py::gil_scoped_acquire gil;
    consume = py::object();
  }
  settle();
  no_growth("10k staged tensors (+5k capsules) consumed by torch and dropped", before, used_device_bytes());
}

}  // namespace

int main() {
  try {
    int32_t devices = 0;
    pysched_error* err = nullptr;
    ok(pysched_cuda_device_count(&devices, &err), err, "pysched_cuda_device_count");
    check(devices >= 1, "CUDA devices: " + std::to_string(devices));
    manager();
    {
      py::gil_scoped_acquire gil;
      py::module_ m = py::module_::import("gpu_matmul");
      std::printf("%s\n", m.attr("describe")().cast<std::string>().c_str());
      check(m.attr("has_cuda")().cast<bool>(), "torch sees CUDA");
    }
    pyscheduler::ext::CudaStager stager(0, 64ull << 20);
    roundtrip_dtype<float>("float32", stager);
    roundtrip_dtype<double>("float64", stager);
    roundtrip_dtype<int64_t>("int64", stager);
    roundtrip_dtype<int32_t>("int32", stager);
    roundtrip_dtype<uint8_t>("uint8", stager);
    matmul_equals_cpu(stager);
    protocol_details(stager);
    random_shapes_through_batching_handler(stager);
    ten_thousand_tensors(stager);
  } catch (const std::exception& e) {
    check(false, std::string("unexpected exception: ") + e.what());
  }
  return finish();
}
