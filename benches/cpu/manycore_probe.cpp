// Where the time of a queued workload goes on a many-core host (issue 16), for hosts
// without perf: one workload, one pool size, per repetition the wall time per item, the
// producers' enqueue phase, the CPU time of the producer threads (their thread CPU clock)
// and of the pool's workers (/proc/self/task/*/schedstat), how many workers ran over 5%
// of the wall time, the workers' time slices and the process's voluntary context switches
// per batch, the mean batch (the core's batch counter) and the whole process's CPU
// (schedstat of the threads alive at the end: producer threads that exited are missing).
//
//   manycore_probe --mode std|ext|cabi --workers N [--batch B] [--producers P]
//                  [--items N] [--reps R] [--delay-us D] [--python-dir DIR]
//
// std: queue_invoke + std::future (the drop-in path); ext: queue_invoke_future; cabi:
// pysched_handler_queue with C callbacks, then drain. With --producers P > 1, P threads
// each queue items/P (std::future) and wait for their own futures, as the issue's
// "4 producers" row. --delay-us sets the handler's max_batch_delay (default 0). Built and
// run on the device by benches/cpu/probe_on_device.sh.
#include <pybind11/pybind11.h>

#include <pyscheduler.h>
#include <pyscheduler/pyscheduler.hpp>

#include <dirent.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <future>
#include <latch>
#include <map>
#include <string>
#include <thread>
#include <vector>

namespace py = pybind11;
using pyscheduler::PyManager;
using Handler = PyManager::InvokeHandler;
using Clock = std::chrono::steady_clock;

#ifndef PYSCHED_BENCH_PYTHON_DIR
#define PYSCHED_BENCH_PYTHON_DIR "benches/python"
#endif

namespace {

struct ThreadTime {
  std::string name;
  unsigned long long run_ns = 0, slices = 0;
};

// Every thread of the process: name and schedstat (run time ns, time slices).
std::map<int, ThreadTime> thread_times() {
  std::map<int, ThreadTime> out;
  DIR* d = opendir("/proc/self/task");
  if (!d) return out;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    const int tid = std::atoi(e->d_name);
    ThreadTime t;
    std::ifstream comm(std::string("/proc/self/task/") + e->d_name + "/comm");
    std::getline(comm, t.name);
    std::ifstream ss(std::string("/proc/self/task/") + e->d_name + "/schedstat");
    unsigned long long wait_ns = 0;
    ss >> t.run_ns >> wait_ns >> t.slices;
    out[tid] = t;
  }
  closedir(d);
  return out;
}

double elapsed_ns(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::nano>(b - a).count();
}

std::uint64_t batches(const Handler& h) {
  pysched_stats s{};
  pysched_handler_stats(h.native_handle(), &s, nullptr);
  return s.batches;
}

constexpr auto kCommitInt = [](long v) { return py::int_(v); };
constexpr auto kCastLong = [](py::object o) { return o.cast<long>(); };

std::atomic<long> g_sum{0};
bool g_check_sum = true;
PyObject* cabi_commit(void* user_data) {
  return PyLong_FromLong(static_cast<long>(reinterpret_cast<std::intptr_t>(user_data)));
}
int cabi_complete(void*, PyObject* result, const pysched_error*) {
  if (result) g_sum.fetch_add(PyLong_AsLong(result), std::memory_order_relaxed);
  return 0;
}

// Queues n items from this thread; returns when all resolved. *enq_ns: the enqueue phase.
double thread_cpu_ns() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) * 1e9 + double(ts.tv_nsec);
}

