// The tensor rows of issue 12: n items of 64 float32 features each, the Python function
// `x @ W` in numpy (W 64x16 float32, benches/python/pysched_tensor_bench.py), 16 float32
// scores back into a caller-owned vector per item. Every subject's run is paired with a
// run of its floor made right before it (one thread holding the GIL copies the items into
// a (B, 64) numpy array, calls the same function, copies the (B, 16) result out), and the
// row's ratio is the median of those per-repetition ratios. Rows: tensor_b256 (C ABI),
// tensor_b256_cb _future _f (the C++ wrapper's forms), tensor_b256_fill (C) and _fill_cb
// (C++), tensor_b1, and numpy_list_b256 (the list-of-objects path on the same workload).
#include "bench.hpp"

#include <pybind11/numpy.h>

// The tensor rows' C++-wrapper forms need <pyscheduler/tensor_handler.hpp>; the C ABI
// forms (and the table's other rows) do not.
#if __has_include(<pyscheduler/tensor_handler.hpp>)
#include <pyscheduler/tensor_handler.hpp>
#define PYSCHED_BENCH_TENSOR_WRAPPER 1
#else
#define PYSCHED_BENCH_TENSOR_WRAPPER 0
#endif

#include <algorithm>
#include <array>
#include <cstring>
#include <future>

namespace pysched_bench {
namespace {

constexpr std::size_t kFeatures = 64;
constexpr std::size_t kScores = 16;
const char* kTensorModule = "pysched_tensor_bench";

// Small multiples of powers of two, so that x @ W is exact in float32 whatever order the
// BLAS sums in (the Python module defines W the same way).
float tensor_w(std::size_t k, std::size_t j) { return static_cast<float>(static_cast<int>((16 * k + j) % 7) - 3) / 8.0f; }
float tensor_x(std::size_t i, std::size_t k) {
  return static_cast<float>(static_cast<int>((7 * i + 3 * k) % 9) - 4) / 4.0f;
}

// The caller's data: inputs, the output vector every path writes, the expected scores.
struct TensorData {
  std::size_t n = 0;
  std::vector<float> in;        // n x 64
  std::vector<float> out;       // n x 16, written by the run being measured
  std::vector<float> expected;  // n x 16

