// queue_invoke, API.md part A (3): commit -> one Python call per batch (always a list)
// -> fan-out to callbacks; opportunistic batching; errors per item; std::future<void>;
// move-only callables and arguments; many producers, exactly-once results.
#include "test_support.hpp"

#include <pyscheduler/pyscheduler.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

namespace {

using namespace pysched_test;
using pyscheduler::ext::PythonError;

class QueueInvoke : public WithManager {};

TEST_F(QueueInvoke, BatchIsAListAlsoForBatchSizeOne) {
  for (size_t batch_size : {size_t{1}, size_t{16}}) {
    auto h = manager.loadPythonModule("pysched_cpp_testmod", "batch_type", batch_size);
    std::vector<std::future<std::string>> futures;
    for (int i = 0; i < 20; ++i) {
      futures.push_back(h.queue_invoke(commit_int, [](pybind11::object&& o) { return o.cast<std::string>(); }, i));
    }
    for (auto& f : futures) {
      EXPECT_EQ(f.get(), "list") << "batch_size " << batch_size;
    }
  }
}

TEST_F(QueueInvoke, ResultsReachTheirOwnFutures) {
  auto h = manager.loadPythonModule("pysched_testmod", "double", 8, 2);
  std::vector<std::future<int>> futures;
  for (int i = 0; i < 500; ++i) {
    futures.push_back(h.queue_invoke(commit_int, to_int, i));
  }
  for (int i = 0; i < 500; ++i) {
    EXPECT_EQ(futures[i].get(), 2 * i);
  }
}

TEST_F(QueueInvoke, ReadmeExampleWithRawPyObjects) {
  auto generate = manager.loadPythonModule("pysched_testmod", "identity");
  auto compute = manager.loadPythonModule("pysched_testmod", "double", 32, 3);
  auto commit = [](int n) -> pybind11::object { return pybind11::cast(n); };
  auto extract = [](pybind11::object&& obj) { return obj.release().ptr(); };
  std::vector<std::future<PyObject*>> gen_futures;
  for (int i = 0; i < 100; i++) {
    gen_futures.push_back(generate.queue_invoke(commit, extract, i));
  }
  static_assert(std::is_same_v<decltype(gen_futures[0].get()), PyObject*>);
  std::vector<PyObject*> objects;
  for (auto& f : gen_futures) {
    objects.push_back(f.get());
  }
  auto commit2 = [](PyObject* p) -> pybind11::object { return pybind11::reinterpret_steal<pybind11::object>(p); };
  auto to_int2 = [](pybind11::object&& obj) { return obj.cast<int>(); };
  std::vector<std::future<int>> futures;
  for (int i = 0; i < 100; i++) {
    futures.push_back(compute.queue_invoke(commit2, to_int2, objects[i]));
  }
  for (int i = 0; i < 100; i++) {
    EXPECT_EQ(futures[i].get(), 2 * i);
  }
}

TEST_F(QueueInvoke, OpportunisticBatchingTakesWhateverIsQueued) {
  auto gated = manager.loadPythonModule("pysched_cpp_testmod", "gated", 8);
  Gate gate(manager);
  auto occupant = gate.hold(gated);
  std::vector<std::future<Tagged>> futures;
  for (int i = 0; i < 5; ++i) {
    futures.push_back(gated.queue_invoke(commit_int, to_tagged, i));
  }
  gate.open();
  EXPECT_EQ(occupant.get().second, 1);
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(futures[i].get(), Tagged(i, 5)) << "the 5 queued items travel in one batch";
  }
}

TEST_F(QueueInvoke, NothingWaitsForABatchToFill) {
  auto sizes = manager.loadPythonModule("pysched_cpp_testmod", "sizes", 64);
  auto f = sizes.queue_invoke(commit_int, to_int, 1);
  ASSERT_EQ(f.wait_for(5s), std::future_status::ready);
  EXPECT_EQ(f.get(), 1);
}

TEST_F(QueueInvoke, BatchesNeverExceedBatchSize) {
  auto gated = manager.loadPythonModule("pysched_cpp_testmod", "gated", 8);
  Gate gate(manager);
  auto occupant = gate.hold(gated);
  std::vector<std::future<Tagged>> futures;
  for (int i = 0; i < 20; ++i) {
    futures.push_back(gated.queue_invoke(commit_int, to_tagged, i));
  }
  gate.open();
  occupant.get();
  for (int i = 0; i < 20; ++i) {
    const Tagged t = futures[i].get();
    EXPECT_EQ(t.first, i);
    // 20 waiting items with batch_size 8: batches of 8, 8 and 4, in order.
    EXPECT_EQ(t.second, i < 16 ? 8 : 4) << "item " << i;
  }
}

