// pyscheduler_bench: the performance table of issue 4. Every row of the issue is measured
// here together with a baseline taken in the same run (an inline floor, a plain pybind11
// embedding, or our own single-producer/serial figure), the ratio, the target and
// PASS/FAIL. Numbers are medians of >= 5 repetitions with baseline and subject
// interleaved, so machine noise hits both alike.
//
//   pyscheduler_bench [--quick] [--json] [--reps N] [--rows id,id,...] [--python-dir DIR]
//
// Exit status: 0 when the table was produced (a missed target reads FAIL in the table),
// 1 on bad arguments, 2 on an error while measuring.
#include <pybind11/pybind11.h>

#include <pyscheduler.h>
#include <pyscheduler/pyscheduler.hpp>
#include <pybind11/numpy.h>

// The tensor rows' C++-wrapper forms need <pyscheduler/tensor_handler.hpp>; the C ABI
// forms (and the table's other rows) do not.
#if __has_include(<pyscheduler/tensor_handler.hpp>)
#include <pyscheduler/tensor_handler.hpp>
#define PYSCHED_BENCH_TENSOR_WRAPPER 1
#else
#define PYSCHED_BENCH_TENSOR_WRAPPER 0
#endif

#include <dirent.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <spawn.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cerrno>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <functional>
#include <future>
#include <latch>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace py = pybind11;
using pyscheduler::ext::HandlerOptions;
using pyscheduler::PyManager;
using Handler = PyManager::InvokeHandler;
using Clock = std::chrono::steady_clock;

#ifndef PYSCHED_BENCH_PYTHON_DIR
#define PYSCHED_BENCH_PYTHON_DIR "benches/python"
#endif
#ifndef PYSCHED_BENCH_BUILD_TYPE
#define PYSCHED_BENCH_BUILD_TYPE "unknown"
#endif
#ifndef PYSCHED_BENCH_REVISION
#define PYSCHED_BENCH_REVISION "unknown"
#endif

namespace {

// ---- configuration --------------------------------------------------------------------

struct Config {
  bool quick = false;
  bool json = false;
  int reps = 5;
  std::string python_dir = PYSCHED_BENCH_PYTHON_DIR;
  std::set<std::string> rows;  // empty: all
  bool rss_child = false;      // internal: the clean process of the RSS row
  std::string profile;         // run only our side of one path, for perf/callgrind
  std::string rss_mode;        // with rss_child: held, free, future or cabi
  std::uint32_t workers = 0;   // pool size (0: the library's default)
  std::string json_out;        // also write the JSON table to this file
  // Sizes (set from quick in parse_args).
  std::size_t queued_items = 200'000;
  std::size_t producer_items = 25'000;  // per producer, 4 producers
  std::size_t batch1_items = 50'000;
  std::size_t plain_items = 20'000;
  std::size_t latency_samples = 400;  // per repetition
  std::size_t sync_calls = 200'000;
  double idle_window_s = 2.0;
  int idle_reps = 5;
  std::size_t rss_items = 120'000;
  std::size_t sleep_items = 20;  // per handler
  std::size_t staging_items = 400;
  std::size_t delay_items = 500;
  std::size_t tensor_items = 100'000;   // the tensor rows at batch 256 (issue 12's workload)
  std::size_t tensor_b1_items = 50'000;  // tensor_b1

  bool want(const std::string& id) const { return rows.empty() || rows.count(id) > 0; }
};

[[noreturn]] void usage(const char* argv0, int status) {
  std::fprintf(status == 0 ? stdout : stderr,
               "usage: %s [--quick] [--json] [--reps N] [--rows ID,ID,...] [--python-dir DIR]\n"
               "  --quick       fewer items (CI smoke); the RSS row keeps 120k items\n"
               "  --json        print the table as JSON instead of text\n"
               "  --json-out F  print the text table and also write the JSON to file F\n"
               "  --reps N      repetitions per row (median reported; default 5, at least 1)\n"
               "  --rows IDS    only these rows: queued_b256 producers4 queued_b1 latency sync\n"
               "                idle8 rss sleep2 staging batch_delay (for profiling one path);\n"
               "                queued_b256 includes its _f/_c/_l rows, queued_b1 its _f row;\n"
               "                tensor rows: tensor_b256 tensor_b256_cb tensor_b256_future tensor_b256_f\n"
               "                tensor_b256_fill tensor_b256_fill_cb tensor_b1 numpy_list_b256 (each with\n"
               "                its floor), or tensor for all of them\n"
               "  --python-dir  where pysched_bench.py lives (default: the source tree's)\n"
               "  --workers N   worker pool size (default: the library's, the number of CPUs, >= 4)\n"
               "  --profile P   run only our side of one path, --reps times, no baseline and no\n"
               "                table (for perf record / callgrind): queued_b256 queued_b256_f\n"
               "                queued_b256_c queued_b256_l queued_b1 queued_b1_f latency sync staged\n"
               "                in_commit tensor_b256 tensor_b256_fill tensor_floor tensor_b1\n"
               "                tensor_floor_b1 numpy_list_b256\n",
               argv0);
  std::exit(status);
}

Config parse_args(int argc, char** argv) {
  Config c;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&](const char* name) -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", name);
        usage(argv[0], 1);
      }
      return argv[++i];
    };
    if (a == "--quick") {
      c.quick = true;
    } else if (a == "--json") {
      c.json = true;
    } else if (a == "--plain") {
      c.json = false;
    } else if (a == "--reps") {
      c.reps = std::max(1, std::atoi(value("--reps").c_str()));
    } else if (a == "--rows") {
      std::stringstream ss(value("--rows"));
      for (std::string id; std::getline(ss, id, ',');) {
        if (!id.empty()) c.rows.insert(id);
      }
    } else if (a == "--python-dir") {
      c.python_dir = value("--python-dir");
    } else if (a == "--json-out") {
      c.json_out = value("--json-out");
    } else if (a == "--workers") {
      c.workers = static_cast<std::uint32_t>(std::max(0, std::atoi(value("--workers").c_str())));
    } else if (a == "--profile") {
      c.profile = value("--profile");
    } else if (a == "--rss-child") {
      c.rss_child = true;
      c.rss_mode = value("--rss-child");
    } else if (a == "-h" || a == "--help") {
      usage(argv[0], 0);
    } else {
      std::fprintf(stderr, "unknown argument: %s\n", a.c_str());
      usage(argv[0], 1);
    }
  }
  if (c.quick) {
    c.queued_items = 20'000;
    c.producer_items = 5'000;
    c.batch1_items = 5'000;
    c.plain_items = 2'000;
    c.latency_samples = 60;
    c.sync_calls = 20'000;
    c.idle_reps = 1;
    c.sleep_items = 5;
    c.staging_items = 80;
    c.delay_items = 150;
    c.tensor_items = 10'000;
    c.tensor_b1_items = 5'000;
  }
  return c;
}

// ---- small helpers --------------------------------------------------------------------

double median(std::vector<double> v) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  const std::size_t i = std::min(v.size() - 1, static_cast<std::size_t>(p / 100.0 * static_cast<double>(v.size())));
  return v[i];
}

double elapsed_ns(Clock::time_point t0, Clock::time_point t1) {
  return static_cast<double>(std::chrono::duration_cast<std::chrono::nanoseconds>(t1 - t0).count());
}

void sleep_us(double us) {
  timespec ts{};
  ts.tv_sec = static_cast<time_t>(us / 1e6);
  ts.tv_nsec = static_cast<long>(std::fmod(us, 1e6) * 1e3);
  nanosleep(&ts, nullptr);
}

double cpu_seconds_self() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

long proc_status_kb(const char* field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  const std::size_t len = std::strlen(field);
  while (std::getline(in, line)) {
    if (line.compare(0, len, field) == 0 && line.size() > len && line[len] == ':') {
      return std::atol(line.c_str() + len + 1);
    }
  }
  return -1;
}

// CPU time (ns, from /proc/self/task/*/schedstat) of each pool worker thread, by tid.
std::vector<std::pair<long, long long>> worker_cpu_ns() {
  std::vector<std::pair<long, long long>> out;
  DIR* d = opendir("/proc/self/task");
  if (d == nullptr) return out;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    const std::string dir = std::string("/proc/self/task/") + e->d_name;
    std::ifstream comm(dir + "/comm");
    std::string name;
    std::getline(comm, name);
    if (name.rfind("pysched-worker", 0) != 0) continue;
    std::ifstream st(dir + "/schedstat");
    long long ns = 0;
    st >> ns;
    out.emplace_back(std::atol(e->d_name), ns);
  }
  closedir(d);
  return out;
}

std::string read_first_line(const char* path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      auto p = line.find(':');
      return p == std::string::npos ? line : line.substr(p + 2);
    }
  }
  return "unknown";
}

// CPU-bound C++ work that the compiler cannot remove: `iters` xorshift steps.
std::uint64_t cpp_work(std::uint64_t iters) {
  std::uint64_t x = 0x9E3779B97F4A7C15ull ^ iters;
  for (std::uint64_t i = 0; i < iters; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    asm volatile("" : "+r"(x));
  }
  return x;
}

// ---- the table ------------------------------------------------------------------------