  explicit TensorData(std::size_t items) : n(items), in(items * kFeatures), out(items * kScores), expected(items * kScores) {
    for (std::size_t i = 0; i < n; ++i) {
      for (std::size_t k = 0; k < kFeatures; ++k) in[i * kFeatures + k] = tensor_x(i, k);
      for (std::size_t j = 0; j < kScores; ++j) {
        float s = 0;
        for (std::size_t k = 0; k < kFeatures; ++k) s += in[i * kFeatures + k] * tensor_w(k, j);
        expected[i * kScores + j] = s;
      }
    }
  }
  const float* input(std::size_t i) const { return in.data() + i * kFeatures; }
  float* output(std::size_t i) { return out.data() + i * kScores; }
  // Before a run (not timed): poison the outputs so that a path that skips items fails.
  void reset() { std::fill(out.begin(), out.end(), std::nanf("")); }
  // After a run (not timed): the first n items' scores are the expected ones.
  void verify(std::size_t n_written, const char* what) const {
    check(std::memcmp(out.data(), expected.data(), n_written * kScores * sizeof(float)) == 0, what);
  }
};

// The floor: this thread, holding the GIL, copies `batch` items at a time into a fresh
// (batch, 64) float32 array, calls `fn` and copies the (batch, 16) result's rows out.
double tensor_floor_ns(TensorData& d, std::size_t n, std::size_t batch, const py::object& fn) {
  d.reset();
  double ns = 0;
  {
    py::gil_scoped_acquire gil;
    const auto t0 = Clock::now();
    for (std::size_t base = 0; base < n; base += batch) {
      const std::size_t m = std::min(batch, n - base);
      py::array_t<float> x({static_cast<py::ssize_t>(m), static_cast<py::ssize_t>(kFeatures)});
      float* px = x.mutable_data();
      for (std::size_t j = 0; j < m; ++j) std::memcpy(px + j * kFeatures, d.input(base + j), kFeatures * sizeof(float));
      auto r = py::array_t<float, py::array::c_style>::ensure(fn(x));
      if (!r || r.ndim() != 2 || r.shape(0) != static_cast<py::ssize_t>(m) || r.shape(1) != static_cast<py::ssize_t>(kScores)) {
        throw std::runtime_error("tensor floor: the function returned an unexpected array");
      }
      const float* pr = r.data();
      for (std::size_t j = 0; j < m; ++j) std::memcpy(d.output(base + j), pr + j * kScores, kScores * sizeof(float));
    }
    ns = elapsed_ns(t0, Clock::now()) / static_cast<double>(n);
  }
  d.verify(n, "tensor floor: wrong scores");
  return ns;
}

// A Python object held by a thread that does not hold the GIL: released under it.
struct GilHeld {
  py::object obj;
  GilHeld() = default;
  GilHeld(const GilHeld&) = delete;
  GilHeld& operator=(const GilHeld&) = delete;
  ~GilHeld() {
    py::gil_scoped_acquire gil;
    obj = py::object();
  }
};

GilHeld* tensor_score(GilHeld& holder) {
  py::gil_scoped_acquire gil;
  holder.obj = py::module_::import(kTensorModule).attr("score");
  return &holder;
}

// A tensor handler through the C ABI, freed (drained) on destruction.
class CTensorHandler {
 public:
  CTensorHandler(PyManager& mgr, const char* entry, std::size_t batch, std::size_t prefetch = 1) {
    const std::int64_t in_shape[1] = {static_cast<std::int64_t>(kFeatures)};
    const std::int64_t out_shape[1] = {static_cast<std::int64_t>(kScores)};
    const pysched_tensor_spec in{PYSCHED_DTYPE_F32, 1, in_shape};
    const pysched_tensor_spec out{PYSCHED_DTYPE_F32, 1, out_shape};
    const pysched_tensor_signature sig{&in, 1, &out, 1, -1};
    pysched_handler_options o = pysched_handler_options_default();
    o.batch_size = static_cast<std::uint32_t>(batch);
    o.prefetch_depth = static_cast<std::uint32_t>(prefetch);
    pysched_error* err = nullptr;
    if (pysched_manager_load_tensor(mgr.native_handle(), kTensorModule, entry, &sig, &o, &h_, &err) != PYSCHED_OK) {
      std::string msg = std::string("loading the tensor handler: ") + (err ? pysched_error_message(err) : "?");
      pysched_error_free(err);
      throw std::runtime_error(msg);
    }
  }
  ~CTensorHandler() { pysched_tensor_handler_free(h_); }
  CTensorHandler(const CTensorHandler&) = delete;
  CTensorHandler& operator=(const CTensorHandler&) = delete;
  const pysched_tensor_handler* get() const { return h_; }
  void drain() const { check(pysched_tensor_handler_drain(h_, nullptr) == PYSCHED_OK, "tensor drain"); }
  double mean_batch() const {
    pysched_stats s{};
    pysched_tensor_handler_stats(h_, &s, nullptr);
    return s.execute_batch_size_ema;
  }

