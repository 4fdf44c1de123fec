// Extensions beyond the original API (API.md part C): handler options (batch delay,
// bounded queue with block/reject policy, name), per-item timeout, cancellation,
// GIL-free staging, drain, counters, latency quantiles, metrics text, error kinds.
#include "test_support.hpp"

#include <pyscheduler/pyscheduler.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace pysched_test;
using pyscheduler::ext::HandlerOptions;

class Extensions : public WithManager {};

HandlerOptions batch_of(size_t n) {
  HandlerOptions o;
  o.batch_size = n;
  return o;
}

TEST_F(Extensions, HandlerNameDefaultsToModuleDotEntry) {
  auto a = manager.loadPythonModule("pysched_testmod", "add");
  EXPECT_EQ(a.name(), "pysched_testmod.add");
  HandlerOptions o;
  o.name = "adder";
  auto b = manager.loadPythonModule("pysched_testmod", "add", o);
  EXPECT_EQ(b.name(), "adder");
}

TEST_F(Extensions, InvalidOptionsThrowInvalidArgument) {
  auto load = [&](HandlerOptions o) { return manager.loadPythonModule("pysched_testmod", "add", o); };
  HandlerOptions o;
  o.batch_size = 0;
  EXPECT_THROW(load(o), std::invalid_argument);
  o = {};
  o.batch_size = size_t{1} << 40;
  EXPECT_THROW(load(o), std::invalid_argument);
  o = {};
  o.prefetch_depth = 0;
  EXPECT_THROW(load(o), std::invalid_argument);
  o = {};
  o.max_batch_delay = std::chrono::microseconds(-1);
  EXPECT_THROW(load(o), std::invalid_argument);
  o = {};
  o.max_batch_delay = std::chrono::hours(1);
  EXPECT_THROW(load(o), std::invalid_argument);
  o = {};
  o.name = std::string("a\0b", 3);
  EXPECT_THROW(load(o), std::invalid_argument);
}

TEST_F(Extensions, MaxBatchDelayWaitsForAFullerBatch) {
  HandlerOptions o = batch_of(8);
  o.max_batch_delay = std::chrono::milliseconds(300);
  auto h = manager.loadPythonModule("pysched_cpp_testmod", "sizes", o);
  std::vector<std::future<int>> futures;
  for (int i = 0; i < 3; ++i) {
    futures.push_back(h.queue_invoke(commit_int, to_int, i));
  }
  for (auto& f : futures) {
    EXPECT_EQ(f.get(), 3) << "the three items waited for each other";
  }
  // A full batch goes at once, without waiting for the delay.
  const auto start = std::chrono::steady_clock::now();
  futures.clear();
  for (int i = 0; i < 8; ++i) {
    futures.push_back(h.queue_invoke(commit_int, to_int, i));
  }
  for (auto& f : futures) {
    EXPECT_EQ(f.get(), 8);
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(250));
}

TEST_F(Extensions, BoundedQueueRejectPolicy) {
  HandlerOptions o = batch_of(8);
  o.max_queue = 2;
  o.full_policy = pyscheduler::ext::FullPolicy::Reject;
  auto gated = manager.loadPythonModule("pysched_cpp_testmod", "gated", o);
  Gate gate(manager);
  auto occupant = gate.hold(gated);
  auto a = gated.queue_invoke(commit_int, to_tagged, 1);
  auto b = gated.queue_invoke(commit_int, to_tagged, 2);
  auto rejected = gated.queue_invoke(commit_int, to_tagged, 3);
  ASSERT_TRUE(is_ready(rejected)) << "a rejected item fails at once";
  try {
    rejected.get();
    FAIL() << "no exception";
  } catch (const pyscheduler::ext::QueueFullError& e) {
    EXPECT_EQ(e.kind(), pyscheduler::ext::ErrorKind::QueueFull);
  }
  gate.open();
  occupant.get();
  EXPECT_EQ(a.get(), Tagged(1, 2));
  EXPECT_EQ(b.get(), Tagged(2, 2));
  gated.drain();
  EXPECT_EQ(gated.stats().rejected, 1u);
  EXPECT_EQ(gated.get_queue_stats().total_enqueued, 4);
}

TEST_F(Extensions, BoundedQueueBlockPolicyGivesUpAfterTheBlockTimeout) {
  HandlerOptions o = batch_of(8);
  o.max_queue = 1;
  o.full_policy = pyscheduler::ext::FullPolicy::Block;
  o.block_timeout = std::chrono::milliseconds(50);
  auto gated = manager.loadPythonModule("pysched_cpp_testmod", "gated", o);
  Gate gate(manager);
  auto occupant = gate.hold(gated);
  auto a = gated.queue_invoke(commit_int, to_tagged, 1);
  const auto start = std::chrono::steady_clock::now();
  auto blocked = gated.queue_invoke(commit_int, to_tagged, 2);
  EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(45)) << "queue_invoke waited for room";
  EXPECT_THROW(blocked.get(), pyscheduler::ext::QueueFullError);
  gate.open();
  occupant.get();
  EXPECT_EQ(a.get(), Tagged(1, 1));
}