struct Row {
  std::string id;
  std::string workload;
  std::string unit;           // of ours (and of the baseline unless baseline_unit is set)
  std::string baseline_unit;  // when it differs from unit
  double ours = NAN;
  std::vector<double> ours_samples;
  std::string baseline_name;
  double baseline = NAN;
  std::vector<double> baseline_samples;
  double ratio = NAN;
  // Per-repetition ratios ours[i] / baseline[i] of runs made back to back, where a row
  // pairs them (the tensor rows); `ratio` is then their median, not median / median.
  std::vector<double> ratio_samples;
  std::string ratio_label;  // e.g. "x floor", "x serial"
  std::string target;
  std::optional<bool> pass;  // nullopt: reference row, no target
  std::string note;
};

std::string fmt(double v, const std::string& unit) {
  if (std::isnan(v)) return "-";
  char buf[64];
  const double a = std::fabs(v);
  if (a >= 100 || a == 0) {
    std::snprintf(buf, sizeof buf, "%.0f", v);
  } else if (a >= 10) {
    std::snprintf(buf, sizeof buf, "%.1f", v);
  } else {
    std::snprintf(buf, sizeof buf, "%.2f", v);
  }
  return unit.empty() ? std::string(buf) : std::string(buf) + " " + unit;
}

double spread_pct(const std::vector<double>& s) {
  if (s.size() < 2) return NAN;
  const double m = median(s);
  if (m == 0) return NAN;
  const auto [lo, hi] = std::minmax_element(s.begin(), s.end());
  return 100.0 * (*hi - *lo) / std::fabs(m);
}

std::string json_escape(const std::string& s) {
  std::string out;
  for (char ch : s) {
    switch (ch) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(ch) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", ch);
          out += buf;
        } else {
          out += ch;
        }
    }
  }
  return out;
}

std::string json_num(double v) {
  if (std::isnan(v) || std::isinf(v)) return "null";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

std::string json_array(const std::vector<double>& v) {
  std::string out = "[";
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (i) out += ", ";
    out += json_num(v[i]);
  }
  return out + "]";
}

struct Environment {
  std::vector<std::pair<std::string, std::string>> fields;
  void add(std::string k, std::string v) { fields.emplace_back(std::move(k), std::move(v)); }
};

void print_plain(const Environment& env, const std::vector<Row>& rows) {
  std::printf("pyscheduler benchmark (issue 4)\n");
  for (const auto& [k, v] : env.fields) std::printf("  %-21s %s\n", (k + ":").c_str(), v.c_str());
  std::printf("\n");
  // Cells first, then widths from the widest cell of each column.
  std::vector<std::array<std::string, 7>> cells;
  cells.push_back({"workload", "ours (median)", "spread", "in-run baseline", "baseline (median)", "ratio", "target"});
  std::vector<std::string> results = {"result"};
  for (const auto& r : rows) {
    const double sp = spread_pct(r.ours_samples);
    char spread[16];
    std::snprintf(spread, sizeof spread, std::isnan(sp) ? "-" : "%.0f%%", sp);
    cells.push_back({r.workload, fmt(r.ours, r.unit), spread, r.baseline_name.empty() ? "-" : r.baseline_name,
                     fmt(r.baseline, r.baseline_unit.empty() ? r.unit : r.baseline_unit),
                     std::isnan(r.ratio) ? "-" : fmt(r.ratio, "") + r.ratio_label, r.target});
    results.push_back(!r.pass.has_value() ? "ref" : (*r.pass ? "PASS" : "FAIL"));
  }
  std::array<std::size_t, 7> w{};
  for (const auto& c : cells) {
    for (std::size_t i = 0; i < c.size(); ++i) w[i] = std::max(w[i], c[i].size());
  }
  // Left-aligned text columns, right-aligned numbers.
  constexpr std::array<bool, 7> right = {false, true, true, false, true, true, false};
  std::size_t total = 0;
  for (std::size_t i = 0; i < cells.size(); ++i) {
    std::string line;
    for (std::size_t c = 0; c < w.size(); ++c) {
      const std::string& v = cells[i][c];
      const std::string pad(w[c] - v.size(), ' ');
      line += right[c] ? pad + v : v + pad;
      line += "  ";
    }
    line += results[i];
    std::printf("%s\n", line.c_str());
    if (i == 0) {
      total = line.size();
      std::printf("%s\n", std::string(total, '-').c_str());
    }
  }
  bool any_note = false;
  for (const auto& r : rows) {
    if (r.note.empty()) continue;
    if (!any_note) std::printf("\nnotes:\n");
    any_note = true;
    std::printf("  %-14s %s\n", (r.id + ":").c_str(), r.note.c_str());
  }
  std::printf(
      "\nours/baseline: medians of the repetitions, baseline and ours interleaved; ratio = median(ours) /\n"
      "median(baseline), not the median of the per-repetition ratios (--json has every sample for that);\n"
      "spread = (max-min)/median of ours. 'ref' rows compare with a plain pybind11 embedding or the C ABI and\n"
      "have no target. The machine is a shared VM: expect run-to-run variation of tens of percent on the\n"
      "throughput rows.\n");
}

void print_json(std::FILE* out, const Environment& env, const std::vector<Row>& rows) {
  std::fprintf(out, "{\n  \"environment\": {");
  for (std::size_t i = 0; i < env.fields.size(); ++i) {
    std::fprintf(out, "%s\n    \"%s\": \"%s\"", i ? "," : "", json_escape(env.fields[i].first).c_str(),
                json_escape(env.fields[i].second).c_str());
  }
  std::fprintf(out, "\n  },\n  \"rows\": [");
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const Row& r = rows[i];
    std::fprintf(out, "%s\n    {\"id\": \"%s\", \"workload\": \"%s\", \"unit\": \"%s\", \"ours\": %s, \"ours_samples\": %s, "
                "\"baseline_name\": \"%s\", \"baseline\": %s, \"baseline_samples\": %s, \"ratio\": %s, "
                "\"ratio_samples\": %s, \"ratio_label\": \"%s\", \"target\": \"%s\", \"result\": \"%s\", "
                "\"note\": \"%s\"}",
                i ? "," : "", json_escape(r.id).c_str(), json_escape(r.workload).c_str(), json_escape(r.unit).c_str(),
                json_num(r.ours).c_str(), json_array(r.ours_samples).c_str(), json_escape(r.baseline_name).c_str(),
                json_num(r.baseline).c_str(), json_array(r.baseline_samples).c_str(), json_num(r.ratio).c_str(),
                json_array(r.ratio_samples).c_str(), json_escape(r.ratio_label).c_str(), json_escape(r.target).c_str(),
                !r.pass.has_value() ? "ref" : (*r.pass ? "PASS" : "FAIL"), json_escape(r.note).c_str());
  }
  std::fprintf(out, "\n  ]\n}\n");
}

// ---- Python objects used by the baselines ---------------------------------------------

// Python callables for the baselines; created and destroyed with the GIL held.
struct PyFuncs {
  py::object identity, add, spin;
};
PyFuncs* g_py = nullptr;

void load_py_funcs() {
  py::gil_scoped_acquire gil;
  py::module_ m = py::module_::import("pysched_bench");
  g_py = new PyFuncs{m.attr("identity"), m.attr("add"), m.attr("spin")};
}

void free_py_funcs() {
  py::gil_scoped_acquire gil;
  delete g_py;
  g_py = nullptr;
}

pyscheduler::ext::ManagerOptions manager_options(const Config& cfg) {
  pyscheduler::ext::ManagerOptions o;
  o.worker_threads = cfg.workers;
  return o;
}

// ---- the workloads --------------------------------------------------------------------

void check(bool ok, const char* what) {
  if (!ok) throw std::runtime_error(std::string("benchmark self-check failed: ") + what);
}

constexpr auto kCommitInt = [](long v) { return py::int_(v); };
constexpr auto kCastLong = [](py::object o) { return o.cast<long>(); };

// Queues n identity items from this thread with `queue(value)` (which returns the item's
// future) and waits for all futures. Returns ns per item (enqueue of the first to the
// last future resolved); `wrong_values` is the self-check's message.
template <typename Queue>
double queued_identity_through(std::size_t n, long base, const char* wrong_values, Queue&& queue) {
  std::vector<decltype(queue(0L))> futures;
  futures.reserve(n);
  const auto t0 = Clock::now();
  for (std::size_t i = 0; i < n; ++i) {
    futures.push_back(queue(base + static_cast<long>(i)));
  }
  long sum = 0;
  for (auto& f : futures) sum += f.get();
  const auto t1 = Clock::now();
  const long nn = static_cast<long>(n);
  check(sum == nn * base + nn * (nn - 1) / 2, wrong_values);
  return elapsed_ns(t0, t1) / static_cast<double>(n);
}

// Through the drop-in API: one std::promise/std::future pair per item.
double queued_identity_ns(Handler& h, std::size_t n, long base = 0) {
  return queued_identity_through(n, base, "queued identity returned wrong values",
                                 [&](long v) { return h.queue_invoke(kCommitInt, kCastLong, v); });
}

// The same through queue_invoke_future: one pyscheduler::ext::Future (the item's own context,
// shared with the core) per item instead of a std::promise/std::future pair.
double queued_identity_future_ns(Handler& h, std::size_t n, long base = 0) {
  return queued_identity_through(n, base, "queued identity (pyscheduler::ext::Future) returned wrong values",
                                 [&](long v) { return h.queue_invoke_future(kCommitInt, kCastLong, v); });
}

