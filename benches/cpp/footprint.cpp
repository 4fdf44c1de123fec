// What the process costs besides time: the peak RSS of 120k queued items, measured in a
// fresh process of this program (--rss-child) through each future kind (rss rss_free
// rss_f rss_c), and the CPU that 8 idle handlers use (idle8).
#include "bench.hpp"

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <future>

extern char** environ;

namespace pysched_bench {
namespace {

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

}  // namespace

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

void rows_rss(const Config& cfg, PyManager&, std::vector<Row>& rows) {
  // One row per --rss-child mode, in the order of the table; `note` takes the bytes per
  // item above the baseline.
  const struct {
    const char* mode;
    const char* id;
    const char* workload;
    const char* note;
  } modes[] = {
      {"held", "rss", "peak RSS, 120k queued items, batch 256",
       "VmHWM of a fresh process (--rss-child held) that queues 120k items with queue_invoke while "
       "holding the GIL (all queued at once), then waits: %.0f bytes/item above the baseline"},
      {"free", "rss_free", "  same, producer without the GIL",
       "the worker executes while the producer queues: %.0f bytes/item"},
      {"future", "rss_f", "  same, all queued, queue_invoke_future",
       "as the first, one pyscheduler::ext::Future per item: %.0f bytes/item"},
      {"cabi", "rss_c", "  same, all queued, C ABI (no std::future)", "the core's own share: %.0f bytes/item"},
  };
  constexpr std::size_t kModes = std::size(modes);
  std::vector<double> base_mb[kModes], peak_mb[kModes];
  for (int i = 0; i < cfg.reps; ++i) {
    for (std::size_t m = 0; m < kModes; ++m) {
      auto [base, peak] = spawn_rss_child(cfg, modes[m].mode);
      base_mb[m].push_back(static_cast<double>(base) / 1024.0);
      peak_mb[m].push_back(static_cast<double>(peak) / 1024.0);
    }
  }
  for (std::size_t m = 0; m < kModes; ++m) {
    Row r = summarized({.id = modes[m].id,
                        .workload = modes[m].workload,
                        .unit = "MB",
                        .ours_samples = peak_mb[m],
                        .baseline_name = "RSS before queueing",
                        .baseline_samples = base_mb[m],
                        .target = "-"},
                       Ratio::kNone);
    char note[320];
    std::snprintf(note, sizeof note, modes[m].note,
                  (r.ours - r.baseline) * 1024.0 * 1024.0 / static_cast<double>(cfg.rss_items));
    r.note = note;
    if (m == 0) {  // the target is on the first
      r.target = "<= 35 MB";
      r.pass = r.ours <= 35.0;
    }
    rows.push_back(r);
  }
}

void rows_idle8(const Config& cfg, PyManager& mgr, std::vector<Row>& rows) {
  std::vector<Handler> handlers;
  for (int i = 0; i < 8; ++i) handlers.push_back(load(mgr, "identity", 1 + static_cast<std::size_t>(i)));
  for (auto& h : handlers) check(h.queue_invoke(kCommitInt, kCastLong, 7L).get() == 7, "idle warm-up");
  sleep_us(100'000);  // let everything settle
  std::vector<double> cpu_ms;
  for (int i = 0; i < cfg.idle_reps; ++i) {
    const double c0 = cpu_seconds_self();
    const auto t0 = Clock::now();
    sleep_us(cfg.idle_window_s * 1e6);
    const double c1 = cpu_seconds_self();
    const double wall = elapsed_ns(t0, Clock::now()) / 1e9;
    // Scale to exactly the window, in ms.
    cpu_ms.push_back((c1 - c0) * 1e3 * cfg.idle_window_s / wall);
  }
  Row r = summarized({.id = "idle8",
                      .workload = "8 idle handlers, CPU per 2 s",
                      .unit = "ms",
                      .ours_samples = cpu_ms,
                      .baseline_name = "-",
                      .target = "< 2 ms",
                      .note = "getrusage(RUSAGE_SELF) over a 2 s window, all threads, process otherwise idle; " +
                              std::to_string(mgr.worker_threads()) + " pool workers + timer"},
                     Ratio::kNone);
  r.pass = r.ours < 2.0;
  rows.push_back(r);
}

}  // namespace pysched_bench
