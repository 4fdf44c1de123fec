// pyscheduler::ext::Future (queue_invoke_future): values, void, many producers, every failure
// path that reaches it (Python exception, commit or callback throwing, a refused item),
// waiting with and without deadlines (and being woken from both), Futures destroyed or
// moved before their item ran, and handler destruction with items queued. Also the
// std::future path's deferred fulfilment: the context's captures are released before
// the future resolves.
#include "test_support.hpp"

#include <pyscheduler/pyscheduler.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

namespace {

using namespace pysched_test;
using pyscheduler::ext::Future;
using pyscheduler::ext::HandlerOptions;
using pyscheduler::ext::PythonError;
using Clock = std::chrono::steady_clock;

static_assert(std::is_nothrow_move_constructible_v<Future<int>>);
static_assert(std::is_nothrow_move_assignable_v<Future<int>>);
static_assert(!std::is_copy_constructible_v<Future<int>>);
static_assert(!std::is_copy_assignable_v<Future<int>>);

class FutureTest : public WithManager {};

HandlerOptions batch_of(size_t n) {
  HandlerOptions o;
  o.batch_size = n;
  return o;
}

/// Counts live instances: a capture whose release the tests observe.
struct Tracker {
  explicit Tracker(std::shared_ptr<int> token) : token_(std::move(token)) {}
  std::shared_ptr<int> token_;
};

TEST_F(FutureTest, ValuesReachTheirOwnFutures) {
  auto h = manager.loadPythonModule("pysched_testmod", "double", 8, 2);
  std::vector<Future<int>> futures;
  for (int i = 0; i < 500; ++i) {
    futures.push_back(h.queue_invoke_future(commit_int, to_int, i));
  }
  static_assert(std::is_same_v<decltype(futures[0].get()), int>);
  for (int i = 0; i < 500; ++i) {
    ASSERT_TRUE(futures[i].valid());
    EXPECT_EQ(futures[i].get(), 2 * i);
    EXPECT_FALSE(futures[i].valid()) << "get() releases the future, as std::future::get does";
  }
}

TEST_F(FutureTest, VoidCallbackGivesAFutureOfVoid) {
  auto h = manager.loadPythonModule("pysched_testmod", "identity", 4);
  std::atomic<int> sum{0};
  std::vector<Future<void>> futures;
  for (int i = 1; i <= 100; ++i) {
    futures.push_back(h.queue_invoke_future(commit_int, [&sum](pybind11::object&& o) { sum += o.cast<int>(); }, i));
  }
  static_assert(std::is_same_v<decltype(futures[0]), Future<void>&>);
  for (auto& f : futures) {
    f.get();
  }
  EXPECT_EQ(sum.load(), 5050);
}

TEST_F(FutureTest, ReferenceAndMoveOnlyResults) {
  auto h = manager.loadPythonModule("pysched_testmod", "identity", 4);
  static int slots[4] = {0, 0, 0, 0};
  auto ref = h.queue_invoke_future(commit_int, [](pybind11::object&& o) -> int& { return slots[o.cast<int>()]; }, 2);
  static_assert(std::is_same_v<decltype(ref), Future<int&>>);
  EXPECT_EQ(&ref.get(), &slots[2]);
  auto owned = h.queue_invoke_future(
      commit_int, [](pybind11::object&& o) { return std::make_unique<int>(o.cast<int>()); }, 9);
  std::unique_ptr<int> p = owned.get();
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(*p, 9);
}

TEST_F(FutureTest, MoveOnlyCallablesAndArguments) {
  auto h = manager.loadPythonModule("pysched_testmod", "identity", 4);
  auto arg = std::make_unique<int>(5);
  auto bonus = std::make_unique<int>(100);
  auto f = h.queue_invoke_future([](std::unique_ptr<int> p) { return pybind11::cast(*p); },
                                 [b = std::move(bonus)](pybind11::object&& o) { return o.cast<int>() + *b; },
                                 std::move(arg));
  EXPECT_EQ(f.get(), 105);
}

TEST_F(FutureTest, ManyProducersEveryFutureOnceWithItsValue) {
  auto h = manager.loadPythonModule("pysched_testmod", "identity", 32, 2);
  constexpr int kThreads = 8;
  constexpr int kPerThread = 2000;
  constexpr int kTotal = kThreads * kPerThread;
  std::vector<std::atomic<int>> commits(kTotal), callbacks(kTotal);
  std::atomic<int> wrong{0};
  std::vector<std::thread> producers;
  for (int t = 0; t < kThreads; ++t) {
    producers.emplace_back([&, t] {
      std::vector<Future<int>> futures;
      for (int i = 0; i < kPerThread; ++i) {
        const int id = t * kPerThread + i;
        futures.push_back(h.queue_invoke_future(
            [&commits](int x) {
              commits[x].fetch_add(1);
              return pybind11::cast(x);
            },
            [&callbacks](pybind11::object&& o) {
              const int x = o.cast<int>();
              callbacks[x].fetch_add(1);
              return x;
            },
            id));
      }
      // Half waited for in order, half polled then waited with a deadline.
      for (int i = 0; i < kPerThread; ++i) {
        if (i % 2 == 0) {
          wrong += futures[i].get() != t * kPerThread + i;
        } else {
          if (futures[i].wait_for(std::chrono::seconds(30)) != std::future_status::ready) {
            ++wrong;
            continue;
          }
          EXPECT_TRUE(futures[i].is_ready());
          wrong += futures[i].get() != t * kPerThread + i;
        }
      }
    });
  }
  for (auto& p : producers) {
    p.join();
  }
  EXPECT_EQ(wrong.load(), 0);
  int not_once = 0;
  for (int id = 0; id < kTotal; ++id) {
    not_once += commits[id].load() != 1 || callbacks[id].load() != 1;
  }
  EXPECT_EQ(not_once, 0);
  EXPECT_EQ(h.get_queue_stats().total_enqueued, kTotal);
}

TEST_F(FutureTest, PythonExceptionFailsTheWholeBatchWithPythonError) {
  auto gated = manager.loadPythonModule("pysched_cpp_testmod", "gated", 8);
  Gate gate(manager);
  auto occupant = gate.hold(gated);
  std::vector<Future<Tagged>> futures;
  for (int x : {1, -1, 3}) {
    futures.push_back(gated.queue_invoke_future(commit_int, to_tagged, x));
  }
  gate.open();
  occupant.get();
  for (auto& f : futures) {
    try {
      f.get();
      ADD_FAILURE() << "no exception";
    } catch (const PythonError& e) {
      EXPECT_EQ(e.python_type(), "ValueError");
      EXPECT_EQ(e.kind(), pyscheduler::ext::ErrorKind::PythonException);
      EXPECT_NE(std::string(e.what()).find("negative item in a batch of 3"), std::string::npos) << e.what();
      EXPECT_NE(e.traceback().find("gated"), std::string::npos) << e.traceback();
    }
    EXPECT_FALSE(f.valid()) << "get() that throws also releases the future";
  }
  EXPECT_EQ(gated.queue_invoke_future(commit_int, to_tagged, 4).get(), Tagged(4, 1)) << "the next batch is unaffected";
}

TEST_F(FutureTest, CommitThatThrowsFailsOnlyItsItemWithItsOwnException) {
  auto gated = manager.loadPythonModule("pysched_cpp_testmod", "gated", 8);
  Gate gate(manager);
  auto occupant = gate.hold(gated);
  auto commit = [](int x) -> pybind11::object {
    if (x == 2) {
      throw std::domain_error("commit refuses 2");
    }
    if (x == 4) {
      return pybind11::module_::import("no_such_module_for_pysched");  // a Python error
    }
    return pybind11::cast(x);
  };
  std::vector<Future<Tagged>> futures;
  for (int i = 1; i <= 4; ++i) {
    futures.push_back(gated.queue_invoke_future(commit, to_tagged, i));
  }
  gate.open();
  occupant.get();
  EXPECT_EQ(futures[0].get(), Tagged(1, 2)) << "the batch went on without the failed items";
  try {
    futures[1].get();
    FAIL() << "no exception";
  } catch (const std::domain_error& e) {
    EXPECT_STREQ(e.what(), "commit refuses 2");
  }
  EXPECT_EQ(futures[2].get(), Tagged(3, 2));
  try {
    futures[3].get();
    FAIL() << "no exception";
  } catch (const PythonError& e) {
    EXPECT_EQ(e.python_type(), "ModuleNotFoundError");
    EXPECT_EQ(e.kind(), pyscheduler::ext::ErrorKind::Commit);
  }
}

TEST_F(FutureTest, CallbackThatThrowsFailsOnlyItsItem) {
  auto gated = manager.loadPythonModule("pysched_cpp_testmod", "gated", 8);
  Gate gate(manager);
  auto occupant = gate.hold(gated);
  auto callback = [](pybind11::object&& o) {
    auto t = o.cast<Tagged>();
    if (t.first == 2) {
      throw std::length_error("callback refuses 2");
    }
    if (t.first == 3) {
      (void)pybind11::object(o.attr("no_such_attribute"));  // error_already_set -> PythonError
    }
    return t;
  };
  std::vector<Future<Tagged>> futures;
  for (int i = 1; i <= 4; ++i) {
    futures.push_back(gated.queue_invoke_future(commit_int, callback, i));
  }
  gate.open();
  occupant.get();
  EXPECT_EQ(futures[0].get(), Tagged(1, 4));
  EXPECT_THROW(futures[1].get(), std::length_error);
  try {
    futures[2].get();
    FAIL() << "no exception";
  } catch (const PythonError& e) {
    EXPECT_EQ(e.python_type(), "AttributeError");
    EXPECT_EQ(e.kind(), pyscheduler::ext::ErrorKind::Callback);
  }
  EXPECT_EQ(futures[3].get(), Tagged(4, 4));
  gated.drain();
  EXPECT_EQ(gated.stats().failed, 2u);
}

// The two paths report a failure with the same exception type.
TEST_F(FutureTest, SameExceptionTypesAsTheStdFuturePath) {
  auto h = manager.loadPythonModule("pysched_testmod", "raise_for_negative", 1);
  auto type_of = [](auto&& get) -> std::string {
    try {
      get();
    } catch (const std::exception& e) {
      return typeid(e).name();
    }
    return "no exception";
  };
  auto throwing_commit = [](int) -> pybind11::object { throw std::out_of_range("commit"); };
  auto throwing_callback = [](pybind11::object&&) -> int { throw std::overflow_error("callback"); };
  struct Case {
    const char* what;
    std::string std_type, light_type;
  };
  std::vector<Case> cases;
  {
    auto a = h.queue_invoke(commit_int, to_int, -1);
    auto b = h.queue_invoke_future(commit_int, to_int, -1);
    cases.push_back({"python", type_of([&] { a.get(); }), type_of([&] { b.get(); })});
  }
  {
    auto a = h.queue_invoke(throwing_commit, to_int, 1);
    auto b = h.queue_invoke_future(throwing_commit, to_int, 1);
    cases.push_back({"commit", type_of([&] { a.get(); }), type_of([&] { b.get(); })});
  }
  {
    auto a = h.queue_invoke(commit_int, throwing_callback, 1);
    auto b = h.queue_invoke_future(commit_int, throwing_callback, 1);
    cases.push_back({"callback", type_of([&] { a.get(); }), type_of([&] { b.get(); })});
  }
  for (const auto& c : cases) {
    EXPECT_NE(c.std_type, "no exception") << c.what;
    EXPECT_EQ(c.std_type, c.light_type) << c.what;
  }
  EXPECT_EQ(cases[0].std_type, typeid(PythonError).name());
  EXPECT_EQ(cases[1].std_type, typeid(std::out_of_range).name());
  EXPECT_EQ(cases[2].std_type, typeid(std::overflow_error).name());
}

TEST_F(FutureTest, RefusedItemFailsAtOnceWithQueueFullError) {
  HandlerOptions o = batch_of(8);
  o.max_queue = 1;
  o.full_policy = pyscheduler::ext::FullPolicy::Reject;
  auto gated = manager.loadPythonModule("pysched_cpp_testmod", "gated", o);
  Gate gate(manager);
  auto occupant = gate.hold(gated);
  auto queued = gated.queue_invoke_future(commit_int, to_tagged, 1);
  // Refused inside queue_invoke_future, without the GIL: the context captures a Python
  // object, which drop must release with the GIL it takes itself.
  pybind11::object captured;
  {
    pybind11::gil_scoped_acquire gil;
    captured = pybind11::cast(std::string("captured by a refused item"));
  }
  auto refcount = [&] {
    pybind11::gil_scoped_acquire gil;
    return captured.ref_count();
  };
  const auto before = refcount();
  Future<Tagged> refused;
  {
    auto make_commit = [&] {
      pybind11::gil_scoped_acquire gil;  // copying the capture needs it
      return [captured](int x) { return pybind11::cast(x); };
    };
    auto commit = make_commit();
    refused = gated.queue_invoke_future(std::move(commit), to_tagged, 2);  // moved: no GIL needed
  }
  ASSERT_TRUE(refused.is_ready()) << "a refused item fails at once";
  EXPECT_EQ(refcount(), before) << "the refused item's capture was released";
  EXPECT_THROW(refused.get(), pyscheduler::ext::QueueFullError);
  gate.open();
  occupant.get();
  EXPECT_EQ(queued.get(), Tagged(1, 1));
  {
    pybind11::gil_scoped_acquire gil;
    captured = pybind11::object();
  }
}

TEST_F(FutureTest, WaitForAndWaitUntilTimeOutThenSeeTheValue) {
  auto gated = manager.loadPythonModule("pysched_cpp_testmod", "gated", 8);
  Gate gate(manager);
  auto occupant = gate.hold(gated);
  auto f = gated.queue_invoke_future(commit_int, to_tagged, 7);
  EXPECT_FALSE(f.is_ready());
  EXPECT_EQ(f.wait_for(std::chrono::seconds(0)), std::future_status::timeout);
  EXPECT_EQ(f.wait_for(std::chrono::milliseconds(-5)), std::future_status::timeout);
  auto t0 = Clock::now();
  EXPECT_EQ(f.wait_for(std::chrono::milliseconds(30)), std::future_status::timeout);
  EXPECT_GE(Clock::now() - t0, std::chrono::milliseconds(30));
  t0 = Clock::now();
  EXPECT_EQ(f.wait_until(Clock::now() + std::chrono::milliseconds(20)), std::future_status::timeout);
  EXPECT_GE(Clock::now() - t0, std::chrono::milliseconds(20));
  t0 = Clock::now();
  EXPECT_EQ(f.wait_until(std::chrono::system_clock::now() + std::chrono::milliseconds(20)),
            std::future_status::timeout);
  EXPECT_GE(Clock::now() - t0, std::chrono::milliseconds(19));
  EXPECT_FALSE(f.is_ready());
  gate.open();
  EXPECT_EQ(f.wait_for(std::chrono::seconds(30)), std::future_status::ready);
  EXPECT_TRUE(f.is_ready());
  EXPECT_EQ(f.wait_until(Clock::time_point::min()), std::future_status::ready) << "ready beats a past deadline";
  EXPECT_EQ(f.wait_for(std::chrono::hours(24 * 365 * 1000)), std::future_status::ready);
  EXPECT_EQ(f.get(), Tagged(7, 1));
  occupant.get();
}

// A thread blocked in get() or in wait_for() is woken when the item completes, not at
// its deadline.
TEST_F(FutureTest, BlockedWaitersAreWokenPromptly) {
  for (bool timed : {false, true}) {
    auto gated = manager.loadPythonModule("pysched_cpp_testmod", "gated", 8);
    Gate gate(manager);
    auto occupant = gate.hold(gated);
    auto f = gated.queue_invoke_future(commit_int, to_tagged, 3);
    std::atomic<bool> waiting{false};
    Clock::time_point woke;
    std::future_status status = std::future_status::deferred;
    Tagged value;
    std::thread waiter([&] {
      waiting = true;
      if (timed) {
        status = f.wait_for(std::chrono::seconds(60));
      } else {
        f.wait();
        status = std::future_status::ready;
      }
      woke = Clock::now();
      value = f.get();
    });
    while (!waiting) {
      std::this_thread::yield();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));  // let it fall asleep
    const auto opened = Clock::now();
    gate.open();
    waiter.join();
    EXPECT_EQ(status, std::future_status::ready) << "timed " << timed;
    EXPECT_LT(woke - opened, std::chrono::seconds(10)) << "timed " << timed << ": woken by the worker";
    EXPECT_EQ(value, Tagged(3, 1));
    occupant.get();
  }
}

