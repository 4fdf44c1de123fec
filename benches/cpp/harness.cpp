// The measuring helpers every row family shares (medians, /proc readers, the Python
// callables of the baselines, handler loading) and the --profile runner. Calls only the
// library and pybind11.
#include "bench.hpp"

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

namespace pysched_bench {

// ---- rows -----------------------------------------------------------------------------

Row summarized(Row r, Ratio how) {
  r.ours = median(r.ours_samples);
  r.baseline = median(r.baseline_samples);
  switch (how) {
    case Ratio::kNone:
      break;
    case Ratio::kOursOverBaseline:
      r.ratio = r.ours / r.baseline;
      break;
    case Ratio::kBaselineOverOurs:
      r.ratio = r.baseline / r.ours;
      break;
    case Ratio::kMedianOfPaired:
      r.ratio = median(r.ratio_samples);
      break;
  }
  return r;
}

Row vs_plain_pybind11(const Row& row, std::string id, std::string workload, std::string baseline_name,
                      std::vector<double> baseline_samples, std::string note) {
  return summarized({.id = std::move(id),
                     .workload = std::move(workload),
                     .unit = row.unit,
                     .ours_samples = row.ours_samples,
                     .baseline_name = std::move(baseline_name),
                     .baseline_samples = std::move(baseline_samples),
                     .ratio_label = "x faster",
                     .target = "-",
                     .note = std::move(note)},
                    Ratio::kBaselineOverOurs);
}

// ---- statistics and /proc -------------------------------------------------------------

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

// CPU seconds used so far by each live thread of this process, with its name.
static std::vector<std::pair<std::string, double>> thread_cpu_seconds() {
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

// ---- Python and handlers --------------------------------------------------------------

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

Handler load(PyManager& mgr, const char* entry, std::size_t batch, std::size_t prefetch,
             std::chrono::microseconds delay) {
  HandlerOptions o;
  o.batch_size = batch;
  o.prefetch_depth = prefetch;
  o.max_batch_delay = delay;
  return mgr.loadPythonModule("pysched_bench", entry, o);
}

// ---- --profile ------------------------------------------------------------------------

int run_profile(const Config& cfg, const char* unit, const std::function<double()>& once) {
  const std::string& p = cfg.profile;
  std::vector<double> samples;
  for (int i = 0; i < cfg.reps; ++i) {
    samples.push_back(once());
    std::printf("%s rep %d: %.1f %s\n", p.c_str(), i, samples.back(), unit);
  }
  std::printf("%s median: %.1f %s\n", p.c_str(), median(samples), unit);
  std::printf("CPU per thread since start (s):");
  for (const auto& [name, sec] : thread_cpu_seconds()) std::printf("  %s %.2f", name.c_str(), sec);
  std::printf("\n");
  return 0;
}

}  // namespace pysched_bench