TEST_F(Extensions, BoundedQueueBlockPolicyWaitsForRoom) {
  HandlerOptions o = batch_of(1);
  o.max_queue = 1;  // FullPolicy::Block, no timeout: the default
  auto gated = manager.loadPythonModule("pysched_cpp_testmod", "gated", o);
  Gate gate(manager);
  auto occupant = gate.hold(gated);
  auto first = gated.queue_invoke(commit_int, to_tagged, 1);  // the queue is full now
  constexpr int kMore = 4;
  std::vector<std::future<Tagged>> more(kMore);
  std::atomic<int> returned{0};
  std::thread producer([&] {
    for (int i = 0; i < kMore; ++i) {
      more[i] = gated.queue_invoke(commit_int, to_tagged, 2 + i);
      returned.fetch_add(1);
    }
  });
  // Nothing leaves the queue while the gate is closed: the producer must stay inside
  // queue_invoke, and the queue must never hold more than its bound.
  size_t most_queued = 0;
  const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(200);
  while (std::chrono::steady_clock::now() < until) {
    most_queued = std::max(most_queued, gated.get_queue_stats().commit_queue_size);
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  EXPECT_EQ(returned.load(), 0) << "queue_invoke returned although the queue was full";
  EXPECT_LE(most_queued, 1u);
  gate.open();
  producer.join();
  EXPECT_EQ(returned.load(), kMore);
  EXPECT_EQ(occupant.get(), Tagged(1000, 1));
  EXPECT_EQ(first.get(), Tagged(1, 1));
  for (int i = 0; i < kMore; ++i) {
    EXPECT_EQ(more[i].get(), Tagged(2 + i, 1));
  }
}

TEST_F(Extensions, ConcurrencyRunsBatchesOfOneHandlerAtOnce) {
  HandlerOptions o = batch_of(1);
  o.concurrency = 4;
  auto h = manager.loadPythonModule("pysched_cpp_testmod", "sleep_ms_each", o);
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::future<int>> futures;
  for (int i = 0; i < 4; ++i) {
    futures.push_back(h.queue_invoke(commit_int, to_int, 200));  // sleeps without the GIL
  }
  for (auto& f : futures) {
    EXPECT_EQ(f.get(), 200);
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(700))
      << "four 200 ms batches overlapped";
  o.concurrency = 0;
  EXPECT_THROW(manager.loadPythonModule("pysched_cpp_testmod", "sleep_ms_each", o), std::invalid_argument);
}

TEST_F(Extensions, PerItemTimeoutFailsAnItemThatDidNotStartInTime) {
  auto gated = manager.loadPythonModule("pysched_cpp_testmod", "gated", batch_of(8));
  Gate gate(manager);
  auto occupant = gate.hold(gated);
  std::atomic<bool> committed{false};
  auto late = gated.queue_invoke_with_timeout(
      std::chrono::milliseconds(20),
      [&](int x) {
        committed = true;
        return pybind11::cast(x);
      },
      to_tagged, 5);
  auto in_time = gated.queue_invoke_with_timeout(std::chrono::seconds(60), commit_int, to_tagged, 6);
  ASSERT_EQ(late.wait_for(10s), std::future_status::ready) << "the deadline fires while the worker is busy";
  EXPECT_THROW(late.get(), pyscheduler::ext::TimedOutError);
  gate.open();
  occupant.get();
  EXPECT_EQ(in_time.get(), Tagged(6, 1));
  EXPECT_FALSE(committed.load());
  gated.drain();
  EXPECT_EQ(gated.stats().expired, 1u);
}

TEST_F(Extensions, CancelAnItemThatHasNotStarted) {
  auto gated = manager.loadPythonModule("pysched_cpp_testmod", "gated", batch_of(8));
  Gate gate(manager);
  auto occupant = gate.hold(gated);
  std::atomic<bool> committed{false};
  auto victim = gated.queue_invoke_cancellable(
      [&](int x) {
        committed = true;
        return pybind11::cast(x);
      },
      to_tagged, 5);
  auto survivor = gated.queue_invoke_cancellable(commit_int, to_tagged, 6);
  EXPECT_FALSE(victim.is_ready());
  EXPECT_TRUE(victim.cancel());
  EXPECT_FALSE(victim.cancel()) << "only once";
  ASSERT_TRUE(victim.is_ready()) << "cancel resolves the future at once";
  try {
    victim.get();
    FAIL() << "no exception";
  } catch (const pyscheduler::ext::CancelledError& e) {
    EXPECT_EQ(e.kind(), pyscheduler::ext::ErrorKind::Cancelled);
  }
  gate.open();
  occupant.get();
  EXPECT_EQ(survivor.get(), Tagged(6, 1));
  EXPECT_FALSE(survivor.cancel()) << "a finished item cannot be cancelled";
  EXPECT_FALSE(committed.load());
  gated.drain();
  EXPECT_EQ(gated.stats().cancelled, 1u);
}

TEST_F(Extensions, StagedRunsWithoutTheGilOnAWorkerThenCommitsWithIt) {
  auto h = manager.loadPythonModule("pysched_testmod", "identity", 4, 2);
  const auto caller = std::this_thread::get_id();
  std::atomic<int> stage_with_gil{0}, stage_on_caller{0}, commit_without_gil{0};
  std::vector<std::future<int>> futures;
  for (int i = 0; i < 50; ++i) {
    futures.push_back(h.queue_invoke_staged(
        [&](std::unique_ptr<int> p) {
          stage_with_gil += PyGILState_Check() != 0;
          stage_on_caller += std::this_thread::get_id() == caller;
          return std::make_unique<std::vector<int>>(static_cast<size_t>(*p), 1);  // move-only
        },
        [&](std::unique_ptr<std::vector<int>>&& v) {
          commit_without_gil += PyGILState_Check() == 0;
          return pybind11::cast(static_cast<int>(v->size()));
        },
        to_int, std::make_unique<int>(i)));
  }
  for (int i = 0; i < 50; ++i) {
    EXPECT_EQ(futures[i].get(), i);
  }
  EXPECT_EQ(stage_with_gil.load(), 0);
  EXPECT_EQ(stage_on_caller.load(), 0);
  EXPECT_EQ(commit_without_gil.load(), 0);
}

TEST_F(Extensions, StagedVoidStageAndAFailingStage) {
  auto h = manager.loadPythonModule("pysched_testmod", "identity", 4);
  std::atomic<int> staged{0};
  auto a = h.queue_invoke_staged([&](int) { ++staged; }, [] { return pybind11::cast(7); }, to_int, 1);
  auto b = h.queue_invoke_staged(
      [](int x) -> int {
        if (x == 2) {
          throw std::overflow_error("stage refuses 2");
        }
        return x;
      },
      [](int x) { return pybind11::cast(x); }, to_int, 2);
  EXPECT_EQ(a.get(), 7);
  EXPECT_EQ(staged.load(), 1);
  EXPECT_THROW(b.get(), std::overflow_error);
}

TEST_F(Extensions, DrainAndCounters) {
  auto h = manager.loadPythonModule("pysched_testmod", "identity", 8);
  for (int i = 0; i < 100; ++i) {
    h.queue_invoke(
        [](int x) {
          if (x % 10 == 0) {
            throw std::runtime_error("no");
          }
          return pybind11::cast(x);
        },
        [](pybind11::object&&) {}, i);
  }
  h.drain();
  const auto s = h.stats();
  EXPECT_EQ(s.commit_queue_size, 0u);
  EXPECT_EQ(s.execute_queue_size, 0u);
  EXPECT_EQ(s.total_enqueued, 100);
  EXPECT_EQ(s.completed, 90u);
  EXPECT_EQ(s.failed, 10u);
  EXPECT_GE(s.batches, 100u / 8);
  EXPECT_EQ(s.cancelled + s.expired + s.rejected, 0u);
}

TEST_F(Extensions, LatencyAndMetricsText) {
  auto h = manager.loadPythonModule("pysched_testmod", "double", 8);
  std::vector<std::future<int>> futures;
  for (int i = 0; i < 200; ++i) {
    futures.push_back(h.queue_invoke(commit_int, to_int, i));
  }
  for (auto& f : futures) {
    f.get();
  }
  h.drain();
  const auto l = h.latency();
  EXPECT_GE(l.batch_size_p50, 1u);
  EXPECT_GE(l.batch_size_p99, l.batch_size_p50);
  EXPECT_GT(l.execute_p99.count(), 0);
  EXPECT_GE(l.execute_p99, l.execute_p50);
  const std::string text = h.metrics_text();
  EXPECT_NE(text.find("pysched_testmod.double"), std::string::npos) << text;
  EXPECT_NE(text.find("# TYPE"), std::string::npos) << text;
  EXPECT_EQ(text.find('\0'), std::string::npos);
}

TEST_F(Extensions, ErrorKindsHaveNames) {
  EXPECT_STREQ(pyscheduler::ext::to_string(pyscheduler::ext::ErrorKind::QueueFull), "queue_full");
  EXPECT_STREQ(pyscheduler::ext::to_string(pyscheduler::ext::ErrorKind::PythonException), "python_exception");
  const pyscheduler::ext::Error e(pyscheduler::ext::ErrorKind::Internal, "x");
  EXPECT_EQ(e.kind(), pyscheduler::ext::ErrorKind::Internal);
}

}  // namespace