TEST_F(FutureTest, FutureDestroyedBeforeItsItemRuns) {
  auto gated = manager.loadPythonModule("pysched_cpp_testmod", "gated", 8);
  Gate gate(manager);
  auto occupant = gate.hold(gated);
  auto token = std::make_shared<int>(0);
  std::atomic<int> callbacks{0};
  {
    std::vector<Future<int>> futures;
    for (int i = 0; i < 20; ++i) {
      futures.push_back(gated.queue_invoke_future(
          [t = Tracker(token)](int x) { return pybind11::cast(x); },
          [t = Tracker(token), &callbacks](pybind11::object&& o) {
            ++callbacks;
            return o.cast<Tagged>().first;
          },
          i));
    }
    EXPECT_EQ(token.use_count(), 1 + 2 * 20);
  }  // every Future gone while its item waits in the queue
  EXPECT_EQ(callbacks.load(), 0);
  gate.open();
  occupant.get();
  gated.drain();
  EXPECT_EQ(callbacks.load(), 20) << "the items still ran";
  EXPECT_EQ(token.use_count(), 1) << "and their contexts were freed";
}

TEST_F(FutureTest, MovedFromAndDefaultFuturesAreInvalid) {
  auto h = manager.loadPythonModule("pysched_testmod", "identity", 4);
  Future<int> empty;
  EXPECT_FALSE(empty.valid());
  EXPECT_FALSE(empty.is_ready());
  auto expect_no_state = [](auto&& call) {
    try {
      call();
      ADD_FAILURE() << "no exception";
    } catch (const std::future_error& e) {
      EXPECT_EQ(e.code(), std::make_error_code(std::future_errc::no_state));
    }
  };
  expect_no_state([&] { empty.get(); });
  expect_no_state([&] { empty.wait(); });
  expect_no_state([&] { (void)empty.wait_for(std::chrono::milliseconds(1)); });
  expect_no_state([&] { (void)empty.wait_until(Clock::now()); });

  auto a = h.queue_invoke_future(commit_int, to_int, 1);
  Future<int> b(std::move(a));
  EXPECT_FALSE(a.valid());  // NOLINT(bugprone-use-after-move): the moved-from state is the test
  EXPECT_TRUE(b.valid());
  expect_no_state([&] { a.get(); });
  Future<int> c;
  c = std::move(b);
  EXPECT_FALSE(b.valid());  // NOLINT(bugprone-use-after-move)
  auto& self = c;
  c = std::move(self);
  EXPECT_TRUE(c.valid()) << "self-move-assignment keeps the future";
  EXPECT_EQ(c.get(), 1);
  expect_no_state([&] { c.get(); });

  // Assigning over a live Future lets go of its item, which still completes.
  std::atomic<int> ran{0};
  auto counting = [&ran](pybind11::object&& o) {
    ++ran;
    return o.cast<int>();
  };
  auto d = h.queue_invoke_future(commit_int, counting, 2);
  d = h.queue_invoke_future(commit_int, counting, 3);
  EXPECT_EQ(d.get(), 3);
  h.drain();
  EXPECT_EQ(ran.load(), 2);
}