// The same through the C ABI with fire-and-forget callbacks (no std::future, no heap
// context per item): isolates the core from the wrapper.
std::atomic<long> g_cabi_sum{0};
PyObject* cabi_commit(void* user_data) { return PyLong_FromLong(static_cast<long>(reinterpret_cast<std::intptr_t>(user_data))); }
int cabi_complete(void*, PyObject* result, const pysched_error*) {
  if (result) g_cabi_sum.fetch_add(PyLong_AsLong(result), std::memory_order_relaxed);
  return 0;
}

double queued_identity_cabi_ns(Handler& h, std::size_t n) {
  g_cabi_sum = 0;
  const pysched_handler* ch = h.native_handle();
  const auto t0 = Clock::now();
  for (std::size_t i = 0; i < n; ++i) {
    pysched_item item{};
    item.user_data = reinterpret_cast<void*>(static_cast<std::intptr_t>(i));
    item.commit = &cabi_commit;
    item.complete = &cabi_complete;
    pysched_handler_queue(ch, &item, nullptr, nullptr);
  }
  check(pysched_handler_drain(ch, nullptr) == PYSCHED_OK, "drain");
  const auto t1 = Clock::now();
  const long nn = static_cast<long>(n);
  check(g_cabi_sum.load() == nn * (nn - 1) / 2, "C ABI identity returned wrong values");
  return elapsed_ns(t0, t1) / static_cast<double>(n);
}

// The same through the C ABI with a minimal future per item (a heap context holding an
// std::atomic flag and the value; the waiter blocks with C++20 atomic wait, the worker
// stores and notifies, which makes a syscall only when someone waits): what a future
// type without std::promise's per-item costs would reach.
struct LightFuture {
  long input = 0;
  long value = 0;
  std::atomic<int> ready{0};
};
PyObject* light_commit(void* user_data) { return PyLong_FromLong(static_cast<LightFuture*>(user_data)->input); }
int light_complete(void* user_data, PyObject* result, const pysched_error*) {
  auto* f = static_cast<LightFuture*>(user_data);
  f->value = result ? PyLong_AsLong(result) : -1;
  f->ready.store(1, std::memory_order_release);
  f->ready.notify_one();
  return 0;
}

double queued_identity_light_ns(Handler& h, std::size_t n) {
  const pysched_handler* ch = h.native_handle();
  std::vector<std::unique_ptr<LightFuture>> futures;
  futures.reserve(n);
  const auto t0 = Clock::now();
  for (std::size_t i = 0; i < n; ++i) {
    futures.push_back(std::make_unique<LightFuture>());
    futures.back()->input = static_cast<long>(i);
    pysched_item item{};
    item.user_data = futures.back().get();
    item.commit = &light_commit;
    item.complete = &light_complete;
    pysched_handler_queue(ch, &item, nullptr, nullptr);
  }
  long sum = 0;
  for (auto& f : futures) {
    while (f->ready.load(std::memory_order_acquire) == 0) f->ready.wait(0, std::memory_order_acquire);
    sum += f->value;
    f.reset();
  }
  const auto t1 = Clock::now();
  const long nn = static_cast<long>(n);
  check(sum == nn * (nn - 1) / 2, "light-future identity returned wrong values");
  return elapsed_ns(t0, t1) / static_cast<double>(n);
}

// The inline floor: the same lists built with pybind11, passed to the same function and
// unpacked, by this one thread holding the GIL throughout.
double inline_floor_ns(std::size_t n, std::size_t batch) {
  py::gil_scoped_acquire gil;
  const py::object& f = g_py->identity;
  long sum = 0;
  const auto t0 = Clock::now();
  for (std::size_t base = 0; base < n; base += batch) {
    const std::size_t m = std::min(batch, n - base);
    py::list items(m);
    for (std::size_t j = 0; j < m; ++j) items[j] = py::int_(static_cast<long>(base + j));
    py::list results = f(items);
    for (auto r : results) sum += r.cast<long>();
  }
  const auto t1 = Clock::now();
  const long nn = static_cast<long>(n);
  check(sum == nn * (nn - 1) / 2, "inline floor returned wrong values");
  return elapsed_ns(t0, t1) / static_cast<double>(n);
}

// Plain pybind11 embedding, the original's approach: each C++ thread takes the GIL with
// gil_scoped_acquire for every item and calls the function with a one-item list.
double plain_pybind11_ns(std::size_t threads, std::size_t per_thread) {
  std::latch start(static_cast<std::ptrdiff_t>(threads) + 1);
  std::atomic<long> total{0};
  std::vector<std::thread> pool;
  for (std::size_t t = 0; t < threads; ++t) {
    pool.emplace_back([&] {
      start.arrive_and_wait();
      long sum = 0;
      for (std::size_t i = 0; i < per_thread; ++i) {
        py::gil_scoped_acquire gil;
        py::list items(1);
        items[0] = py::int_(static_cast<long>(i));
        py::list results = g_py->identity(items);
        sum += results[0].cast<long>();
      }
      total += sum;
    });
  }
  const auto t0 = Clock::now();
  start.arrive_and_wait();
  for (auto& th : pool) th.join();
  const auto t1 = Clock::now();
  const long n = static_cast<long>(per_thread);
  check(total.load() == static_cast<long>(threads) * n * (n - 1) / 2, "plain pybind11 returned wrong values");
  return elapsed_ns(t0, t1) / static_cast<double>(threads * per_thread);
}

// `producers` threads each queue `per_producer` identity items and wait for their own
// futures. ns per item over all items.
double producers_ns(Handler& h, std::size_t producers, std::size_t per_producer) {
  std::latch start(static_cast<std::ptrdiff_t>(producers) + 1);
  std::atomic<bool> ok{true};
  std::vector<std::thread> pool;
  for (std::size_t p = 0; p < producers; ++p) {
    pool.emplace_back([&, p] {
      std::vector<std::future<long>> futures;
      futures.reserve(per_producer);
      const long base = static_cast<long>(p * per_producer);
      start.arrive_and_wait();
      for (std::size_t i = 0; i < per_producer; ++i) {
        futures.push_back(h.queue_invoke(kCommitInt, kCastLong, base + static_cast<long>(i)));
      }
      long sum = 0;
      for (auto& f : futures) sum += f.get();
      const long n = static_cast<long>(per_producer);
      if (sum != n * base + n * (n - 1) / 2) ok = false;
    });
  }
  const auto t0 = Clock::now();
  start.arrive_and_wait();
  for (auto& th : pool) th.join();
  const auto t1 = Clock::now();
  check(ok.load(), "producers got wrong values");
  return elapsed_ns(t0, t1) / static_cast<double>(producers * per_producer);
}

// A minimal event-driven hand-off: one C++ worker thread waits on a condition variable
// and answers each request through a std::promise. With `python`, it takes the GIL with
// gil_scoped_acquire per request and calls identity([x]) (a plain pybind11 embedding);
// without, it only echoes: the operating system's floor for "hand a request to an idle
// thread and wait for the answer" (two thread wake-ups).
class PlainWorker {
 public:
  explicit PlainWorker(bool python) : python_(python), thread_([this] { loop(); }) {}
  ~PlainWorker() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_one();
    thread_.join();
  }
  std::future<long> submit(long x) {
    std::promise<long> p;
    auto f = p.get_future();
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.emplace_back(x, std::move(p));
    }
    cv_.notify_one();
    return f;
  }

 private:
  void loop() {
    for (;;) {
      std::pair<long, std::promise<long>> req;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
        if (queue_.empty()) return;
        req = std::move(queue_.front());
        queue_.pop_front();
      }
      long v = req.first;
      if (python_) {
        py::gil_scoped_acquire gil;
        py::list items(1);
        items[0] = py::int_(req.first);
        py::list results = g_py->identity(items);
        v = results[0].cast<long>();
      }
      req.second.set_value(v);
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::pair<long, std::promise<long>>> queue_;
  bool stop_ = false;
  const bool python_;
  std::thread thread_;
};

// ---- rows -----------------------------------------------------------------------------

const char* kModule = "pysched_bench";

Handler load(PyManager& mgr, const char* entry, std::size_t batch, std::size_t prefetch = 1,
             std::chrono::microseconds delay = std::chrono::microseconds(0)) {
  HandlerOptions o;
  o.batch_size = batch;
  o.prefetch_depth = prefetch;
  o.max_batch_delay = delay;
  return mgr.loadPythonModule(kModule, entry, o);
}

