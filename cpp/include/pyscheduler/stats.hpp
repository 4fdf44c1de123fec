// Observability beyond the original's QueueStats: counters of every outcome and
// latency/batch-size quantiles (InvokeHandler::stats(), ::latency(), ::metrics_text()).
#ifndef PYSCHEDULER_STATS_HPP
#define PYSCHEDULER_STATS_HPP

#include <pyscheduler.h>

#include <chrono>
#include <cstddef>
#include <cstdint>

namespace pyscheduler {
namespace ext {

/// A snapshot of one handler's queues, counters and moving averages.
struct HandlerStats {
  std::size_t commit_queue_size = 0;   // items waiting to be committed
  std::size_t execute_queue_size = 0;  // items taken into a batch, not yet run
  std::int64_t total_enqueued = 0;     // items ever queued (accepted or not)
  std::uint64_t completed = 0;         // Python call and callback succeeded
  std::uint64_t failed = 0;            // failed in commit, Python, result check or callback
  std::uint64_t cancelled = 0;         // cancelled before they started
  std::uint64_t expired = 0;           // deadline passed before they started
  std::uint64_t rejected = 0;          // refused by a full queue or by shutdown
  std::uint64_t batches = 0;           // Python calls made
  double commit_batch_size_ema = 0.0;
  double execute_batch_size_ema = 0.0;
  double commit_ns_per_batch_ema = 0.0;
  double execute_ns_per_batch_ema = 0.0;
};

/// p50/p99 of one handler's batch sizes and latencies (histogram bucket upper bounds).
struct LatencySummary {
  std::uint64_t batch_size_p50 = 0;
  std::uint64_t batch_size_p99 = 0;
  std::chrono::nanoseconds queue_wait_p50{0};  // queued -> taken into a batch under the GIL
  std::chrono::nanoseconds queue_wait_p99{0};
  std::chrono::nanoseconds commit_p50{0};  // commit phase of one batch
  std::chrono::nanoseconds commit_p99{0};
  std::chrono::nanoseconds execute_p50{0};  // one Python call
  std::chrono::nanoseconds execute_p99{0};
  std::chrono::nanoseconds gil_wait_p50{0};  // a worker waiting for the GIL
  std::chrono::nanoseconds gil_wait_p99{0};
};

}  // namespace ext

namespace pysched_detail {

inline ext::HandlerStats from_c(const pysched_stats& s) noexcept {
  ext::HandlerStats out;
  out.commit_queue_size = static_cast<std::size_t>(s.commit_queue_size);
  out.execute_queue_size = static_cast<std::size_t>(s.execute_queue_size);
  out.total_enqueued = static_cast<std::int64_t>(s.total_enqueued);
  out.completed = s.completed;
  out.failed = s.failed;
  out.cancelled = s.cancelled;
  out.expired = s.expired;
  out.rejected = s.rejected;
  out.batches = s.batches;
  out.commit_batch_size_ema = s.commit_batch_size_ema;
  out.execute_batch_size_ema = s.execute_batch_size_ema;
  out.commit_ns_per_batch_ema = s.commit_ns_per_batch_ema;
  out.execute_ns_per_batch_ema = s.execute_ns_per_batch_ema;
  return out;
}

inline ext::LatencySummary from_c(const pysched_latency& l) noexcept {
  using ns = std::chrono::nanoseconds;
  auto d = [](std::uint64_t v) { return ns(static_cast<ns::rep>(v)); };
  ext::LatencySummary out;
  out.batch_size_p50 = l.batch_size_p50;
  out.batch_size_p99 = l.batch_size_p99;
  out.queue_wait_p50 = d(l.queue_wait_ns_p50);
  out.queue_wait_p99 = d(l.queue_wait_ns_p99);
  out.commit_p50 = d(l.commit_ns_p50);
  out.commit_p99 = d(l.commit_ns_p99);
  out.execute_p50 = d(l.execute_ns_p50);
  out.execute_p99 = d(l.execute_ns_p99);
  out.gil_wait_p50 = d(l.gil_wait_ns_p50);
  out.gil_wait_p99 = d(l.gil_wait_ns_p99);
  return out;
}

}  // namespace pysched_detail
}  // namespace pyscheduler

#endif  // PYSCHEDULER_STATS_HPP