TEST_F(FutureTest, HandlerDestructionWithItemsQueuedResolvesEveryFuture) {
  std::vector<Future<int>> futures;
  std::atomic<int> callbacks{0};
  {
    auto h = manager.loadPythonModule("pysched_cpp_testmod", "sleep_ms_each", 1);
    for (int i = 0; i < 10; ++i) {
      futures.push_back(h.queue_invoke_future(commit_int,
                                              [&callbacks](pybind11::object&& o) {
                                                ++callbacks;
                                                return o.cast<int>();
                                              },
                                              5));
    }
    EXPECT_FALSE(futures.back().is_ready()) << "too fast to observe the drain";
  }
  EXPECT_EQ(callbacks.load(), 10);
  for (auto& f : futures) {
    ASSERT_TRUE(f.is_ready());
    EXPECT_EQ(f.get(), 5);
  }
}

TEST_F(FutureTest, PythonObjectsAsArgumentsAndCaptures) {
  auto h = manager.loadPythonModule("pysched_testmod", "identity", 4);
  auto add = manager.loadPythonModule("pysched_testmod", "add");
  ASSERT_EQ(add.invoke<int>(0, 0), 0);
  Future<int> f;
  pybind11::object captured, argument;
  {
    pybind11::gil_scoped_acquire gil;
    captured = pybind11::cast(40000);  // not a cached (immortal) small int
    argument = pybind11::cast(2);
    f = h.queue_invoke_future([captured](pybind11::object a) { return captured + a; }, to_int, argument);
  }
  EXPECT_EQ(f.get(), 40002);
  h.drain();
  pybind11::gil_scoped_acquire gil;
  EXPECT_EQ(captured.ref_count(), 1) << "the context's copies were released (with the GIL)";
  captured = pybind11::object();
  argument = pybind11::object();
}