void row_queued_b256(const Config& cfg, PyManager& mgr, std::vector<Row>& rows) {
  Handler h = load(mgr, "identity", 256);
  const std::size_t n = cfg.queued_items;
  queued_identity_ns(h, n / 4);  // warm-up (thread states, allocator pools)
  queued_identity_cabi_ns(h, n / 4);
  queued_identity_light_ns(h, n / 4);
  queued_identity_future_ns(h, n / 4);
  inline_floor_ns(n / 4, 256);
  Row r, rf, rc, rl;
  for (int i = 0; i < cfg.reps; ++i) {
    r.baseline_samples.push_back(inline_floor_ns(n, 256));
    r.ours_samples.push_back(queued_identity_ns(h, n));
    rf.ours_samples.push_back(queued_identity_future_ns(h, n));
    rc.ours_samples.push_back(queued_identity_cabi_ns(h, n));
    rl.ours_samples.push_back(queued_identity_light_ns(h, n));
  }
  r.id = "queued_b256";
  r.workload = "queued identity, batch 256, 1 producer";
  r.unit = "ns/item";
  r.ours = median(r.ours_samples);
  r.baseline_name = "inline floor (GIL held)";
  r.baseline = median(r.baseline_samples);
  r.ratio = r.ours / r.baseline;
  r.ratio_label = "x floor";
  r.target = "<= 3x floor";
  r.pass = r.ratio <= 3.0;
  const auto st = h.stats();
  char note[256];
  std::snprintf(note, sizeof note,
                "%zu items/rep through queue_invoke + std::future (commit py::int_, callback cast<long>); "
                "mean batch %.1f",
                n, st.execute_batch_size_ema);
  r.note = note;
  rows.push_back(r);

  rf.id = "queued_b256_f";
  rf.workload = "queued identity, batch 256 via queue_invoke_future (pyscheduler::ext::Future)";
  rf.unit = "ns/item";
  rf.ours = median(rf.ours_samples);
  rf.baseline_name = "inline floor (GIL held)";
  rf.baseline_samples = r.baseline_samples;
  rf.baseline = r.baseline;
  rf.ratio = rf.ours / rf.baseline;
  rf.ratio_label = "x floor";
  rf.target = "<= 3x floor";
  rf.pass = rf.ratio <= 3.0;
  rf.note = "the same items through queue_invoke_future: one heap context per item shared by the core and the "
            "Future (atomic state word, C++20 atomic wait), no std::promise";
  rows.push_back(rf);

  rc.id = "queued_b256_c";
  rc.workload = "  same through the C ABI (no std::future)";
  rc.unit = "ns/item";
  rc.ours = median(rc.ours_samples);
  rc.baseline_name = "inline floor (GIL held)";
  rc.baseline_samples = r.baseline_samples;
  rc.baseline = r.baseline;
  rc.ratio = rc.ours / rc.baseline;
  rc.ratio_label = "x floor";
  rc.target = "-";
  rc.note = "pysched_handler_queue with C callbacks and pysched_handler_drain: the core alone";
  rows.push_back(rc);

  rl.id = "queued_b256_l";
  rl.workload = "  same, C ABI + C++20 atomic future";
  rl.unit = "ns/item";
  rl.ours = median(rl.ours_samples);
  rl.baseline_name = "inline floor (GIL held)";
  rl.baseline_samples = r.baseline_samples;
  rl.baseline = r.baseline;
  rl.ratio = rl.ours / rl.baseline;
  rl.ratio_label = "x floor";
  rl.target = "-";
  rl.note = "a heap context per item with std::atomic<int> + wait/notify instead of std::promise/std::future "
            "(whose set_value makes a futex syscall per item in glibc's pthread_once)";
  rows.push_back(rl);
}

void row_producers4(const Config& cfg, PyManager& mgr, std::vector<Row>& rows) {
  Handler h = load(mgr, "identity", 32);
  const std::size_t per = cfg.producer_items;
  producers_ns(h, 4, per / 4);  // warm-up
  producers_ns(h, 1, per);
  Row r, rp;
  for (int i = 0; i < cfg.reps; ++i) {
    r.baseline_samples.push_back(producers_ns(h, 1, 4 * per));
    r.ours_samples.push_back(producers_ns(h, 4, per));
    rp.baseline_samples.push_back(plain_pybind11_ns(4, cfg.plain_items / 4));
  }
  r.id = "producers4";
  r.workload = "4 producers x " + std::to_string(per / 1000) + "k items, batch 32";
  r.unit = "ns/item";
  r.ours = median(r.ours_samples);
  r.baseline_name = "1 producer, same items";
  r.baseline = median(r.baseline_samples);
  r.ratio = r.ours / r.baseline;
  r.ratio_label = "x 1 prod.";
  r.target = "<= 1.5x 1 prod.";
  r.pass = r.ratio <= 1.5;
  r.note = "mean batch " + fmt(h.stats().execute_batch_size_ema, "") + " (EMA after the last repetition)";
  rows.push_back(r);

  rp.id = "producers4_pb";
  rp.workload = "  vs plain pybind11, 4 threads";
  rp.unit = "ns/item";
  rp.ours_samples = r.ours_samples;
  rp.ours = r.ours;
  rp.baseline_name = "gil_scoped_acquire+call per item";
  rp.baseline = median(rp.baseline_samples);
  rp.ratio = rp.baseline / rp.ours;
  rp.ratio_label = "x faster";
  rp.target = "-";
  rp.note = "4 C++ threads each take the GIL per item and call identity([x]) (" +
            std::to_string(cfg.plain_items) + " items/rep)";
  rows.push_back(rp);
}

void row_queued_b1(const Config& cfg, PyManager& mgr, std::vector<Row>& rows) {
  Handler h = load(mgr, "identity", 1);
  const std::size_t n = cfg.batch1_items;
  queued_identity_ns(h, n / 4);
  queued_identity_future_ns(h, n / 4);
  plain_pybind11_ns(1, cfg.plain_items / 4);
  Row r, rf;
  for (int i = 0; i < cfg.reps; ++i) {
    r.baseline_samples.push_back(plain_pybind11_ns(1, cfg.plain_items));
    r.ours_samples.push_back(queued_identity_ns(h, n));
    rf.ours_samples.push_back(queued_identity_future_ns(h, n));
  }
  r.id = "queued_b1";
  r.workload = "queued identity, batch 1";
  r.unit = "ns/item";
  r.ours = median(r.ours_samples);
  r.baseline_name = "plain pybind11, 1 thread, per item";
  r.baseline = median(r.baseline_samples);
  r.ratio = r.baseline / r.ours;
  r.ratio_label = "x faster";
  r.target = "<= 2000 ns";
  r.pass = r.ours <= 2000.0;
  r.note = "mean batch " + fmt(h.stats().execute_batch_size_ema, "") +
           "; baseline: one C++ thread, gil_scoped_acquire + identity([x]) per item, synchronously";
  rows.push_back(r);

  rf.id = "queued_b1_f";
  rf.workload = "  same via queue_invoke_future (pyscheduler::ext::Future)";
  rf.unit = "ns/item";
  rf.ours = median(rf.ours_samples);
  rf.baseline_name = r.baseline_name;
  rf.baseline_samples = r.baseline_samples;
  rf.baseline = r.baseline;
  rf.ratio = rf.baseline / rf.ours;
  rf.ratio_label = "x faster";
  rf.target = "-";
  rf.note = "the same items, one pyscheduler::ext::Future per item instead of std::future";
  rows.push_back(rf);
}

void row_latency(const Config& cfg, PyManager& mgr, std::vector<Row>& rows) {
  Handler h = load(mgr, "identity", 1);
  PlainWorker floor_worker(false), plain_worker(true);
  enum Who { kOurs, kFloor, kPlain };
  auto one = [&](Who who, long x) {
    const auto t0 = Clock::now();
    long v = who == kOurs    ? h.queue_invoke(kCommitInt, kCastLong, x).get()
             : who == kFloor ? floor_worker.submit(x).get()
                             : plain_worker.submit(x).get();
    const auto t1 = Clock::now();
    check(v == x, "latency round trip returned a wrong value");
    sleep_us(300);  // let every worker go idle (block) again
    return elapsed_ns(t0, t1) / 1000.0;
  };
  for (int i = 0; i < 20; ++i) {  // warm-up
    one(kOurs, i);
    one(kFloor, i);
    one(kPlain, i);
  }
  Row p50, p99, plain;
  for (int rep = 0; rep < cfg.reps; ++rep) {
    std::vector<double> ours, base, pb;
    for (std::size_t i = 0; i < cfg.latency_samples; ++i) {
      ours.push_back(one(kOurs, static_cast<long>(i)));
      base.push_back(one(kFloor, static_cast<long>(i)));
      pb.push_back(one(kPlain, static_cast<long>(i)));
    }
    p50.ours_samples.push_back(percentile(ours, 50));
    p99.ours_samples.push_back(percentile(ours, 99));
    p50.baseline_samples.push_back(percentile(base, 50));
    p99.baseline_samples.push_back(percentile(base, 99));
    plain.baseline_samples.push_back(percentile(pb, 50));
  }
  for (Row* r : {&p50, &p99}) {
    const bool is50 = r == &p50;
    r->id = is50 ? "latency_p50" : "latency_p99";
    r->workload = std::string("one request at a time, idle worker, ") + (is50 ? "p50" : "p99");
    r->unit = "us";
    r->ours = median(r->ours_samples);
    r->baseline_name = "hand-off floor, no Python";
    r->baseline = median(r->baseline_samples);
    r->ratio = r->ours / r->baseline;
    r->ratio_label = "x floor";
    r->target = is50 ? "<= 20 us" : "<= 100 us";
    r->pass = r->ours <= (is50 ? 20.0 : 100.0);
  }
  p50.note = "queue_invoke + future.get(), 300 us pause between requests, " + std::to_string(cfg.latency_samples) +
             " samples/rep; floor: a C++ thread blocked on a condition variable echoes the request through a "
             "std::promise (two thread wake-ups, no Python)";
  plain.id = "latency_pb";
  plain.workload = "  vs plain pybind11 worker, p50";
  plain.unit = "us";
  plain.ours_samples = p50.ours_samples;
  plain.ours = p50.ours;
  plain.baseline_name = "same + gil_scoped_acquire + call";
  plain.baseline = median(plain.baseline_samples);
  plain.ratio = plain.baseline / plain.ours;
  plain.ratio_label = "x faster";
  plain.target = "-";
  rows.push_back(p50);
  rows.push_back(p99);
  rows.push_back(plain);
}

