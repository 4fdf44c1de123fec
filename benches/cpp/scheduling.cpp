// What the scheduler overlaps and how it forms batches over time: two handlers whose
// items sleep with the GIL released against one (sleep2), C++ work staged off the GIL by
// queue_invoke_staged against the same work inside the commit (staging), and the batch
// size that a max batch delay reaches on a paced stream against none (batch_delay).
#include "bench.hpp"

#include <sys/prctl.h>

#include <algorithm>
#include <array>
#include <future>

namespace pysched_bench {
namespace {

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
    if (overlap) *overlap = stage_overlap(ts);
    return us;
  }

  // The share of the stages' time ([0], [1]) inside the union of the [commit, callback]
  // intervals ([2], [3]).
  static double stage_overlap(const std::vector<std::array<std::int64_t, 4>>& ts) {
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
    return total > 0 ? inside / total : NAN;
  }
};

}  // namespace

void rows_sleep2(const Config& cfg, PyManager& mgr, std::vector<Row>& rows) {
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
  std::vector<double> speedup, serial_ms;
  for (int i = 0; i < cfg.reps; ++i) {
    const double serial = run(false);
    const double parallel = run(true);
    serial_ms.push_back(serial);
    speedup.push_back(serial / parallel);
  }
  Row r = summarized({.id = "sleep2",
                      .workload = "2 handlers sleeping 10 ms/item (GIL released)",
                      .unit = "x",
                      .baseline_unit = "ms",
                      .ours_samples = speedup,
                      .baseline_name = "serial: one handler, same items",
                      .baseline_samples = serial_ms,
                      .ratio_label = "x serial",
                      .target = ">= 1.9x serial",
                      .note = "ours = serial time / time with two handlers (" + std::to_string(2 * n) +
                              " items of 10 ms either way)"},
                     Ratio::kNone);
  r.ratio = r.ours;  // ours is already the ratio to serial
  r.pass = r.ours >= 1.9;
  rows.push_back(r);
}

void rows_staging(const Config& cfg, PyManager& mgr, std::vector<Row>& rows) {
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
  std::vector<double> in_commit_us, staged_us;
  for (int i = 0; i < cfg.reps; ++i) {
    in_commit_us.push_back(in_commit());
    staged_us.push_back(staged());
  }
  char note[400];
  std::snprintf(note, sizeof note,
                "(b) queue_invoke_staged, batch %zu, prefetch %zu, %zu items/rep; sum of the work = %.0f us/item, "
                "ideal max(commit, python) = %.0f us/item (needs 2 free cores); %.0f%% of the stage time ran "
                "while Python executed (median)",
                kBatch, kPrefetch, n, 2 * kCostUs, kCostUs, 100.0 * median(overlaps));
  Row r = summarized({.id = "staging",
                      .workload = "GIL-free staging (100 us C++ + 100 us Python/item)",
                      .unit = "us/item",
                      .ours_samples = staged_us,
                      .baseline_name = "(a) the work inside the GIL commit",
                      .baseline_samples = in_commit_us,
                      .ratio_label = "x faster",
                      .target = ">= 1.5x (ideal 2)",
                      .note = note},
                     Ratio::kBaselineOverOurs);
  r.pass = r.ratio >= 1.5;
  rows.push_back(r);
}

void rows_batch_delay(const Config& cfg, PyManager& mgr, std::vector<Row>& rows) {
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
  std::vector<double> without, with;
  for (int i = 0; i < cfg.reps; ++i) {
    without.push_back(run(no_delay));
    with.push_back(run(with_delay));
  }
  const auto lw = with_delay.latency();
  const auto ln = no_delay.latency();
  char note[320];
  std::snprintf(note, sizeof note,
                "batch 32, %zu items/rep paced at 5k/s; expected ~%.0f items/batch with the delay; queue wait p50 "
                "%.0f us with the delay vs %.0f us without (histogram buckets)",
                n, 2000.0 / kIntervalUs + 1, static_cast<double>(lw.queue_wait_p50.count()) / 1e3,
                static_cast<double>(ln.queue_wait_p50.count()) / 1e3);
  Row r = summarized({.id = "batch_delay",
                      .workload = "max batch delay 2 ms, 1 item / 200 us",
                      .unit = "items/batch",
                      .ours_samples = with,
                      .baseline_name = "no delay (opportunistic)",
                      .baseline_samples = without,
                      .ratio_label = "x larger",
                      .target = ">= 4x larger",
                      .note = note},
                     Ratio::kOursOverBaseline);
  r.pass = r.ratio >= 4.0;
  rows.push_back(r);
}

std::optional<int> profile_staging(const Config& cfg, PyManager& mgr) {
  if (cfg.profile != "staged" && cfg.profile != "in_commit") return std::nullopt;
  Staging st;
  st.calibrate();
  Handler h = load(mgr, "spin", Staging::kBatch, Staging::kPrefetch);
  if (cfg.profile == "staged") {
    return run_profile(cfg, "us/item", [&] {
      double ov = NAN;
      const double us = st.staged(h, cfg.staging_items, &ov);
      std::printf("  stage time overlapping Python: %.0f%%\n", 100.0 * ov);
      return us;
    });
  }
  return run_profile(cfg, "us/item", [&] { return st.in_commit(h, cfg.staging_items); });
}

}  // namespace pysched_bench