// Stress for the sanitizers: futures released at every point of their item's life.
TEST_F(FutureTest, FuturesReleasedAtRandomPoints) {
  auto h = manager.loadPythonModule("pysched_testmod", "identity", 16, 2);
  constexpr int kThreads = 4;
  constexpr int kPerThread = 3000;
  std::atomic<int> callbacks{0};
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::vector<Future<int>> kept;
      for (int i = 0; i < kPerThread; ++i) {
        auto f = h.queue_invoke_future(commit_int,
                                       [&callbacks](pybind11::object&& o) {
                                         ++callbacks;
                                         return o.cast<int>();
                                       },
                                       i);
        switch ((i + t) % 4) {
          case 0:
            break;  // released at once
          case 1:
            if (f.wait_for(std::chrono::microseconds(50)) == std::future_status::ready) {
              wrong += f.get() != i;
            }
            break;  // maybe released while the item runs
          default:
            kept.push_back(std::move(f));
        }
      }
      for (std::size_t k = 0; k < kept.size(); k += 2) {
        kept[k] = Future<int>();  // released late, maybe before the item ran
      }
      for (std::size_t k = 1; k < kept.size(); k += 2) {
        kept[k].wait();
        EXPECT_TRUE(kept[k].is_ready());
      }
    });
  }
  for (auto& th : threads) {
    th.join();
  }
  h.drain();
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_EQ(callbacks.load(), kThreads * kPerThread);
}

// Deferred fulfilment (both paths): when the future resolves, the item's callables and
// arguments are already released.
TEST_F(FutureTest, CapturesAreReleasedBeforeTheFutureResolves) {
  auto h = manager.loadPythonModule("pysched_testmod", "identity", 8);
  for (int round = 0; round < 200; ++round) {
    auto token = std::make_shared<int>(round);
    auto cb = [t = Tracker(token)](pybind11::object&& o) { return o.cast<int>(); };
    auto std_future = h.queue_invoke(commit_int, cb, round);
    auto light = h.queue_invoke_future(commit_int, std::move(cb), round);
    ASSERT_EQ(std_future.get(), round);
    ASSERT_EQ(light.get(), round);
    ASSERT_EQ(token.use_count(), 1) << "round " << round << ": the contexts' copies were released";
  }
}

}  // namespace