void row_sync(const Config& cfg, PyManager& mgr, std::vector<Row>& rows) {
  Handler h = load(mgr, "add", 1);
  const std::size_t n = cfg.sync_calls;
  auto ours = [&](std::size_t calls) {
    double ns = 0;
    std::thread t([&] {
      long sum = h.invoke<int>(1, 2);  // first call creates this thread's persistent state
      const auto t0 = Clock::now();
      for (std::size_t i = 0; i < calls; ++i) sum += h.invoke<int>(3000, -1234);
      ns = elapsed_ns(t0, Clock::now()) / static_cast<double>(calls);
      check(sum == 3 + 1766L * static_cast<long>(calls), "invoke<int> returned wrong values");
    });
    t.join();
    return ns;
  };
  auto floor = [&](std::size_t calls) {
    double ns = 0;
    std::thread t([&] {
      py::gil_scoped_acquire gil;
      long sum = 0;
      const auto t0 = Clock::now();
      for (std::size_t i = 0; i < calls; ++i) sum += g_py->add(3000, -1234).cast<int>();
      ns = elapsed_ns(t0, Clock::now()) / static_cast<double>(calls);
      check(sum == 1766L * static_cast<long>(calls), "floor add returned wrong values");
    });
    t.join();
    return ns;
  };
  auto plain = [&](std::size_t calls) {
    double ns = 0;
    std::thread t([&] {
      long sum = 0;
      const auto t0 = Clock::now();
      for (std::size_t i = 0; i < calls; ++i) {
        py::gil_scoped_acquire gil;
        sum += g_py->add(3000, -1234).cast<int>();
      }
      ns = elapsed_ns(t0, Clock::now()) / static_cast<double>(calls);
      check(sum == 1766L * static_cast<long>(calls), "plain add returned wrong values");
    });
    t.join();
    return ns;
  };
  ours(n / 10);
  floor(n / 10);
  plain(n / 100);
  Row r, rp;
  for (int i = 0; i < cfg.reps; ++i) {
    r.baseline_samples.push_back(floor(n));
    r.ours_samples.push_back(ours(n));
    rp.baseline_samples.push_back(plain(n / 10));
  }
  r.id = "sync";
  r.workload = "synchronous invoke<int> from a C++ thread";
  r.unit = "ns/call";
  r.ours = median(r.ours_samples);
  r.baseline_name = "floor: pybind11 call, GIL already held";
  r.baseline = median(r.baseline_samples);
  r.ratio = r.ours / r.baseline;
  r.ratio_label = "x floor";
  r.target = "<= 2x floor";
  r.pass = r.ratio <= 2.0;
  r.note = "add(3000, -1234) with int arguments converted by pybind11, result cast<int>";
  rows.push_back(r);

  rp.id = "sync_pb";
  rp.workload = "  vs plain pybind11 per call";
  rp.unit = "ns/call";
  rp.ours_samples = r.ours_samples;
  rp.ours = r.ours;
  rp.baseline_name = "gil_scoped_acquire + call per call";
  rp.baseline = median(rp.baseline_samples);
  rp.ratio = rp.baseline / rp.ours;
  rp.ratio_label = "x faster";
  rp.target = "-";
  rows.push_back(rp);
}