TEST_F(QueueInvoke, CommitThatThrowsFailsOnlyItsItem) {
  auto gated = manager.loadPythonModule("pysched_cpp_testmod", "gated", 8);
  Gate gate(manager);
  auto occupant = gate.hold(gated);
  auto commit = [](int x) -> pybind11::object {
    if (x == 2) {
      throw std::domain_error("commit refuses 2");
    }
    return pybind11::cast(x);
  };
  std::vector<std::future<Tagged>> futures;
  for (int i = 1; i <= 3; ++i) {
    futures.push_back(gated.queue_invoke(commit, to_tagged, i));
  }
  gate.open();
  occupant.get();
  EXPECT_EQ(futures[0].get(), Tagged(1, 2)) << "the batch went on without the failed item";
  try {
    futures[1].get();
    FAIL() << "no exception";
  } catch (const std::domain_error& e) {
    EXPECT_STREQ(e.what(), "commit refuses 2");  // the commit's own exception
  }
  EXPECT_EQ(futures[2].get(), Tagged(3, 2));
}

TEST_F(QueueInvoke, CommitRaisingAPythonErrorFailsOnlyItsItem) {
  auto h = manager.loadPythonModule("pysched_testmod", "identity", 4);
  auto bad = h.queue_invoke([](int) { return pybind11::module_::import("no_such_module_for_pysched"); }, to_int, 0);
  auto good = h.queue_invoke(commit_int, to_int, 7);
  try {
    bad.get();
    FAIL() << "no exception";
  } catch (const PythonError& e) {
    EXPECT_EQ(e.python_type(), "ModuleNotFoundError");
    EXPECT_EQ(e.kind(), pyscheduler::ext::ErrorKind::Commit);
  }
  EXPECT_EQ(good.get(), 7);
}

TEST_F(QueueInvoke, PythonExceptionFailsTheWholeBatch) {
  auto gated = manager.loadPythonModule("pysched_cpp_testmod", "gated", 8);
  Gate gate(manager);
  auto occupant = gate.hold(gated);
  std::vector<std::future<Tagged>> futures;
  for (int x : {1, -1, 3}) {
    futures.push_back(gated.queue_invoke(commit_int, to_tagged, x));
  }
  gate.open();
  occupant.get();
  for (auto& f : futures) {
    try {
      f.get();
      ADD_FAILURE() << "no exception";
    } catch (const PythonError& e) {
      EXPECT_EQ(e.python_type(), "ValueError");
      EXPECT_NE(std::string(e.what()).find("negative item in a batch of 3"), std::string::npos) << e.what();
      EXPECT_NE(e.traceback().find("gated"), std::string::npos) << e.traceback();
    }
  }
  // The next batch is unaffected.
  EXPECT_EQ(gated.queue_invoke(commit_int, to_tagged, 4).get(), Tagged(4, 1));
}

TEST_F(QueueInvoke, CallbackThatThrowsFailsOnlyItsItem) {
  auto gated = manager.loadPythonModule("pysched_cpp_testmod", "gated", 8);
  Gate gate(manager);
  auto occupant = gate.hold(gated);
  auto callback = [](pybind11::object&& o) {
    auto t = o.cast<Tagged>();
    if (t.first == 2) {
      throw std::length_error("callback refuses 2");
    }
    return t;
  };
  std::vector<std::future<Tagged>> futures;
  for (int i = 1; i <= 3; ++i) {
    futures.push_back(gated.queue_invoke(commit_int, callback, i));
  }
  gate.open();
  occupant.get();
  EXPECT_EQ(futures[0].get(), Tagged(1, 3));
  EXPECT_THROW(futures[1].get(), std::length_error);
  EXPECT_EQ(futures[2].get(), Tagged(3, 3));
  gated.drain();
  EXPECT_GE(gated.stats().failed, 1u);
}

TEST_F(QueueInvoke, ResultOfTheWrongLengthFailsTheBatchWithAClearMessage) {
  auto h = manager.loadPythonModule("pysched_testmod", "wrong_length", 4);
  try {
    h.queue_invoke(commit_int, to_int, 1).get();
    FAIL() << "no exception";
  } catch (const PythonError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("must return a sequence of 1 results"), std::string::npos) << what;
    EXPECT_NE(what.find("length 2"), std::string::npos) << what;
  }
}

