// The shared harness of pyscheduler_bench (benches/README.md explains the table): the
// configuration, one table row, the measuring helpers every workload uses, and the entry
// points of the row families. The files:
//
//   main.cpp       the command line, the rows in the order they run, --profile dispatch
//   harness.cpp    medians, /proc readers, the baselines' Python callables, the --profile
//                  runner
//   table.cpp      the environment lines, the text table and the JSON
//   queued.cpp     queued_b256 (_f _c _l), producers4 (_pb), queued_b1 (_f)
//   latency.cpp    latency_p50 latency_p99 latency_pb, sync sync_pb
//   scheduling.cpp sleep2, staging, batch_delay
//   tensor.cpp     tensor_b256 (_cb _future _f _fill _fill_cb), tensor_b1, numpy_list_b256
//   footprint.cpp  rss (rss_free rss_f rss_c, and the --rss-child process), idle8
//
// Each family measures its rows and their in-run baselines in its own file and calls only
// this header's helpers. The helpers that run inside a timed loop (check, elapsed_ns,
// cpp_work) are inline here, so that splitting the program into files put no call where
// there was none.
#pragma once

#include <pybind11/pybind11.h>

#include <pyscheduler.h>
#include <pyscheduler/pyscheduler.hpp>

#include <time.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#ifndef PYSCHED_BENCH_PYTHON_DIR
#define PYSCHED_BENCH_PYTHON_DIR "benches/python"
#endif

// The rows are written with C++20 designated initializers, whose omitted members take
// their default member initializers by design; GCC 12's -Wextra still warns about each.
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

