// Two handlers fed by several producer threads at once. Both handlers share the worker
// pool (served round-robin); each batches whatever is queued on it into one Python call.
// Every thread checks that each of its futures yields its own item's result.
//
// Python side: examples/python/my_module.py (square, shout).
#include <pyscheduler/pyscheduler.hpp>

#include <pybind11/pybind11.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <future>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#ifndef PYSCHEDULER_EXAMPLES_PYTHON_DIR
#error "PYSCHEDULER_EXAMPLES_PYTHON_DIR must name the directory of the example Python modules"
#endif

namespace {

constexpr int kThreads = 4;
constexpr int kItemsPerThread = 2000;

void print_stats(const char* name, const pyscheduler::PyManager::InvokeHandler& handler) {
  const auto s = handler.get_queue_stats();
  std::cout << "  " << name << ": " << s.total_enqueued << " items, " << s.execute_batch_size_ema
            << " items per Python call on average, " << s.execute_ns_per_batch_ema / 1e3 << " us per call\n";
}

}  // namespace

int main() {
  try {
    pyscheduler::PyManager manager;
    manager.add_path(PYSCHEDULER_EXAMPLES_PYTHON_DIR);

    // Handler 1: numbers, up to 64 per Python call.
    auto square = manager.loadPythonModule("my_module", "square", 64, 2);
    // Handler 2: strings, up to 16 per Python call.
    auto shout = manager.loadPythonModule("my_module", "shout", 16, 2);

    auto commit_int = [](std::int64_t x) -> pybind11::object { return pybind11::cast(x); };
    auto to_int = [](pybind11::object&& r) { return r.cast<std::int64_t>(); };
    auto commit_str = [](std::string s) -> pybind11::object { return pybind11::str(s); };
    auto to_str = [](pybind11::object&& r) { return r.cast<std::string>(); };

    std::atomic<int> wrong{0};
    const auto start = std::chrono::steady_clock::now();
    std::vector<std::thread> producers;
    for (int t = 0; t < kThreads; ++t) {
      producers.emplace_back([&, t] {
        std::vector<std::future<std::int64_t>> squares;
        std::vector<std::future<std::string>> shouts;
        squares.reserve(kItemsPerThread);
        shouts.reserve(kItemsPerThread);
        for (int i = 0; i < kItemsPerThread; ++i) {
          const std::int64_t x = std::int64_t{t} * kItemsPerThread + i;
          squares.push_back(square.queue_invoke(commit_int, to_int, x));
          shouts.push_back(shout.queue_invoke(commit_str, to_str, "item " + std::to_string(x)));
        }
        for (int i = 0; i < kItemsPerThread; ++i) {
          const std::int64_t x = std::int64_t{t} * kItemsPerThread + i;
          if (squares[i].get() != x * x) ++wrong;
          if (shouts[i].get() != "ITEM " + std::to_string(x) + "!") ++wrong;
        }
      });
    }
    for (auto& p : producers) p.join();
    const auto elapsed = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start);

    const int total = 2 * kThreads * kItemsPerThread;
    std::cout << kThreads << " threads queued " << total << " items on 2 handlers in " << elapsed.count()
              << " ms; " << wrong.load() << " wrong results\n";
    print_stats("my_module.square", square);
    print_stats("my_module.shout ", shout);
    if (wrong.load() != 0 || square.get_queue_stats().total_enqueued != kThreads * kItemsPerThread ||
        shout.get_queue_stats().total_enqueued != kThreads * kItemsPerThread) {
      std::cerr << "multithreaded: FAILED\n";
      return EXIT_FAILURE;
    }
  } catch (const std::exception& e) {
    std::cerr << "multithreaded: " << e.what() << "\n";
    return EXIT_FAILURE;
  }
  std::cout << "multithreaded: all results as expected\n";
  return EXIT_SUCCESS;
}