void row_idle8(const Config& cfg, PyManager& mgr, std::vector<Row>& rows) {
  std::vector<Handler> handlers;
  for (int i = 0; i < 8; ++i) handlers.push_back(load(mgr, "identity", 1 + static_cast<std::size_t>(i)));
  for (auto& h : handlers) check(h.queue_invoke(kCommitInt, kCastLong, 7L).get() == 7, "idle warm-up");
  sleep_us(100'000);  // let everything settle
  Row r;
  for (int i = 0; i < cfg.idle_reps; ++i) {
    const double c0 = cpu_seconds_self();
    const auto t0 = Clock::now();
    sleep_us(cfg.idle_window_s * 1e6);
    const double c1 = cpu_seconds_self();
    const double wall = elapsed_ns(t0, Clock::now()) / 1e9;
    // Scale to exactly the window, in ms.
    r.ours_samples.push_back((c1 - c0) * 1e3 * cfg.idle_window_s / wall);
  }
  r.id = "idle8";
  r.workload = "8 idle handlers, CPU per 2 s";
  r.unit = "ms";
  r.ours = median(r.ours_samples);
  r.baseline_name = "-";
  r.target = "< 2 ms";
  r.pass = r.ours < 2.0;
  r.note = "getrusage(RUSAGE_SELF) over a 2 s window, all threads, process otherwise idle; " +
           std::to_string(mgr.worker_threads()) + " pool workers + timer";
  rows.push_back(r);
}

// The clean process of the RSS rows; `mode` is "held" (queue_invoke while holding the
// GIL, so all items are queued at once), "free" (queue_invoke without the GIL: the worker
// runs meanwhile), "future" (as held, through queue_invoke_future) or "cabi" (as held,
// through the C ABI without futures). Prints "baseline_kb=... peak_kb=... items=...".
int rss_child(const Config& cfg) {
  const std::string& mode = cfg.rss_mode;
  if (mode != "held" && mode != "free" && mode != "cabi" && mode != "future") {
    throw std::runtime_error("bad --rss-child mode " + mode);
  }
  PyManager mgr(manager_options(cfg));
  mgr.add_path(cfg.python_dir);
  load_py_funcs();
  Handler h = load(mgr, "identity", 256);
  check(h.queue_invoke(kCommitInt, kCastLong, 1L).get() == 1, "rss warm-up");
  queued_identity_cabi_ns(h, 1);
  const long baseline_kb = proc_status_kb("VmRSS");
  const auto cpu_before = worker_cpu_ns();
  long queued_kb = -1;  // VmRSS once all items are queued (held, future, cabi)
  const std::size_t n = cfg.rss_items;
  const long nn = static_cast<long>(n);
  if (mode == "cabi") {
    g_cabi_sum = 0;
    {
      py::gil_scoped_acquire gil;
      for (std::size_t i = 0; i < n; ++i) {
        pysched_item item{};
        item.user_data = reinterpret_cast<void*>(static_cast<std::intptr_t>(i));
        item.commit = &cabi_commit;
        item.complete = &cabi_complete;
        pysched_handler_queue(h.native_handle(), &item, nullptr, nullptr);
      }
      queued_kb = proc_status_kb("VmRSS");
    }
    check(pysched_handler_drain(h.native_handle(), nullptr) == PYSCHED_OK, "drain");
    check(g_cabi_sum.load() == nn * (nn - 1) / 2, "rss C ABI items returned wrong values");
  } else if (mode == "future") {
    std::vector<pyscheduler::ext::Future<long>> futures;
    futures.reserve(n);
    {
      py::gil_scoped_acquire gil;  // as "held": all n stay queued
      for (std::size_t i = 0; i < n; ++i) {
        futures.push_back(h.queue_invoke_future(kCommitInt, kCastLong, static_cast<long>(i)));
      }
      queued_kb = proc_status_kb("VmRSS");
    }
    long sum = 0;
    for (auto& f : futures) sum += f.get();
    check(sum == nn * (nn - 1) / 2, "rss items (pyscheduler::ext::Future) returned wrong values");
  } else {
    std::vector<std::future<long>> futures;
    futures.reserve(n);
    {
      std::optional<py::gil_scoped_acquire> gil;
      if (mode == "held") gil.emplace();  // the worker cannot execute: all n stay queued
      for (std::size_t i = 0; i < n; ++i) {
        futures.push_back(h.queue_invoke(kCommitInt, kCastLong, static_cast<long>(i)));
      }
      if (mode == "held") queued_kb = proc_status_kb("VmRSS");
    }
    long sum = 0;
    for (auto& f : futures) sum += f.get();
    check(sum == nn * (nn - 1) / 2, "rss items returned wrong values");
  }
  // Pool workers that ran while the items executed (each brings its own allocator heap,
  // thread state and stack pages into the peak).
  int workers_ran = 0;
  for (const auto& [tid, ns] : worker_cpu_ns()) {
    for (const auto& [tid0, ns0] : cpu_before) {
      if (tid0 == tid && ns > ns0) ++workers_ran;
    }
  }
  std::printf("baseline_kb=%ld peak_kb=%ld items=%zu queued_kb=%ld workers_ran=%d\n", baseline_kb,
              proc_status_kb("VmHWM"), n, queued_kb, workers_ran);
  std::fflush(stdout);
  if (const char* path = std::getenv("PYSCHED_BENCH_SMAPS")) {  // for a look at where the memory is
    std::ifstream in("/proc/self/smaps");
    std::ofstream(path) << in.rdbuf();
  }
  free_py_funcs();
  return 0;
}

// Runs this program again with --rss-child MODE and parses its line.
std::pair<long, long> spawn_rss_child(const Config& cfg, const char* mode) {
  int fds[2];
  if (pipe(fds) != 0) throw std::runtime_error("pipe failed");
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
  posix_spawn_file_actions_addclose(&fa, fds[0]);
  std::string exe = "/proc/self/exe";
  std::vector<std::string> args = {"pyscheduler_bench", "--rss-child", mode, "--python-dir", cfg.python_dir,
                                   "--workers", std::to_string(cfg.workers)};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  const int rc = posix_spawn(&pid, exe.c_str(), &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  close(fds[1]);
  if (rc != 0) {
    close(fds[0]);
    throw std::runtime_error(std::string("posix_spawn failed: ") + std::strerror(rc));
  }
  std::string out;
  char buf[512];
  for (ssize_t k; (k = read(fds[0], buf, sizeof buf)) > 0;) out.append(buf, static_cast<std::size_t>(k));
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  long base = -1, peak = -1;
  std::size_t items = 0;
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 ||
      std::sscanf(out.c_str(), "baseline_kb=%ld peak_kb=%ld items=%zu", &base, &peak, &items) != 3) {
    throw std::runtime_error("the --rss-child process failed; its output: " + out);
  }
  return {base, peak};
}

void row_rss(const Config& cfg, std::vector<Row>& rows) {
  Row held, free_run, future, cabi;
  for (int i = 0; i < cfg.reps; ++i) {
    for (auto [row, mode] : {std::pair{&held, "held"}, std::pair{&free_run, "free"}, std::pair{&future, "future"},
                             std::pair{&cabi, "cabi"}}) {
      auto [base, peak] = spawn_rss_child(cfg, mode);
      row->baseline_samples.push_back(static_cast<double>(base) / 1024.0);
      row->ours_samples.push_back(static_cast<double>(peak) / 1024.0);
    }
  }
  auto per_item = [&](const Row& r) {
    return (r.ours - r.baseline) * 1024.0 * 1024.0 / static_cast<double>(cfg.rss_items);
  };
  for (Row* r : {&held, &free_run, &future, &cabi}) {
    r->unit = "MB";
    r->ours = median(r->ours_samples);
    r->baseline_name = "RSS before queueing";
    r->baseline = median(r->baseline_samples);
    r->target = "-";
  }
  held.id = "rss";
  held.workload = "peak RSS, 120k queued items, batch 256";
  held.target = "<= 35 MB";
  held.pass = held.ours <= 35.0;
  char note[320];
  std::snprintf(note, sizeof note,
                "VmHWM of a fresh process (--rss-child held) that queues 120k items with queue_invoke while "
                "holding the GIL (all queued at once), then waits: %.0f bytes/item above the baseline",
                per_item(held));
  held.note = note;
  free_run.id = "rss_free";
  free_run.workload = "  same, producer without the GIL";
  std::snprintf(note, sizeof note, "the worker executes while the producer queues: %.0f bytes/item",
                per_item(free_run));
  free_run.note = note;
  future.id = "rss_f";
  future.workload = "  same, all queued, queue_invoke_future";
  std::snprintf(note, sizeof note, "as the first, one pyscheduler::ext::Future per item: %.0f bytes/item",
                per_item(future));
  future.note = note;
  cabi.id = "rss_c";
  cabi.workload = "  same, all queued, C ABI (no std::future)";
  std::snprintf(note, sizeof note, "the core's own share: %.0f bytes/item", per_item(cabi));
  cabi.note = note;
  rows.push_back(held);
  rows.push_back(free_run);
  rows.push_back(future);
  rows.push_back(cabi);
}

void row_sleep2(const Config& cfg, PyManager& mgr, std::vector<Row>& rows) {
  Handler a = load(mgr, "sleep_10ms_per_item", 1);
  Handler b = load(mgr, "sleep_10ms_per_item", 1);
  const std::size_t n = cfg.sleep_items;
  auto run = [&](bool two) {
    std::vector<std::future<long>> futures;
    const auto t0 = Clock::now();
    for (std::size_t i = 0; i < n; ++i) {
      futures.push_back(a.queue_invoke(kCommitInt, kCastLong, static_cast<long>(i)));
      futures.push_back((two ? b : a).queue_invoke(kCommitInt, kCastLong, static_cast<long>(i)));
    }
    for (auto& f : futures) f.get();
    return elapsed_ns(t0, Clock::now()) / 1e6;
  };
  run(true);
  Row r;
  for (int i = 0; i < cfg.reps; ++i) {
    const double serial = run(false);
    const double parallel = run(true);
    r.baseline_samples.push_back(serial);
    r.ours_samples.push_back(serial / parallel);
  }
  r.id = "sleep2";
  r.workload = "2 handlers sleeping 10 ms/item (GIL released)";
  r.unit = "x";
  r.baseline_unit = "ms";
  r.ours = median(r.ours_samples);
  r.baseline_name = "serial: one handler, same items";
  r.baseline = median(r.baseline_samples);
  r.ratio = r.ours;
  r.ratio_label = "x serial";
  r.target = ">= 1.9x serial";
  r.pass = r.ours >= 1.9;
  r.note = "ours = serial time / time with two handlers (" + std::to_string(2 * n) +
           " items of 10 ms either way)";
  rows.push_back(r);
}

// The GIL-free staging workload: each item costs kCostUs of C++ work and kCostUs of
// Python work (a pure-Python loop, GIL held), both calibrated on this machine.
struct Staging {
  static constexpr double kCostUs = 100.0;  // per item, on each side
  static constexpr std::size_t kBatch = 8;
  static constexpr std::size_t kPrefetch = 3;
  std::uint64_t cpp_iters = 0;
  long py_iters = 0;

  void calibrate() {
    std::vector<double> cpp_ns_per_iter, py_ns_per_iter;
    for (int i = 0; i < 7; ++i) {
      const std::uint64_t it = 2'000'000;
      const auto t0 = Clock::now();
      volatile std::uint64_t sink = cpp_work(it);
      (void)sink;
      cpp_ns_per_iter.push_back(elapsed_ns(t0, Clock::now()) / static_cast<double>(it));
    }
    py::gil_scoped_acquire gil;
    for (int i = 0; i < 7; ++i) {
      const long it = 200'000;
      py::list l(1);
      l[0] = py::int_(it);
      const auto t0 = Clock::now();
      g_py->spin(l);
      py_ns_per_iter.push_back(elapsed_ns(t0, Clock::now()) / static_cast<double>(it));
    }
    cpp_iters = static_cast<std::uint64_t>(kCostUs * 1000.0 / median(cpp_ns_per_iter));
    py_iters = static_cast<long>(kCostUs * 1000.0 / median(py_ns_per_iter));
  }

  // (a) the C++ work inside the commit, under the GIL. us per item.
  double in_commit(Handler& h, std::size_t n) const {
    std::vector<std::future<long>> futures;
    futures.reserve(n);
    const std::uint64_t iters = cpp_iters;
    const auto t0 = Clock::now();
    for (std::size_t i = 0; i < n; ++i) {
      futures.push_back(h.queue_invoke(
          [iters](long it) {
            volatile std::uint64_t sink = cpp_work(iters);  // under the GIL
            (void)sink;
            return py::int_(it);
          },
          kCastLong, py_iters));
    }
    for (auto& f : futures) check(f.get() == py_iters, "staging (a) value");
    return elapsed_ns(t0, Clock::now()) / 1000.0 / static_cast<double>(n);
  }

  // (b) the C++ work in queue_invoke_staged's stage, on a pool thread without the GIL.
  // Returns us per item; `overlap` (if set) receives the fraction of the stages' wall
  // time that ran while some item was between its commit and its callback (under the
  // GIL): ~1 when staging hides behind Python, ~0 when the two alternate.
  double staged(Handler& h, std::size_t n, double* overlap = nullptr) const {
    std::vector<std::future<long>> futures;
    futures.reserve(n);
    // Per item: stage begin/end, commit, callback (ns since t0); each written once.
    std::vector<std::array<std::int64_t, 4>> ts(n);
    const std::uint64_t iters = cpp_iters;
    const auto t0 = Clock::now();
    auto since = [t0] { return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count(); };
    for (std::size_t i = 0; i < n; ++i) {
      auto* slot = &ts[i];
      futures.push_back(h.queue_invoke_staged(
          [iters, slot, since](long it) {
            (*slot)[0] = since();
            volatile std::uint64_t sink = cpp_work(iters);  // no GIL
            (void)sink;
            (*slot)[1] = since();
            return it;
          },
          [slot, since](long it) {
            (*slot)[2] = since();
            return py::int_(it);
          },
          [slot, since](py::object o) {
            (*slot)[3] = since();
            return o.cast<long>();
          },
          py_iters));
    }
    for (auto& f : futures) check(f.get() == py_iters, "staging (b) value");
    const double us = elapsed_ns(t0, Clock::now()) / 1000.0 / static_cast<double>(n);
    if (overlap) {
      // Union of the [commit, callback] intervals, then the share of stage time inside it.
      std::vector<std::pair<std::int64_t, std::int64_t>> gil;
      for (const auto& t : ts) gil.emplace_back(t[2], t[3]);
      std::sort(gil.begin(), gil.end());
      std::vector<std::pair<std::int64_t, std::int64_t>> merged;
      for (const auto& iv : gil) {
        if (!merged.empty() && iv.first <= merged.back().second) {
          merged.back().second = std::max(merged.back().second, iv.second);
        } else {
          merged.push_back(iv);
        }
      }
      double inside = 0, total = 0;
      for (const auto& t : ts) {
        total += static_cast<double>(t[1] - t[0]);
        for (const auto& m : merged) {
          const std::int64_t a = std::max(t[0], m.first), b = std::min(t[1], m.second);
          if (b > a) inside += static_cast<double>(b - a);
        }
      }
      *overlap = total > 0 ? inside / total : NAN;
    }
    return us;
  }
};

void row_staging(const Config& cfg, PyManager& mgr, std::vector<Row>& rows) {
  constexpr double kCostUs = Staging::kCostUs;
  constexpr std::size_t kBatch = Staging::kBatch;
  constexpr std::size_t kPrefetch = Staging::kPrefetch;
  Staging st;
  st.calibrate();
  Handler h = load(mgr, "spin", kBatch, kPrefetch);
  const std::size_t n = cfg.staging_items;
  auto in_commit = [&] { return st.in_commit(h, n); };
  std::vector<double> overlaps;
  auto staged = [&] {
    double ov = NAN;
    const double us = st.staged(h, n, &ov);
    overlaps.push_back(ov);
    return us;
  };
  in_commit();
  staged();
  Row r;
  for (int i = 0; i < cfg.reps; ++i) {
    r.baseline_samples.push_back(in_commit());
    r.ours_samples.push_back(staged());
  }
  r.id = "staging";
  r.workload = "GIL-free staging (100 us C++ + 100 us Python/item)";
  r.unit = "us/item";
  r.ours = median(r.ours_samples);
  r.baseline_name = "(a) the work inside the GIL commit";
  r.baseline = median(r.baseline_samples);
  r.ratio = r.baseline / r.ours;
  r.ratio_label = "x faster";
  r.target = ">= 1.5x (ideal 2)";
  r.pass = r.ratio >= 1.5;
  char note[400];
  std::snprintf(note, sizeof note,
                "(b) queue_invoke_staged, batch %zu, prefetch %zu, %zu items/rep; sum of the work = %.0f us/item, "
                "ideal max(commit, python) = %.0f us/item (needs 2 free cores); %.0f%% of the stage time ran "
                "while Python executed (median)",
                kBatch, kPrefetch, n, 2 * kCostUs, kCostUs, 100.0 * median(overlaps));
  r.note = note;
  rows.push_back(r);
}

void row_batch_delay(const Config& cfg, PyManager& mgr, std::vector<Row>& rows) {
  constexpr double kIntervalUs = 200.0;
  constexpr auto kDelay = std::chrono::microseconds(2000);
  constexpr std::size_t kBatch = 32;
  prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
  Handler no_delay = load(mgr, "identity", kBatch);
  Handler with_delay = load(mgr, "identity", kBatch, 1, kDelay);
  const std::size_t n = cfg.delay_items;
  auto run = [&](Handler& h) {
    const auto before = h.stats();
    std::vector<std::future<long>> futures;
    futures.reserve(n);
    timespec next{};
    clock_gettime(CLOCK_MONOTONIC, &next);
    for (std::size_t i = 0; i < n; ++i) {
      next.tv_nsec += static_cast<long>(kIntervalUs * 1000);
      if (next.tv_nsec >= 1'000'000'000) {
        next.tv_nsec -= 1'000'000'000;
        ++next.tv_sec;
      }
      clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, nullptr);
      futures.push_back(h.queue_invoke(kCommitInt, kCastLong, static_cast<long>(i)));
    }
    for (auto& f : futures) f.get();
    const auto after = h.stats();
    const double batches = static_cast<double>(after.batches - before.batches);
    return static_cast<double>(n) / std::max(1.0, batches);
  };
  run(no_delay);
  run(with_delay);
  Row r;
  for (int i = 0; i < cfg.reps; ++i) {
    r.baseline_samples.push_back(run(no_delay));
    r.ours_samples.push_back(run(with_delay));
  }
  r.id = "batch_delay";
  r.workload = "max batch delay 2 ms, 1 item / 200 us";
  r.unit = "items/batch";
  r.ours = median(r.ours_samples);
  r.baseline_name = "no delay (opportunistic)";
  r.baseline = median(r.baseline_samples);
  r.ratio = r.ours / r.baseline;
  r.ratio_label = "x larger";
  r.target = ">= 4x larger";
  r.pass = r.ratio >= 4.0;
  const auto lw = with_delay.latency();
  const auto ln = no_delay.latency();
  char note[320];
  std::snprintf(note, sizeof note,
                "batch 32, %zu items/rep paced at 5k/s; expected ~%.0f items/batch with the delay; queue wait p50 "
                "%.0f us with the delay vs %.0f us without (histogram buckets)",
                n, 2000.0 / kIntervalUs + 1, static_cast<double>(lw.queue_wait_p50.count()) / 1e3,
                static_cast<double>(ln.queue_wait_p50.count()) / 1e3);
  r.note = note;
  rows.push_back(r);
}

