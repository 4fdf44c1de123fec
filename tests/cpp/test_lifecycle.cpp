// Handler lifetime and stats, API.md part A: destruction and move-assignment drain;
// a moved-from handler is empty while its queued work completes through the new owner;
// QueueStats before, during and after work.
#include "test_support.hpp"

#include <pyscheduler/pyscheduler.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <optional>
#include <stdexcept>
#include <thread>
#include <type_traits>
#include <vector>

namespace {

using namespace pysched_test;
using Handler = pyscheduler::PyManager::InvokeHandler;

static_assert(std::is_nothrow_move_constructible_v<Handler>);
static_assert(std::is_nothrow_move_assignable_v<Handler>);
static_assert(!std::is_copy_constructible_v<Handler>);
static_assert(!std::is_copy_assignable_v<Handler>);
static_assert(!std::is_copy_constructible_v<pyscheduler::PyManager>);
static_assert(!std::is_move_constructible_v<pyscheduler::PyManager>);
static_assert(!std::is_move_assignable_v<pyscheduler::PyManager>);

class Lifecycle : public WithManager {
 protected:
  /// Queues `n` items of `ms` milliseconds each on a batch-1 sleeping handler.
  static std::vector<std::future<int>> queue_sleepers(Handler& h, int n, int ms) {
    std::vector<std::future<int>> futures;
    for (int i = 0; i < n; ++i) {
      futures.push_back(h.queue_invoke(commit_int, to_int, ms));
    }
    return futures;
  }
};

TEST_F(Lifecycle, DestructionDrains) {
  std::vector<std::future<int>> futures;
  std::atomic<int> callbacks{0};
  {
    auto h = manager.loadPythonModule("pysched_cpp_testmod", "sleep_ms_each");
    for (int i = 0; i < 6; ++i) {
      futures.push_back(h.queue_invoke(commit_int,
                                       [&callbacks](pybind11::object&& o) {
                                         ++callbacks;
                                         return o.cast<int>();
                                       },
                                       20));
    }
    EXPECT_FALSE(is_ready(futures.back())) << "too fast to observe the drain";
  }
  EXPECT_EQ(callbacks.load(), 6) << "every callback ran before the destructor returned";
  for (auto& f : futures) {
    ASSERT_TRUE(is_ready(f));
    EXPECT_EQ(f.get(), 20);
  }
}

TEST_F(Lifecycle, MoveAssignmentDrainsTheReplacedHandler) {
  auto h = manager.loadPythonModule("pysched_cpp_testmod", "sleep_ms_each");
  auto futures = queue_sleepers(h, 6, 20);
  EXPECT_FALSE(is_ready(futures.back()));
  h = manager.loadPythonModule("pysched_testmod", "double");
  for (auto& f : futures) {
    ASSERT_TRUE(is_ready(f)) << "move-assignment returned before the old queue drained";
    EXPECT_EQ(f.get(), 20);
  }
  EXPECT_EQ(h.queue_invoke(commit_int, to_int, 4).get(), 8);  // now bound to double
}

TEST_F(Lifecycle, MovedFromHandlerIsEmptyAndQueuedWorkCompletesThroughTheNewOwner) {
  auto h = manager.loadPythonModule("pysched_cpp_testmod", "sleep_ms_each");
  auto futures = queue_sleepers(h, 5, 10);
  Handler moved = std::move(h);
  EXPECT_FALSE(h.valid());  // NOLINT(bugprone-use-after-move): that is the point
  EXPECT_FALSE(static_cast<bool>(h));
  EXPECT_THROW(h.invoke<int>(1), std::logic_error);
  EXPECT_THROW(h.queue_invoke(commit_int, to_int, 1), std::logic_error);
  EXPECT_THROW(h.get_queue_stats(), std::logic_error);
  EXPECT_TRUE(moved.valid());
  for (auto& f : futures) {
    EXPECT_EQ(f.get(), 10);
  }
  EXPECT_EQ(moved.get_queue_stats().total_enqueued, 5);
  // The moved-from handler can be assigned again.
  h = std::move(moved);
  EXPECT_TRUE(h.valid());
  EXPECT_FALSE(moved.valid());  // NOLINT(bugprone-use-after-move)
}

TEST_F(Lifecycle, MoveConstructionKeepsTheQueueRunning) {
  std::vector<std::future<int>> futures;
  std::vector<Handler> handlers;
  handlers.push_back(manager.loadPythonModule("pysched_cpp_testmod", "sleep_ms_each"));
  futures = queue_sleepers(handlers[0], 3, 10);
  for (int i = 0; i < 8; ++i) {  // reallocations move the handler around
    handlers.push_back(manager.loadPythonModule("pysched_testmod", "identity"));
  }
  for (auto& f : futures) {
    EXPECT_EQ(f.get(), 10);
  }
}

TEST_F(Lifecycle, DefaultConstructedHandlerIsEmpty) {
  Handler h;
  EXPECT_FALSE(h.valid());
  EXPECT_THROW(h.invoke<int>(), std::logic_error);
  h = manager.loadPythonModule("pysched_testmod", "add");
  EXPECT_EQ(h.invoke<int>(1, 2), 3);
}

TEST_F(Lifecycle, StatsAreZeroBeforeTheFirstItem) {
  auto h = manager.loadPythonModule("pysched_testmod", "add", 8);
  const auto s = h.get_queue_stats();
  EXPECT_EQ(s.commit_queue_size, 0u);
  EXPECT_EQ(s.execute_queue_size, 0u);
  EXPECT_EQ(s.total_enqueued, 0);
  EXPECT_EQ(s.commit_batch_size_ema, 0.0);
  EXPECT_EQ(s.execute_batch_size_ema, 0.0);
  EXPECT_EQ(s.commit_ns_per_batch_ema, 0.0);
  EXPECT_EQ(s.execute_ns_per_batch_ema, 0.0);
  EXPECT_EQ(h.invoke<int>(1, 2), 3);  // synchronous calls are not queue items
  EXPECT_EQ(h.get_queue_stats().total_enqueued, 0);
}

TEST_F(Lifecycle, StatsFieldTypesAreTheOriginals) {
  using QS = Handler::QueueStats;
  static_assert(std::is_same_v<decltype(QS::commit_queue_size), size_t>);
  static_assert(std::is_same_v<decltype(QS::execute_queue_size), size_t>);
  static_assert(std::is_same_v<decltype(QS::total_enqueued), std::int64_t>);
  static_assert(std::is_same_v<decltype(QS::commit_batch_size_ema), double>);
  static_assert(std::is_same_v<decltype(QS::execute_batch_size_ema), double>);
  static_assert(std::is_same_v<decltype(QS::commit_ns_per_batch_ema), double>);
  static_assert(std::is_same_v<decltype(QS::execute_ns_per_batch_ema), double>);
  SUCCEED();
}

TEST_F(Lifecycle, StatsShowQueuedItems) {
  auto gated = manager.loadPythonModule("pysched_cpp_testmod", "gated", 4);
  Gate gate(manager);
  auto occupant = gate.hold(gated);
  std::vector<std::future<Tagged>> futures;
  for (int i = 0; i < 10; ++i) {
    futures.push_back(gated.queue_invoke(commit_int, to_tagged, i));
  }
  const auto during = gated.get_queue_stats();
  EXPECT_EQ(during.commit_queue_size, 10u);
  EXPECT_EQ(during.execute_queue_size, 1u);
  EXPECT_EQ(during.total_enqueued, 11);
  gate.open();
  for (auto& f : futures) {
    f.get();
  }
}

TEST_F(Lifecycle, StatsAfterTheQueueDrains) {
  constexpr size_t kBatch = 8;
  auto h = manager.loadPythonModule("pysched_testmod", "double", kBatch, 2);
  std::vector<std::future<int>> futures;
  for (int i = 0; i < 300; ++i) {
    futures.push_back(h.queue_invoke(commit_int, to_int, i));
  }
  for (auto& f : futures) {
    f.get();
  }
  // Part A only: once every future has resolved, the queue has drained.
  const auto s = h.get_queue_stats();
  EXPECT_EQ(s.commit_queue_size, 0u);
  EXPECT_EQ(s.execute_queue_size, 0u);
  EXPECT_EQ(s.total_enqueued, 300);
  EXPECT_GT(s.commit_batch_size_ema, 0.0);
  EXPECT_GT(s.execute_batch_size_ema, 0.0);
  EXPECT_LE(s.execute_batch_size_ema, static_cast<double>(kBatch));
  EXPECT_LE(s.commit_batch_size_ema, static_cast<double>(kBatch));
  EXPECT_GT(s.commit_ns_per_batch_ema, 0.0);
  EXPECT_GT(s.execute_ns_per_batch_ema, 0.0);
}

TEST_F(Lifecycle, TotalEnqueuedIsExactUnderConcurrency) {
  auto h = manager.loadPythonModule("pysched_testmod", "identity", 16);
  constexpr int kThreads = 8;
  constexpr int kPerThread = 1000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < kPerThread; ++i) {
        // Failing commits count as enqueued too.
        h.queue_invoke(
            [](int x) {
              if (x % 7 == 0) {
                throw std::runtime_error("fails");
              }
              return pybind11::cast(x);
            },
            [](pybind11::object&&) {}, i);
      }
    });
  }
  for (auto& t : threads) {
    t.join();
  }
  EXPECT_EQ(h.get_queue_stats().total_enqueued, kThreads * kPerThread);
  h.drain();
  const auto s = h.stats();
  EXPECT_EQ(s.total_enqueued, kThreads * kPerThread);
  EXPECT_EQ(s.completed + s.failed, static_cast<uint64_t>(kThreads * kPerThread));
}

TEST_F(Lifecycle, DebugArcCountCountsManagersAndHandlers) {
  const uint64_t base = pyscheduler::PyManager::debug_arc_count();  // the fixture's manager
  EXPECT_EQ(base, 1u);
  std::optional<pyscheduler::PyManager> second;
  second.emplace();
  EXPECT_EQ(pyscheduler::PyManager::debug_arc_count(), base + 1);
  auto h = second->loadPythonModule("pysched_testmod", "add");
  EXPECT_EQ(pyscheduler::PyManager::debug_arc_count(), base + 2);
  second.reset();  // the handler keeps the state alive and still counts
  EXPECT_EQ(pyscheduler::PyManager::debug_arc_count(), base + 1);
  EXPECT_EQ(h.invoke<int>(1, 2), 3);
  Handler moved = std::move(h);  // moving does not change the count
  EXPECT_EQ(pyscheduler::PyManager::debug_arc_count(), base + 1);
  moved = Handler();
  EXPECT_EQ(pyscheduler::PyManager::debug_arc_count(), base);
}

}  // namespace