namespace pysched_bench {

namespace py = pybind11;
using pyscheduler::ext::HandlerOptions;
using pyscheduler::PyManager;
using Handler = PyManager::InvokeHandler;
using Clock = std::chrono::steady_clock;

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

// How a row's ratio is formed once its samples are in.
enum class Ratio {
  kNone,               // no ratio (or the row sets its own)
  kOursOverBaseline,   // median(ours) / median(baseline): a cost against a floor ("x floor")
  kBaselineOverOurs,   // median(baseline) / median(ours): a speed-up ("x faster")
  kMedianOfPaired,     // median(ratio_samples), the per-repetition ratios
};

// `r` with ours and baseline set to the medians of their samples and its ratio formed as
// `how` says; pass is left to the row.
Row summarized(Row r, Ratio how);

// The reference row that follows `row`: the same samples of ours against a plain pybind11
// embedding's (`baseline_samples`), as a speed-up ("x faster"), with no target.
Row vs_plain_pybind11(const Row& row, std::string id, std::string workload, std::string baseline_name,
                      std::vector<double> baseline_samples, std::string note = {});

// A number with 3 significant digits at most (no decimals from 100 up), then the unit;
// "-" for NaN.
std::string fmt(double v, const std::string& unit);

// The run's environment (versions, machine, load), printed above the table.
struct Environment {
  std::vector<std::pair<std::string, std::string>> fields;
  void add(std::string k, std::string v) { fields.emplace_back(std::move(k), std::move(v)); }
};
Environment describe(const Config& cfg, PyManager& mgr);
std::string parallelism_text();  // the parallelism probe, as the environment prints it

void print_plain(const Environment& env, const std::vector<Row>& rows);
void print_json(std::FILE* out, const Environment& env, const std::vector<Row>& rows);

// ---- measuring helpers ----------------------------------------------------------------

inline void check(bool ok, const char* what) {
  if (!ok) throw std::runtime_error(std::string("benchmark self-check failed: ") + what);
}

inline double elapsed_ns(Clock::time_point t0, Clock::time_point t1) {
  return static_cast<double>(std::chrono::duration_cast<std::chrono::nanoseconds>(t1 - t0).count());
}

inline void sleep_us(double us) {
  timespec ts{};
  ts.tv_sec = static_cast<time_t>(us / 1e6);
  ts.tv_nsec = static_cast<long>(std::fmod(us, 1e6) * 1e3);
  nanosleep(&ts, nullptr);
}

// CPU-bound C++ work that the compiler cannot remove: `iters` xorshift steps.
inline std::uint64_t cpp_work(std::uint64_t iters) {
  std::uint64_t x = 0x9E3779B97F4A7C15ull ^ iters;
  for (std::uint64_t i = 0; i < iters; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    asm volatile("" : "+r"(x));
  }
  return x;
}

double median(std::vector<double> v);
double percentile(std::vector<double> v, double p);
double cpu_seconds_self();                                // user + system, all threads
long proc_status_kb(const char* field);                   // a kB field of /proc/self/status
std::vector<std::pair<long, long long>> worker_cpu_ns();  // (tid, CPU ns) of each pool worker
std::string read_first_line(const char* path);

// Runs `measure` on a thread of its own (a fresh thread state, as a new caller would be)
// and returns what it returned.
template <typename F>
double on_new_thread(F&& measure) {
  double result = 0;
  std::thread t([&] { result = measure(); });
  t.join();
  return result;
}

// ---- Python and handlers --------------------------------------------------------------

// Python callables for the baselines (benches/python/pysched_bench.py); created and
// destroyed with the GIL held, by load_py_funcs and free_py_funcs. Hidden, as pybind11's
// own types are (GCC warns about a visible type with members of a hidden one).
struct __attribute__((visibility("hidden"))) PyFuncs {
  py::object identity, add, spin;
};
extern PyFuncs* g_py;
void load_py_funcs();
void free_py_funcs();

pyscheduler::ext::ManagerOptions manager_options(const Config& cfg);

// A handler of pysched_bench.py's function `entry`.
Handler load(PyManager& mgr, const char* entry, std::size_t batch, std::size_t prefetch = 1,
             std::chrono::microseconds delay = std::chrono::microseconds(0));

// The commit and callback of the identity items.
inline constexpr auto kCommitInt = [](long v) { return py::int_(v); };
inline constexpr auto kCastLong = [](py::object o) { return o.cast<long>(); };

// The identity item of the C ABI (queued.cpp), also queued by the RSS child: the item's
// value is its user_data; completions add their result to g_cabi_sum.
extern std::atomic<long> g_cabi_sum;
PyObject* cabi_commit(void* user_data);
int cabi_complete(void*, PyObject* result, const pysched_error*);
double queued_identity_cabi_ns(Handler& h, std::size_t n);

// ---- --profile ------------------------------------------------------------------------

// Runs `once` (our side of one path, returning its figure in `unit`) cfg.reps times and
// prints one line per repetition, the median and each thread's CPU time. Exit status.
int run_profile(const Config& cfg, const char* unit, const std::function<double()>& once);

// ---- the row families -----------------------------------------------------------------

// Each measures its rows (subject and baseline interleaved) and appends them to `rows`.
using RowFamily = void (*)(const Config& cfg, PyManager& mgr, std::vector<Row>& rows);
void rows_queued_b256(const Config& cfg, PyManager& mgr, std::vector<Row>& rows);
void rows_producers4(const Config& cfg, PyManager& mgr, std::vector<Row>& rows);
void rows_queued_b1(const Config& cfg, PyManager& mgr, std::vector<Row>& rows);
void rows_latency(const Config& cfg, PyManager& mgr, std::vector<Row>& rows);
void rows_sync(const Config& cfg, PyManager& mgr, std::vector<Row>& rows);
void rows_sleep2(const Config& cfg, PyManager& mgr, std::vector<Row>& rows);
void rows_staging(const Config& cfg, PyManager& mgr, std::vector<Row>& rows);
void rows_batch_delay(const Config& cfg, PyManager& mgr, std::vector<Row>& rows);
void rows_tensor(const Config& cfg, PyManager& mgr, std::vector<Row>& rows);
void rows_rss(const Config& cfg, PyManager& mgr, std::vector<Row>& rows);
void rows_idle8(const Config& cfg, PyManager& mgr, std::vector<Row>& rows);

// Whether --rows asks for any tensor row ("tensor" or one of their ids).
bool tensor_rows_wanted(const Config& cfg);

// --rss-child MODE: the clean process of the RSS rows (footprint.cpp). Exit status.
int rss_child(const Config& cfg);

// Each runs cfg.profile if it is one of the family's --profile paths and returns the exit
// status; nullopt when the path is not the family's.
using ProfileFamily = std::optional<int> (*)(const Config& cfg, PyManager& mgr);
std::optional<int> profile_queued(const Config& cfg, PyManager& mgr);
std::optional<int> profile_latency(const Config& cfg, PyManager& mgr);
std::optional<int> profile_staging(const Config& cfg, PyManager& mgr);
std::optional<int> profile_tensor(const Config& cfg, PyManager& mgr);

}  // namespace pysched_bench