// ---- tensor rows (issue 12) -----------------------------------------------------------
//
// The workload of issue 12's table: n items of 64 float32 features each, the Python
// function `x @ W` in numpy (W 64x16 float32, benches/python/pysched_tensor_bench.py), 16
// float32 scores back into a caller-owned vector per item. Every subject's run is paired
// with a run of its floor made right before it (one thread holding the GIL copies the
// items into a (B, 64) numpy array, calls the same function, copies the (B, 16) result
// out), and the row's ratio is the median of those per-repetition ratios.

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
  // After a run (not timed).
  void verify(const char* what) const {
    check(std::memcmp(out.data(), expected.data(), out.size() * sizeof(float)) == 0, what);
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
  // Only the first n items were written.
  check(std::memcmp(d.out.data(), d.expected.data(), n * kScores * sizeof(float)) == 0, "tensor floor: wrong scores");
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
  check(std::memcmp(d.out.data(), d.expected.data(), n * kScores * sizeof(float)) == 0, "tensor (C ABI): wrong scores");
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
  check(std::memcmp(d.out.data(), d.expected.data(), n * kScores * sizeof(float)) == 0, "numpy list: wrong scores");
  return ns;
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
  check(std::memcmp(d.out.data(), d.expected.data(), n * kScores * sizeof(float)) == 0, "tensor (C++): wrong scores");
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

void row_tensor(const Config& cfg, PyManager& mgr, std::vector<Row>& rows) {
  const bool all = cfg.rows.empty() || cfg.rows.count("tensor") > 0;
  auto wanted = [&](const char* id) { return all || cfg.rows.count(id) > 0; };
  const std::size_t n = cfg.tensor_items;
  const std::size_t n1 = cfg.tensor_b1_items;
  TensorData d(std::max(n, n1));
  GilHeld score_holder;
  const py::object& score = tensor_score(score_holder)->obj;
  auto floor256 = [&] { return tensor_floor_ns(d, n, 256, score); };
  auto floor1 = [&] { return tensor_floor_ns(d, n1, 1, score); };

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
  if (wanted("numpy_list_b256")) {
    HandlerOptions o;
    o.batch_size = 256;
    list256.emplace(mgr.loadPythonModule(kTensorModule, "score_list", o));
  }
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
    Row& r = s.row;
    r.id = s.id;
    r.workload = s.workload;
    r.unit = "ns/item";
    r.ours = median(r.ours_samples);
    r.baseline_name = s.batch1 ? "floor, batch 1 (GIL held, numpy)" : "floor (GIL held, numpy)";
    r.baseline = median(r.baseline_samples);
    r.ratio = median(r.ratio_samples);
    r.ratio_label = "x floor";
    r.target = s.target;
    if (s.target != "-") r.pass = r.ratio <= 3.0;
    r.note = s.note + (s.after ? s.after() : "") + "; process CPU " + fmt(median(cpu_ours[k]), "ns/item") +
             " (floor " + fmt(median(cpu_floor[k]), "ns/item") +
             "); ratio = median of per-repetition ratios (floor run right before)";
    rows.push_back(r);
  }
}

// How much CPU this process can get right now: throughput of two threads of C++ work
// relative to one (2.0 on two free cores; ~1.0 when other processes take a core).
double parallel_speedup() {
  const std::uint64_t iters = 20'000'000;
  const auto t0 = Clock::now();
  volatile std::uint64_t sink0 = cpp_work(iters), sink1 = 0, sink2 = 0;
  const auto t1 = Clock::now();
  std::thread a([&] { sink1 = cpp_work(iters); });
  std::thread b([&] { sink2 = cpp_work(iters + 1); });
  a.join();
  b.join();
  const auto t2 = Clock::now();
  (void)sink0;
  (void)sink1;
  (void)sink2;
  return 2.0 * elapsed_ns(t0, t1) / elapsed_ns(t1, t2);
}

std::string parallelism_text() {
  std::vector<double> v;
  for (int i = 0; i < 3; ++i) v.push_back(parallel_speedup());
  return "2 threads of C++ work run " + fmt(median(v), "") + "x as fast as 1 (2.0 = two free cores)";
}

Environment describe(const Config& cfg, PyManager& mgr) {
  Environment env;
  env.add("pyscheduler", std::string(pyscheduler::ext::version()) + " (source " PYSCHED_BENCH_REVISION " at configure time)");
  {
    py::gil_scoped_acquire gil;
    std::string v = Py_GetVersion();
    env.add("python", v.substr(0, v.find(' ')));
  }
  env.add("pybind11", std::to_string(PYBIND11_VERSION_MAJOR) + "." + std::to_string(PYBIND11_VERSION_MINOR) + "." +
                          std::to_string(PYBIND11_VERSION_PATCH));
#ifdef NDEBUG
  env.add("build", std::string(PYSCHED_BENCH_BUILD_TYPE) + " (NDEBUG)");
#else
  env.add("build", std::string(PYSCHED_BENCH_BUILD_TYPE) + " (asserts ON: not a Release build!)");
#endif
  env.add("cpu", cpu_model() + ", " + std::to_string(std::thread::hardware_concurrency()) + " online");
  env.add("pool workers", std::to_string(mgr.worker_threads()));
  env.add("mode", std::string(cfg.quick ? "--quick" : "full") + ", " + std::to_string(cfg.reps) + " repetitions");
  env.add("load avg (start)", read_first_line("/proc/loadavg"));
  env.add("parallelism (start)", parallelism_text());
  return env;
}

