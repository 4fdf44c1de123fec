// Shared set-up of the C++ wrapper tests: a fixture that owns a PyManager with the
// Python test modules on sys.path, and small helpers.
#ifndef PYSCHEDULER_TESTS_CPP_TEST_SUPPORT_HPP
#define PYSCHEDULER_TESTS_CPP_TEST_SUPPORT_HPP

#include <pyscheduler/pyscheduler.hpp>

#include <gtest/gtest.h>

#include <chrono>
#include <future>
#include <string>
#include <thread>

#ifndef PYSCHED_TEST_PYTHON_DIR
#error "PYSCHED_TEST_PYTHON_DIR must name tests/python (set by pyscheduler_add_test)"
#endif

namespace pysched_test {

using namespace std::chrono_literals;

/// Every test gets its own manager (cheap once the interpreter runs); nothing is kept
/// alive between tests, so process-wide counts start from zero in each.
class WithManager : public ::testing::Test {
 protected:
  WithManager() { manager.add_path(PYSCHED_TEST_PYTHON_DIR); }

  pyscheduler::PyManager manager;
};

/// Polls `done` until it is true or `timeout` passes; returns its last value.
template <typename Pred>
bool eventually(Pred done, std::chrono::milliseconds timeout = 10s) {
  const auto give_up = std::chrono::steady_clock::now() + timeout;
  while (!done()) {
    if (std::chrono::steady_clock::now() > give_up) {
      return done();
    }
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

template <typename T>
bool is_ready(const std::future<T>& f) {
  return f.wait_for(0s) == std::future_status::ready;
}

inline const auto commit_int = [](int x) { return pybind11::cast(x); };
inline const auto to_int = [](pybind11::object&& result) { return result.cast<int>(); };

/// For handlers bound to pysched_cpp_testmod.gated: (value, size of its batch).
using Tagged = std::pair<int, int>;
inline const auto to_tagged = [](pybind11::object&& result) { return result.cast<std::pair<int, int>>(); };

/// Holds the worker of a `gated` handler inside Python: closes the gate, queues one
/// item and waits until it has been taken into a batch. Items queued afterwards wait
/// in the handler's queue until open_gate(); then they go in the next batch(es).
class Gate {
 public:
  explicit Gate(pyscheduler::PyManager& manager)
      : close_(manager.loadPythonModule("pysched_cpp_testmod", "close_gate")),
        open_(manager.loadPythonModule("pysched_cpp_testmod", "open_gate")) {}
  ~Gate() { open(); }

  /// Returns the future of the item that occupies the worker.
  std::future<Tagged> hold(pyscheduler::PyManager::InvokeHandler& gated) {
    close_.invoke<void>();
    auto occupant = gated.queue_invoke(commit_int, to_tagged, 1000);
    const bool taken = eventually([&] {
      const auto s = gated.get_queue_stats();
      return s.commit_queue_size == 0 && s.execute_queue_size == 1;
    });
    EXPECT_TRUE(taken) << "the gated item was never taken into a batch";
    return occupant;
  }
  void open() { open_.invoke<void>(); }

 private:
  pyscheduler::PyManager::InvokeHandler close_;
  pyscheduler::PyManager::InvokeHandler open_;
};

}  // namespace pysched_test

#endif  // PYSCHEDULER_TESTS_CPP_TEST_SUPPORT_HPP