TEST_F(QueueInvoke, ResultThatIsNotASequenceFailsTheBatchWithAClearMessage) {
  auto h = manager.loadPythonModule("pysched_testmod", "not_a_sequence");
  try {
    h.queue_invoke(commit_int, to_int, 1).get();
    FAIL() << "no exception";
  } catch (const PythonError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("must return a sequence"), std::string::npos) << what;
    EXPECT_NE(what.find("int"), std::string::npos) << what;
  }
}

TEST_F(QueueInvoke, TupleResultsAreAcceptedAndGeneratorsRefused) {
  auto tuple = manager.loadPythonModule("pysched_testmod", "returns_tuple", 4);
  auto generator = manager.loadPythonModule("pysched_testmod", "returns_generator", 4);
  auto a = tuple.queue_invoke(commit_int, to_int, 1);
  auto b = generator.queue_invoke(commit_int, to_int, 5);
  EXPECT_EQ(a.get(), 2);
  // A generator is not a sequence: refused with a clear message rather than guessed.
  EXPECT_THROW(b.get(), PythonError);
}

TEST_F(QueueInvoke, VoidCallbackGivesAFutureOfVoid) {
  auto h = manager.loadPythonModule("pysched_testmod", "double", 4);
  std::atomic<int> sum{0};
  std::vector<std::future<void>> futures;
  for (int i = 0; i < 10; ++i) {
    auto f = h.queue_invoke(commit_int, [&sum](pybind11::object&& o) { sum += o.cast<int>(); }, i);
    static_assert(std::is_same_v<decltype(f), std::future<void>>);
    futures.push_back(std::move(f));
  }
  for (auto& f : futures) {
    f.get();
  }
  EXPECT_EQ(sum.load(), 90);
  auto failing = h.queue_invoke(commit_int, [](pybind11::object&&) { throw std::logic_error("void fails"); }, 1);
  EXPECT_THROW(failing.get(), std::logic_error);
}

TEST_F(QueueInvoke, MoveOnlyCallablesAndArguments) {
  auto h = manager.loadPythonModule("pysched_testmod", "double", 4);
  auto offset = std::make_unique<int>(100);
  auto commit = [offset = std::move(offset)](std::unique_ptr<int> p) { return pybind11::cast(*p + *offset); };
  auto scale = std::make_unique<int>(3);
  auto callback = [scale = std::move(scale)](pybind11::object&& o) { return std::make_unique<int>(o.cast<int>() * *scale); };
  static_assert(!std::is_copy_constructible_v<decltype(commit)>);
  static_assert(!std::is_copy_constructible_v<decltype(callback)>);
  std::future<std::unique_ptr<int>> f = h.queue_invoke(std::move(commit), std::move(callback), std::make_unique<int>(1));
  EXPECT_EQ(*f.get(), (1 + 100) * 2 * 3);
}

TEST_F(QueueInvoke, ArgumentsAreCopiedFromLvaluesAndMovedFromRvalues) {
  auto h = manager.loadPythonModule("pysched_testmod", "identity", 4);
  auto commit = [](std::string s) { return pybind11::cast(s); };
  auto to_string = [](pybind11::object&& o) { return o.cast<std::string>(); };
  std::string kept = "copied argument";
  std::string moved = "moved argument, long enough to live on the heap";
  auto a = h.queue_invoke(commit, to_string, kept);
  auto b = h.queue_invoke(commit, to_string, std::move(moved));
  EXPECT_EQ(kept, "copied argument");
  EXPECT_TRUE(moved.empty());  // NOLINT(bugprone-use-after-move): that is the point
  EXPECT_EQ(a.get(), "copied argument");
  EXPECT_EQ(b.get(), "moved argument, long enough to live on the heap");
}

TEST_F(QueueInvoke, CommitTakingAnLvalueReferenceGetsTheStoredArgument) {
  auto h = manager.loadPythonModule("pysched_testmod", "identity");
  auto commit = [](std::vector<int>& v) {
    v.push_back(4);
    return pybind11::cast(static_cast<int>(v.size()));
  };
  EXPECT_EQ(h.queue_invoke(commit, to_int, std::vector<int>{1, 2, 3}).get(), 4);
}

