// The table's output: the run's environment (versions, machine, load and parallelism
// probes), the text table with its notes, and the same rows as JSON. The layout and the
// JSON keys are what benches/README.md and the saved runs in benches/results/ read.
#include "bench.hpp"

#include <algorithm>
#include <array>
#include <fstream>

#ifndef PYSCHED_BENCH_BUILD_TYPE
#define PYSCHED_BENCH_BUILD_TYPE "unknown"
#endif
#ifndef PYSCHED_BENCH_REVISION
#define PYSCHED_BENCH_REVISION "unknown"
#endif

namespace pysched_bench {
namespace {

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

const char* result_text(const Row& r) { return !r.pass.has_value() ? "ref" : (*r.pass ? "PASS" : "FAIL"); }

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

}  // namespace

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
  env.add("BLAS threads", std::string("OPENBLAS_NUM_THREADS=") + std::getenv("OPENBLAS_NUM_THREADS") +
                              " (set to 1 unless given: the floors are one thread)");
  env.add("mode", std::string(cfg.quick ? "--quick" : "full") + ", " + std::to_string(cfg.reps) + " repetitions");
  env.add("load avg (start)", read_first_line("/proc/loadavg"));
  env.add("parallelism (start)", parallelism_text());
  return env;
}

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
    results.push_back(result_text(r));
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
                result_text(r), json_escape(r.note).c_str());
  }
  std::fprintf(out, "\n  ]\n}\n");
}

}  // namespace pysched_bench