// Returns this thread's CPU time over the call (ns).
double one_producer(Handler& h, const std::string& mode, std::size_t n, long base, double* enq_ns) {
  const double cpu0 = thread_cpu_ns();
  const auto t0 = Clock::now();
  long sum = 0;
  if (mode == "std") {
    std::vector<std::future<long>> f;
    f.reserve(n);
    for (std::size_t i = 0; i < n; ++i) f.push_back(h.queue_invoke(kCommitInt, kCastLong, base + long(i)));
    *enq_ns = elapsed_ns(t0, Clock::now());
    for (auto& x : f) sum += x.get();
  } else if (mode == "ext") {
    std::vector<decltype(h.queue_invoke_future(kCommitInt, kCastLong, 0L))> f;
    f.reserve(n);
    for (std::size_t i = 0; i < n; ++i) f.push_back(h.queue_invoke_future(kCommitInt, kCastLong, base + long(i)));
    *enq_ns = elapsed_ns(t0, Clock::now());
    for (auto& x : f) sum += x.get();
  } else {
    if (g_check_sum) g_sum = 0;
    for (std::size_t i = 0; i < n; ++i) {
      pysched_item item{};
      item.user_data = reinterpret_cast<void*>(static_cast<std::intptr_t>(base + long(i)));
      item.commit = &cabi_commit;
      item.complete = &cabi_complete;
      pysched_handler_queue(h.native_handle(), &item, nullptr, nullptr);
    }
    *enq_ns = elapsed_ns(t0, Clock::now());
    pysched_handler_drain(h.native_handle(), nullptr);
    sum = g_sum.load();
  }
  const long nn = static_cast<long>(n);
  // The C ABI's callbacks add into one global sum: checked only with one producer.
  if ((mode != "cabi" || g_check_sum) && sum != nn * base + nn * (nn - 1) / 2) {
    std::fprintf(stderr, "wrong values\n");
    std::exit(3);
  }
  return thread_cpu_ns() - cpu0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string mode = "std", python_dir = PYSCHED_BENCH_PYTHON_DIR;
  unsigned workers = 0;
  std::size_t batch = 256, producers = 1, items = 200000;
  int reps = 5;
  long delay_us = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i], v = argv[i + 1];
    if (a == "--mode") mode = v;
    else if (a == "--workers") workers = unsigned(std::atoi(v.c_str()));
    else if (a == "--batch") batch = std::size_t(std::atol(v.c_str()));
    else if (a == "--producers") producers = std::size_t(std::atol(v.c_str()));
    else if (a == "--items") items = std::size_t(std::atol(v.c_str()));
    else if (a == "--reps") reps = std::atoi(v.c_str());
    else if (a == "--delay-us") delay_us = std::atol(v.c_str());
    else if (a == "--python-dir") python_dir = v;
    else {
      std::fprintf(stderr, "unknown argument %s\n", a.c_str());
      return 1;
    }
  }
  g_check_sum = producers == 1;
  pyscheduler::ext::ManagerOptions mo;
  mo.worker_threads = workers;
  PyManager mgr(mo);
  mgr.add_path(python_dir);
  pyscheduler::ext::HandlerOptions ho;
  ho.batch_size = batch;
  ho.max_batch_delay = std::chrono::microseconds(delay_us);
  Handler h = mgr.loadPythonModule("pysched_bench", "identity", ho);
  const std::size_t per = items / producers;
  auto once = [&](double* enq_ns) -> double {
    if (producers == 1) return one_producer(h, mode, per, 0, enq_ns);
    std::latch start(static_cast<std::ptrdiff_t>(producers));
    std::vector<std::thread> ts;
    std::vector<double> enq(producers), cpu(producers);
    for (std::size_t p = 0; p < producers; ++p) {
      ts.emplace_back([&, p] {
        start.arrive_and_wait();
        cpu[p] = one_producer(h, mode, per, long(p * per), &enq[p]);
      });
    }
    for (auto& t : ts) t.join();
    *enq_ns = *std::max_element(enq.begin(), enq.end());
    double total = 0;
    for (double c : cpu) total += c;
    return total;
  };
  double warm = 0;
  once(&warm);  // warm-up
  std::printf("mode %s workers %u (pool %u) batch %zu producers %zu items %zu delay %ld us\n", mode.c_str(), workers,
              mgr.worker_threads(), batch, producers, per * producers, delay_us);
  std::printf("%10s %10s %10s %10s %8s %10s %8s %10s %8s\n", "ns/item", "enq/item", "prod_cpu", "work_cpu", "ran>5%",
              "slices/b", "batch", "proc_cpu", "vcsw/b");
  const double n = double(per * producers);
  for (int r = 0; r < reps; ++r) {
    const auto b0 = batches(h);
    rusage ru0{}, ru1{};
    getrusage(RUSAGE_SELF, &ru0);
    const auto before = thread_times();
    const auto t0 = Clock::now();
    double enq = 0;
    const double prod = once(&enq);
    const double wall = elapsed_ns(t0, Clock::now());
    const auto after = thread_times();
    getrusage(RUSAGE_SELF, &ru1);
    const auto nb = double(batches(h) - b0);
    double work = 0, all = 0, worker_slices = 0;
    int ran = 0;
    for (const auto& [tid, t] : after) {
      const auto it = before.find(tid);
      const double run = double(t.run_ns - (it == before.end() ? 0 : it->second.run_ns));
      const double sl = double(t.slices - (it == before.end() ? 0 : it->second.slices));
      all += run;
      if (t.name.rfind("pysched-worker", 0) == 0) {
        work += run;
        worker_slices += sl;
        if (run > 0.05 * wall) ++ran;
      }
    }
    const double vcsw = double(ru1.ru_nvcsw - ru0.ru_nvcsw);
    std::printf("%10.1f %10.1f %10.1f %10.1f %8d %10.2f %8.1f %10.1f %8.2f\n", wall / n, enq / n, prod / n, work / n, ran,
                worker_slices / nb, n / nb, all / n, vcsw / nb);
    std::fflush(stdout);
  }
  return 0;
}