 private:
  pysched_tensor_handler* h_ = nullptr;
};

// Completions of the C ABI rows: the complete callback counts; no context per item.
std::atomic<std::size_t> g_tensor_done{0};
std::atomic<std::size_t> g_tensor_failed{0};
void tensor_complete_cb(void*, const pysched_error* error) {
  if (error) g_tensor_failed.fetch_add(1, std::memory_order_relaxed);
  g_tensor_done.fetch_add(1, std::memory_order_relaxed);
}
// The fill of the fill-in-place row: user_data is the item's 64 source floats.
int tensor_fill_cb(void* user_data, void* const* slots) {
  std::memcpy(slots[0], user_data, kFeatures * sizeof(float));
  return 0;
}

// n items through pysched_tensor_handler_queue: copy in (or `fill` in place), rows into
// d.out, completion through the C complete callback; drain; ns per item.
double tensor_cabi_ns(const CTensorHandler& h, TensorData& d, std::size_t n, bool fill) {
  d.reset();
  g_tensor_done = 0;
  g_tensor_failed = 0;
  const auto t0 = Clock::now();
  for (std::size_t i = 0; i < n; ++i) {
    const void* inputs[1] = {d.input(i)};
    void* outputs[1] = {d.output(i)};
    pysched_tensor_item item{};
    if (fill) {
      item.user_data = const_cast<float*>(d.input(i));
      item.fill = &tensor_fill_cb;
    } else {
      item.inputs = inputs;
    }
    item.outputs = outputs;
    item.complete = &tensor_complete_cb;
    if (pysched_tensor_handler_queue(h.get(), &item, nullptr, nullptr) != PYSCHED_OK) {
      throw std::runtime_error("pysched_tensor_handler_queue failed");
    }
  }
  h.drain();
  const double ns = elapsed_ns(t0, Clock::now()) / static_cast<double>(n);
  check(g_tensor_done.load() == n && g_tensor_failed.load() == 0, "tensor (C ABI): items failed or missing");
  d.verify(n, "tensor (C ABI): wrong scores");
  return ns;
}

// The list-of-objects path on the same workload: queue_invoke with one (64,) numpy array
// per item (commit), `score_list` stacks them and returns one (16,) row per item, the
// callback copies its row into d.out; one std::future per item.
double numpy_list_ns(Handler& h, TensorData& d, std::size_t n) {
  d.reset();
  std::vector<std::future<void>> futures;
  futures.reserve(n);
  const auto t0 = Clock::now();
  for (std::size_t i = 0; i < n; ++i) {
    futures.push_back(h.queue_invoke(
        [src = d.input(i)] {
          py::array_t<float> a(static_cast<py::ssize_t>(kFeatures));
          std::memcpy(a.mutable_data(), src, kFeatures * sizeof(float));
          return a;
        },
        [dst = d.output(i)](py::object o) {
          auto a = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(o);
          if (!a || a.size() != static_cast<py::ssize_t>(kScores)) throw std::runtime_error("score_list: bad row");
          std::memcpy(dst, a.data(), kScores * sizeof(float));
        }));
  }
  for (auto& f : futures) f.get();
  const double ns = elapsed_ns(t0, Clock::now()) / static_cast<double>(n);
  d.verify(n, "numpy list: wrong scores");
  return ns;
}

Handler load_numpy_list(PyManager& mgr) {
  HandlerOptions o;
  o.batch_size = 256;
  return mgr.loadPythonModule(kTensorModule, "score_list", o);
}

#if PYSCHED_BENCH_TENSOR_WRAPPER
pyscheduler::ext::TensorHandler load_tensor_cpp(PyManager& mgr, const char* entry, std::size_t batch) {
  pyscheduler::ext::TensorSignature sig;
  sig.inputs.push_back(pyscheduler::ext::tensor_of<float>({static_cast<std::int64_t>(kFeatures)}));
  sig.outputs.push_back(pyscheduler::ext::tensor_of<float>({static_cast<std::int64_t>(kScores)}));
  HandlerOptions o;
  o.batch_size = batch;
  return mgr.loadTensorFunction(kTensorModule, entry, sig, o);
}

enum class CppForm { Callback, StdFuture, Future, FillCallback };

// n items through the C++ wrapper: the callback form (no future), std::future<void>,
// pyscheduler::ext::Future<void>, or queue_fill with the callback form.
double tensor_cpp_ns(pyscheduler::ext::TensorHandler& h, TensorData& d, std::size_t n, CppForm form) {
  d.reset();
  std::atomic<std::size_t> failed{0};
  std::vector<std::future<void>> std_futures;
  std::vector<pyscheduler::ext::Future<void>> futures;
  if (form == CppForm::StdFuture) std_futures.reserve(n);
  if (form == CppForm::Future) futures.reserve(n);
  auto done = [&failed](std::exception_ptr e) {
    if (e) failed.fetch_add(1, std::memory_order_relaxed);
  };
  const auto t0 = Clock::now();
  for (std::size_t i = 0; i < n; ++i) {
    const std::array<const void*, 1> in{d.input(i)};
    const std::array<void*, 1> out{d.output(i)};
    switch (form) {
      case CppForm::Callback:
        h.queue(in, out, done);
        break;
      case CppForm::StdFuture:
        std_futures.push_back(h.queue(in, out));
        break;
      case CppForm::Future:
        futures.push_back(h.queue_future(in, out));
        break;
      case CppForm::FillCallback:
        h.queue_fill(
            [src = d.input(i)](std::span<void* const> slots) { std::memcpy(slots[0], src, kFeatures * sizeof(float)); },
            out, done);
        break;
    }
  }
  if (form == CppForm::StdFuture) {
    for (auto& f : std_futures) f.get();
  } else if (form == CppForm::Future) {
    for (auto& f : futures) f.get();
  } else {
    h.drain();
  }
  const double ns = elapsed_ns(t0, Clock::now()) / static_cast<double>(n);
  check(failed.load() == 0, "tensor (C++): items failed");
  d.verify(n, "tensor (C++): wrong scores");
  return ns;
}
#endif

// The ids of the tensor group; `--rows tensor` selects all of them.
const std::vector<std::string>& tensor_row_ids() {
  static const std::vector<std::string> ids = {"tensor_b256", "tensor_b256_future", "tensor_b256_f",
                                               "tensor_b256_cb", "tensor_b256_fill", "tensor_b256_fill_cb",
                                               "tensor_b1", "numpy_list_b256"};
  return ids;
}

}  // namespace

bool tensor_rows_wanted(const Config& cfg) {
  bool any_tensor = cfg.rows.empty() || cfg.rows.count("tensor") > 0;
  for (const auto& id : tensor_row_ids()) any_tensor = any_tensor || cfg.rows.count(id) > 0;
  return any_tensor;
}

void rows_tensor(const Config& cfg, PyManager& mgr, std::vector<Row>& rows) {
  const bool all = cfg.rows.empty() || cfg.rows.count("tensor") > 0;
  auto wanted = [&](const char* id) { return all || cfg.rows.count(id) > 0; };
  const std::size_t n = cfg.tensor_items;
  const std::size_t n1 = cfg.tensor_b1_items;
  TensorData d(std::max(n, n1));
  GilHeld score_holder;
  const py::object& score = tensor_score(score_holder)->obj;
  auto floor256 = [&] { return tensor_floor_ns(d, n, 256, score); };
  auto floor1 = [&] { return tensor_floor_ns(d, n1, 1, score); };

  // One row each; run() and floor() each measure one repetition (called outside their
  // timed loops, so std::function costs nothing that is measured).
  struct Subject {
    std::string id, workload, note, target;
    bool batch1;
    std::function<double()> run;
    std::function<double()> floor;
    std::function<std::string()> after;  // extra note once measured (mean batch)
    Row row;
  };
  std::vector<Subject> subjects;

  std::optional<CTensorHandler> c256, c1;
  std::optional<Handler> list256;
  if (wanted("tensor_b256") || wanted("tensor_b256_fill")) c256.emplace(mgr, "score", 256);
  if (wanted("tensor_b1")) c1.emplace(mgr, "score", 1);
  if (wanted("numpy_list_b256")) list256.emplace(load_numpy_list(mgr));
  auto batch_note = [](const CTensorHandler& h) {
    return [&h] { return "; mean batch " + fmt(h.mean_batch(), ""); };
  };
  if (wanted("tensor_b256")) {
    subjects.push_back({"tensor_b256", "tensor x@W, batch 256, copy in, C complete callback",
                        std::to_string(n) + " items/rep, 64 float32 in, 16 float32 out into the caller's vector; "
                        "pysched_tensor_handler_queue (inputs copied, outputs pointer, complete callback counting; no "
                        "future, no context per item), then pysched_tensor_handler_drain",
                        "<= 3x floor", false, [&] { return tensor_cabi_ns(*c256, d, n, false); }, floor256,
                        batch_note(*c256), {}});
  }
#if PYSCHED_BENCH_TENSOR_WRAPPER
  std::optional<pyscheduler::ext::TensorHandler> cpp256;
  const bool any_cpp = wanted("tensor_b256_cb") || wanted("tensor_b256_future") || wanted("tensor_b256_f") ||
                       wanted("tensor_b256_fill_cb");
  if (any_cpp) cpp256.emplace(load_tensor_cpp(mgr, "score", 256));
  auto cpp_note = [&] { return "; mean batch " + fmt(cpp256->stats().execute_batch_size_ema, ""); };
  if (wanted("tensor_b256_cb")) {
    subjects.push_back({"tensor_b256_cb", "  same through the C++ wrapper, callback form",
                        "TensorHandler::queue(inputs, outputs, done): one heap context per item, done(exception_ptr) "
                        "counts failures; drain",
                        "<= 3x floor", false, [&] { return tensor_cpp_ns(*cpp256, d, n, CppForm::Callback); }, floor256,
                        cpp_note, {}});
  }
  if (wanted("tensor_b256_future")) {
    subjects.push_back({"tensor_b256_future", "  same, std::future<void> per item",
                        "TensorHandler::queue(inputs, outputs) -> std::future<void>; every get()", "-", false,
                        [&] { return tensor_cpp_ns(*cpp256, d, n, CppForm::StdFuture); }, floor256, cpp_note, {}});
  }
  if (wanted("tensor_b256_f")) {
    subjects.push_back({"tensor_b256_f", "  same, pyscheduler::ext::Future<void> per item",
                        "TensorHandler::queue_future(inputs, outputs); every get()", "-", false,
                        [&] { return tensor_cpp_ns(*cpp256, d, n, CppForm::Future); }, floor256, cpp_note, {}});
  }
#endif
  if (wanted("tensor_b256_fill")) {
    subjects.push_back({"tensor_b256_fill", "  same, fill in place (C fill callback)",
                        "pysched_tensor_item.fill copies the item's 64 floats into its batch row on a pool thread "
                        "without the GIL (prefetch 1); complete callback; drain",
                        "-", false, [&] { return tensor_cabi_ns(*c256, d, n, true); }, floor256, batch_note(*c256), {}});
  }
#if PYSCHED_BENCH_TENSOR_WRAPPER
  if (wanted("tensor_b256_fill_cb")) {
    subjects.push_back({"tensor_b256_fill_cb", "  same, fill in place, C++ wrapper",
                        "TensorHandler::queue_fill(fill, outputs, done); drain", "-", false,
                        [&] { return tensor_cpp_ns(*cpp256, d, n, CppForm::FillCallback); }, floor256, cpp_note,
                        {}});
  }
#endif
  if (wanted("tensor_b1")) {
    subjects.push_back({"tensor_b1", "tensor x@W, batch 1, copy in, C complete callback",
                        std::to_string(n1) + " items/rep through a batch-1 tensor handler; floor at batch 1 (one "
                        "call per item, GIL held throughout)",
                        "-", true, [&] { return tensor_cabi_ns(*c1, d, n1, false); }, floor1, batch_note(*c1), {}});
  }
  if (wanted("numpy_list_b256")) {
    subjects.push_back({"numpy_list_b256", "x@W, batch 256, list of numpy arrays (queue_invoke)",
                        "the list-of-objects path on the same workload: queue_invoke + std::future, commit makes a (64,) "
                        "array per item, score_list does np.stack(items) @ W and returns list(rows), the callback "
                        "copies each row into the caller's vector",
                        "-", false, [&] { return numpy_list_ns(*list256, d, n); }, floor256,
                        [&] { return "; mean batch " + fmt(list256->stats().execute_batch_size_ema, ""); }, {}});
  }
  if (subjects.empty()) return;

  // Warm-up: thread states, buffer pools, numpy's caches.
  for (auto& s : subjects) {
    s.floor();
    s.run();
  }
  // Process CPU time per item (all threads) besides the wall time: on this shared VM the
  // wall time of a two-thread pipeline depends on what else runs; its CPU time less so.
  std::vector<std::vector<double>> cpu_ours(subjects.size()), cpu_floor(subjects.size());
  for (int rep = 0; rep < cfg.reps; ++rep) {
    for (std::size_t k = 0; k < subjects.size(); ++k) {
      auto& s = subjects[k];
      const std::size_t items = s.batch1 ? n1 : n;
      const double c0 = cpu_seconds_self();
      const double f = s.floor();
      const double c1 = cpu_seconds_self();
      const double o = s.run();
      const double c2 = cpu_seconds_self();
      s.row.baseline_samples.push_back(f);
      s.row.ours_samples.push_back(o);
      s.row.ratio_samples.push_back(o / f);
      cpu_floor[k].push_back((c1 - c0) * 1e9 / static_cast<double>(items));
      cpu_ours[k].push_back((c2 - c1) * 1e9 / static_cast<double>(items));
    }
  }
  for (std::size_t k = 0; k < subjects.size(); ++k) {
    auto& s = subjects[k];
    s.row.id = s.id;
    s.row.workload = s.workload;
    s.row.unit = "ns/item";
    s.row.baseline_name = s.batch1 ? "floor, batch 1 (GIL held, numpy)" : "floor (GIL held, numpy)";
    s.row.ratio_label = "x floor";
    s.row.target = s.target;
    Row r = summarized(std::move(s.row), Ratio::kMedianOfPaired);
    if (s.target != "-") r.pass = r.ratio <= 3.0;
    r.note = s.note + (s.after ? s.after() : "") + "; process CPU " + fmt(median(cpu_ours[k]), "ns/item") +
             " (floor " + fmt(median(cpu_floor[k]), "ns/item") +
             "); ratio = median of per-repetition ratios (floor run right before)";
    rows.push_back(r);
  }
}

std::optional<int> profile_tensor(const Config& cfg, PyManager& mgr) {
  const std::string& p = cfg.profile;
  if (p == "numpy_list_b256") {
    TensorData td(cfg.tensor_items);
    Handler h = load_numpy_list(mgr);
    return run_profile(cfg, "ns/item", [&] { return numpy_list_ns(h, td, cfg.tensor_items); });
  }
  const bool b256 = p == "tensor_b256" || p == "tensor_b256_fill" || p == "tensor_floor";
  const bool b1 = p == "tensor_b1" || p == "tensor_floor_b1";
  if (!b256 && !b1) return std::nullopt;
  const std::size_t n = b1 ? cfg.tensor_b1_items : cfg.tensor_items;
  GilHeld score;
  TensorData td(n);
  tensor_score(score);
  CTensorHandler th(mgr, "score", b1 ? 1 : 256);
  if (p == "tensor_floor" || p == "tensor_floor_b1") {
    return run_profile(cfg, "ns/item", [&] { return tensor_floor_ns(td, n, b1 ? 1 : 256, score.obj); });
  }
  return run_profile(cfg, "ns/item", [&, fill = p == "tensor_b256_fill"] { return tensor_cabi_ns(th, td, n, fill); });
}

}  // namespace pysched_bench