// CPU seconds used so far by each live thread of this process, with its name.
std::vector<std::pair<std::string, double>> thread_cpu_seconds() {
  std::vector<std::pair<std::string, double>> out;
  const double tick = static_cast<double>(sysconf(_SC_CLK_TCK));
  DIR* dir = opendir("/proc/self/task");
  if (!dir) return out;
  while (dirent* e = readdir(dir)) {
    if (e->d_name[0] == '.') continue;
    const std::string base = std::string("/proc/self/task/") + e->d_name;
    std::string stat = read_first_line((base + "/stat").c_str());
    // Fields after the ")" that closes the name: state is field 3, utime 14, stime 15.
    const auto close = stat.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream rest(stat.substr(close + 2));
    std::string field;
    double utime = 0, stime = 0;
    for (int i = 3; i <= 15 && rest >> field; ++i) {
      if (i == 14) utime = std::atof(field.c_str());
      if (i == 15) stime = std::atof(field.c_str());
    }
    out.emplace_back(read_first_line((base + "/comm").c_str()), (utime + stime) / tick);
  }
  closedir(dir);
  return out;
}

// --profile: only our side of one path, repeated, with one timing line per repetition.
int profile(const Config& cfg, PyManager& mgr) {
  const std::string& p = cfg.profile;
  std::function<double()> once;
  std::string unit = "ns/item";
  std::optional<Handler> h;
  Staging st;
  std::optional<CTensorHandler> th;
  std::optional<TensorData> td;
  GilHeld score;
  if (p == "tensor_b256" || p == "tensor_b256_fill" || p == "tensor_floor") {
    td.emplace(cfg.tensor_items);
    tensor_score(score);
    th.emplace(mgr, "score", 256);
    if (p == "tensor_floor") {
      once = [&] { return tensor_floor_ns(*td, cfg.tensor_items, 256, score.obj); };
    } else {
      once = [&, fill = p == "tensor_b256_fill"] { return tensor_cabi_ns(*th, *td, cfg.tensor_items, fill); };
    }
  } else if (p == "tensor_b1" || p == "tensor_floor_b1") {
    td.emplace(cfg.tensor_b1_items);
    tensor_score(score);
    th.emplace(mgr, "score", 1);
    if (p == "tensor_floor_b1") {
      once = [&] { return tensor_floor_ns(*td, cfg.tensor_b1_items, 1, score.obj); };
    } else {
      once = [&] { return tensor_cabi_ns(*th, *td, cfg.tensor_b1_items, false); };
    }
  } else if (p == "numpy_list_b256") {
    td.emplace(cfg.tensor_items);
    HandlerOptions o;
    o.batch_size = 256;
    h = mgr.loadPythonModule(kTensorModule, "score_list", o);
    once = [&] { return numpy_list_ns(*h, *td, cfg.tensor_items); };
  } else if (p == "queued_b256" || p == "queued_b256_f" || p == "queued_b256_c" || p == "queued_b256_l") {
    h = load(mgr, "identity", 256);
    if (p == "queued_b256") {
      once = [&] { return queued_identity_ns(*h, cfg.queued_items); };
    } else if (p == "queued_b256_f") {
      once = [&] { return queued_identity_future_ns(*h, cfg.queued_items); };
    } else if (p == "queued_b256_l") {
      once = [&] { return queued_identity_light_ns(*h, cfg.queued_items); };
    } else {
      once = [&] { return queued_identity_cabi_ns(*h, cfg.queued_items); };
    }
  } else if (p == "queued_b1" || p == "queued_b1_f") {
    h = load(mgr, "identity", 1);
    if (p == "queued_b1") {
      once = [&] { return queued_identity_ns(*h, cfg.batch1_items); };
    } else {
      once = [&] { return queued_identity_future_ns(*h, cfg.batch1_items); };
    }
  } else if (p == "latency") {
    h = load(mgr, "identity", 1);
    unit = "us (p50)";
    once = [&] {
      std::vector<double> lat;
      for (std::size_t i = 0; i < cfg.latency_samples; ++i) {
        const auto t0 = Clock::now();
        h->queue_invoke(kCommitInt, kCastLong, static_cast<long>(i)).get();
        lat.push_back(elapsed_ns(t0, Clock::now()) / 1e3);
        sleep_us(300);
      }
      return percentile(lat, 50);
    };
  } else if (p == "sync") {
    h = load(mgr, "add", 1);
    unit = "ns/call";
    once = [&] {
      double ns = 0;
      std::thread t([&] {
        long sum = 0;
        const auto t0 = Clock::now();
        for (std::size_t i = 0; i < cfg.sync_calls; ++i) sum += h->invoke<int>(3000, -1234);
        ns = elapsed_ns(t0, Clock::now()) / static_cast<double>(cfg.sync_calls);
        check(sum == 1766L * static_cast<long>(cfg.sync_calls), "sync values");
      });
      t.join();
      return ns;
    };
  } else if (p == "staged" || p == "in_commit") {
    st.calibrate();
    h = load(mgr, "spin", Staging::kBatch, Staging::kPrefetch);
    unit = "us/item";
    if (p == "staged") {
      once = [&] {
        double ov = NAN;
        const double us = st.staged(*h, cfg.staging_items, &ov);
        std::printf("  stage time overlapping Python: %.0f%%\n", 100.0 * ov);
        return us;
      };
    } else {
      once = [&] { return st.in_commit(*h, cfg.staging_items); };
    }
  } else {
    std::fprintf(stderr, "unknown --profile path: %s\n", p.c_str());
    return 1;
  }
  std::vector<double> samples;
  for (int i = 0; i < cfg.reps; ++i) {
    samples.push_back(once());
    std::printf("%s rep %d: %.1f %s\n", p.c_str(), i, samples.back(), unit.c_str());
  }
  std::printf("%s median: %.1f %s\n", p.c_str(), median(samples), unit.c_str());
  std::printf("CPU per thread since start (s):");
  for (const auto& [name, sec] : thread_cpu_seconds()) std::printf("  %s %.2f", name.c_str(), sec);
  std::printf("\n");
  return 0;
}

int run(const Config& cfg) {
  if (cfg.rss_child) return rss_child(cfg);
  PyManager mgr(manager_options(cfg));
  mgr.add_path(cfg.python_dir);
  load_py_funcs();
  if (!cfg.profile.empty()) {
    const int rc = profile(cfg, mgr);
    free_py_funcs();
    return rc;
  }
  Environment env = describe(cfg, mgr);
  std::vector<Row> rows;
  const auto t0 = Clock::now();
  auto step = [&](const char* id, const std::function<void()>& f) {
    if (!cfg.want(id)) return;
    if (!cfg.json) {
      std::fprintf(stderr, "[bench] %s...\n", id);
    }
    f();
  };
  step("queued_b256", [&] { row_queued_b256(cfg, mgr, rows); });
  step("producers4", [&] { row_producers4(cfg, mgr, rows); });
  step("queued_b1", [&] { row_queued_b1(cfg, mgr, rows); });
  step("latency", [&] { row_latency(cfg, mgr, rows); });
  step("sync", [&] { row_sync(cfg, mgr, rows); });
  step("sleep2", [&] { row_sleep2(cfg, mgr, rows); });
  step("staging", [&] { row_staging(cfg, mgr, rows); });
  step("batch_delay", [&] { row_batch_delay(cfg, mgr, rows); });
  {
    bool any_tensor = cfg.rows.empty() || cfg.rows.count("tensor") > 0;
    for (const auto& id : tensor_row_ids()) any_tensor = any_tensor || cfg.rows.count(id) > 0;
    if (any_tensor) {
      if (!cfg.json) std::fprintf(stderr, "[bench] tensor...\n");
      row_tensor(cfg, mgr, rows);
    }
  }
  step("rss", [&] { row_rss(cfg, rows); });
  step("idle8", [&] { row_idle8(cfg, mgr, rows); });  // last: the process is otherwise idle
  env.add("load avg (end)", read_first_line("/proc/loadavg"));
  env.add("parallelism (end)", parallelism_text());
  env.add("duration", fmt(elapsed_ns(t0, Clock::now()) / 1e9, "s"));
  free_py_funcs();
  if (cfg.json) {
    print_json(stdout, env, rows);
  } else {
    print_plain(env, rows);
  }
  if (!cfg.json_out.empty()) {
    std::FILE* f = std::fopen(cfg.json_out.c_str(), "w");
    if (!f) throw std::runtime_error("cannot write " + cfg.json_out + ": " + std::strerror(errno));
    print_json(f, env, rows);
    std::fclose(f);
  }
  std::fflush(stdout);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const Config cfg = parse_args(argc, argv);
  try {
    return run(cfg);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pyscheduler_bench: error: %s\n", e.what());
    return 2;
  }
}