TEST_F(QueueInvoke, CommitAndCallbackRunOnAWorkerWithTheGil) {
  auto h = manager.loadPythonModule("pysched_testmod", "identity");
  const auto caller = std::this_thread::get_id();
  std::atomic<bool> commit_gil{false}, callback_gil{false}, other_thread{true};
  auto f = h.queue_invoke(
      [&](int x) {
        commit_gil = PyGILState_Check() != 0;
        other_thread = other_thread && std::this_thread::get_id() != caller;
        return pybind11::cast(x);
      },
      [&](pybind11::object&& o) {
        callback_gil = PyGILState_Check() != 0;
        other_thread = other_thread && std::this_thread::get_id() != caller;
        return o.cast<int>();
      },
      5);
  EXPECT_EQ(f.get(), 5);
  EXPECT_TRUE(commit_gil);
  EXPECT_TRUE(callback_gil);
  EXPECT_TRUE(other_thread);
}

TEST_F(QueueInvoke, PythonObjectsAsArgumentsAndCaptures) {
  auto h = manager.loadPythonModule("pysched_testmod", "identity", 4);
  std::future<int> f;
  {
    auto add = manager.loadPythonModule("pysched_testmod", "add");
    ASSERT_EQ(add.invoke<int>(0, 0), 0);  // this thread has its thread state now
    pybind11::gil_scoped_acquire gil;
    pybind11::object captured = pybind11::cast(40);
    pybind11::object argument = pybind11::cast(2);
    // The context owns Python references; it is destroyed with the GIL held.
    f = h.queue_invoke([captured](pybind11::object a) { return captured + a; }, to_int, argument);
  }
  EXPECT_EQ(f.get(), 42);
}

TEST_F(QueueInvoke, EightProducersExactlyOnce) {
  auto h = manager.loadPythonModule("pysched_testmod", "identity", 32, 2);
  constexpr int kThreads = 8;
  constexpr int kPerThread = 2000;
  constexpr int kTotal = kThreads * kPerThread;
  std::vector<std::atomic<int>> commits(kTotal), callbacks(kTotal);
  std::vector<std::vector<std::future<int>>> futures(kThreads);
  std::vector<std::thread> producers;
  for (int t = 0; t < kThreads; ++t) {
    producers.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        const int id = t * kPerThread + i;
        futures[t].push_back(h.queue_invoke(
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
    });
  }
  for (auto& p : producers) {
    p.join();
  }
  int wrong = 0;
  for (int t = 0; t < kThreads; ++t) {
    for (int i = 0; i < kPerThread; ++i) {
      wrong += futures[t][i].get() != t * kPerThread + i;
    }
  }
  EXPECT_EQ(wrong, 0);
  int not_once = 0;
  for (int id = 0; id < kTotal; ++id) {
    not_once += commits[id].load() != 1 || callbacks[id].load() != 1;
  }
  EXPECT_EQ(not_once, 0);
  EXPECT_EQ(h.get_queue_stats().total_enqueued, kTotal);
}

TEST_F(QueueInvoke, ProducersOnManyHandlersAndSyncCallsMixed) {
  auto a = manager.loadPythonModule("pysched_testmod", "double", 16);
  auto b = manager.loadPythonModule("pysched_testmod", "identity", 4);
  auto add = manager.loadPythonModule("pysched_testmod", "add");
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      std::vector<std::future<int>> fa, fb;
      for (int i = 0; i < 300; ++i) {
        fa.push_back(a.queue_invoke(commit_int, to_int, i));
        fb.push_back(b.queue_invoke(commit_int, to_int, i));
        if (i % 10 == 0 && add.invoke<int>(t, i) != t + i) {
          ++wrong;
        }
      }
      for (int i = 0; i < 300; ++i) {
        wrong += fa[i].get() != 2 * i;
        wrong += fb[i].get() != i;
      }
    });
  }
  for (auto& t : threads) {
    t.join();
  }
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_EQ(a.get_queue_stats().total_enqueued, 8 * 300);
  EXPECT_EQ(b.get_queue_stats().total_enqueued, 8 * 300);
}

TEST_F(QueueInvoke, QueueingFromInsideACallback) {
  auto first = manager.loadPythonModule("pysched_testmod", "identity");
  auto second = manager.loadPythonModule("pysched_testmod", "double");
  std::promise<std::future<int>> inner;
  auto outer = first.queue_invoke(commit_int,
                                  [&](pybind11::object&& o) {
                                    inner.set_value(second.queue_invoke(commit_int, to_int, o.cast<int>()));
                                  },
                                  21);
  outer.get();
  EXPECT_EQ(inner.get_future().get().get(), 42);
}

}  // namespace
