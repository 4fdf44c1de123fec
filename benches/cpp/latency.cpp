// One request at a time: the round trip of one queued item to an idle worker against a
// C++ hand-off floor and a plain pybind11 worker (latency_p50 latency_p99 latency_pb), and
// the synchronous invoke<int> against a pybind11 call with the GIL already held and one
// taking it per call (sync sync_pb).
#include "bench.hpp"

#include <condition_variable>
#include <deque>
#include <future>
#include <mutex>

namespace pysched_bench {
namespace {

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

// `calls` synchronous invoke<int>(3000, -1234) from this thread; ns per call.
double sync_invoke_ns(Handler& h, std::size_t calls) {
  long sum = 0;
  const auto t0 = Clock::now();
  for (std::size_t i = 0; i < calls; ++i) sum += h.invoke<int>(3000, -1234);
  const double ns = elapsed_ns(t0, Clock::now()) / static_cast<double>(calls);
  check(sum == 1766L * static_cast<long>(calls), "invoke<int> returned wrong values");
  return ns;
}

}  // namespace

void rows_latency(const Config& cfg, PyManager& mgr, std::vector<Row>& rows) {
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
  std::vector<double> ours_p50, ours_p99, floor_p50, floor_p99, plain_p50;
  for (int rep = 0; rep < cfg.reps; ++rep) {
    std::vector<double> ours, base, pb;
    for (std::size_t i = 0; i < cfg.latency_samples; ++i) {
      ours.push_back(one(kOurs, static_cast<long>(i)));
      base.push_back(one(kFloor, static_cast<long>(i)));
      pb.push_back(one(kPlain, static_cast<long>(i)));
    }
    ours_p50.push_back(percentile(ours, 50));
    ours_p99.push_back(percentile(ours, 99));
    floor_p50.push_back(percentile(base, 50));
    floor_p99.push_back(percentile(base, 99));
    plain_p50.push_back(percentile(pb, 50));
  }
  const struct {
    const char* id;
    const char* pct;
    std::vector<double>& ours;
    std::vector<double>& floor;
    const char* target;
    double target_us;
    std::string note;
  } percentiles[] = {
      {"latency_p50", "p50", ours_p50, floor_p50, "<= 20 us", 20.0,
       "queue_invoke + future.get(), 300 us pause between requests, " + std::to_string(cfg.latency_samples) +
           " samples/rep; floor: a C++ thread blocked on a condition variable echoes the request through a "
           "std::promise (two thread wake-ups, no Python)"},
      {"latency_p99", "p99", ours_p99, floor_p99, "<= 100 us", 100.0, ""},
  };
  const std::size_t p50_at = rows.size();
  for (const auto& p : percentiles) {
    Row r = summarized({.id = p.id,
                        .workload = std::string("one request at a time, idle worker, ") + p.pct,
                        .unit = "us",
                        .ours_samples = p.ours,
                        .baseline_name = "hand-off floor, no Python",
                        .baseline_samples = p.floor,
                        .ratio_label = "x floor",
                        .target = p.target,
                        .note = p.note},
                       Ratio::kOursOverBaseline);
    r.pass = r.ours <= p.target_us;
    rows.push_back(r);
  }
  rows.push_back(vs_plain_pybind11(rows[p50_at], "latency_pb", "  vs plain pybind11 worker, p50",
                                   "same + gil_scoped_acquire + call", plain_p50));
}

void rows_sync(const Config& cfg, PyManager& mgr, std::vector<Row>& rows) {
  Handler h = load(mgr, "add", 1);
  const std::size_t n = cfg.sync_calls;
  // Each on a new thread: ours makes its first call (which creates the thread's
  // persistent state) before the timed ones.
  auto ours = [&](std::size_t calls) {
    return on_new_thread([&] {
      check(h.invoke<int>(1, 2) == 3, "invoke<int> returned wrong values");
      return sync_invoke_ns(h, calls);
    });
  };
  auto floor = [&](std::size_t calls) {
    return on_new_thread([&] {
      py::gil_scoped_acquire gil;
      long sum = 0;
      const auto t0 = Clock::now();
      for (std::size_t i = 0; i < calls; ++i) sum += g_py->add(3000, -1234).cast<int>();
      const double ns = elapsed_ns(t0, Clock::now()) / static_cast<double>(calls);
      check(sum == 1766L * static_cast<long>(calls), "floor add returned wrong values");
      return ns;
    });
  };
  auto plain = [&](std::size_t calls) {
    return on_new_thread([&] {
      long sum = 0;
      const auto t0 = Clock::now();
      for (std::size_t i = 0; i < calls; ++i) {
        py::gil_scoped_acquire gil;
        sum += g_py->add(3000, -1234).cast<int>();
      }
      const double ns = elapsed_ns(t0, Clock::now()) / static_cast<double>(calls);
      check(sum == 1766L * static_cast<long>(calls), "plain add returned wrong values");
      return ns;
    });
  };
  ours(n / 10);
  floor(n / 10);
  plain(n / 100);
  std::vector<double> ours_ns, floor_ns, plain_ns;
  for (int i = 0; i < cfg.reps; ++i) {
    floor_ns.push_back(floor(n));
    ours_ns.push_back(ours(n));
    plain_ns.push_back(plain(n / 10));
  }
  Row r = summarized({.id = "sync",
                      .workload = "synchronous invoke<int> from a C++ thread",
                      .unit = "ns/call",
                      .ours_samples = ours_ns,
                      .baseline_name = "floor: pybind11 call, GIL already held",
                      .baseline_samples = floor_ns,
                      .ratio_label = "x floor",
                      .target = "<= 2x floor",
                      .note = "add(3000, -1234) with int arguments converted by pybind11, result cast<int>"},
                     Ratio::kOursOverBaseline);
  r.pass = r.ratio <= 2.0;
  rows.push_back(r);
  rows.push_back(
      vs_plain_pybind11(r, "sync_pb", "  vs plain pybind11 per call", "gil_scoped_acquire + call per call", plain_ns));
}

std::optional<int> profile_latency(const Config& cfg, PyManager& mgr) {
  if (cfg.profile == "latency") {
    Handler h = load(mgr, "identity", 1);
    return run_profile(cfg, "us (p50)", [&] {
      std::vector<double> lat;
      for (std::size_t i = 0; i < cfg.latency_samples; ++i) {
        const auto t0 = Clock::now();
        h.queue_invoke(kCommitInt, kCastLong, static_cast<long>(i)).get();
        lat.push_back(elapsed_ns(t0, Clock::now()) / 1e3);
        sleep_us(300);
      }
      return percentile(lat, 50);
    });
  }
  if (cfg.profile == "sync") {
    Handler h = load(mgr, "add", 1);
    return run_profile(cfg, "ns/call", [&] { return on_new_thread([&] { return sync_invoke_ns(h, cfg.sync_calls); }); });
  }
  return std::nullopt;
}

}  // namespace pysched_bench
