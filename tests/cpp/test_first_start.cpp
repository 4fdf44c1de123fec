// One interpreter per process, API.md part A: the FIRST PyManagers of a process,
// constructed concurrently, race safely to start one interpreter and one shared state.
// Its own program, so that nothing has started Python before the race.
#include <pyscheduler/pyscheduler.hpp>

#include <gtest/gtest.h>

#include <signal.h>

#include <atomic>
#include <memory>
#include <thread>
#include <vector>

namespace {

using pyscheduler::PyManager;

TEST(FirstStart, ConcurrentFirstConstructorsStartOneInterpreter) {
  ASSERT_EQ(Py_IsInitialized(), 0) << "this program must start Python itself";
  ASSERT_EQ(PyManager::debug_arc_count(), 0u);
  ASSERT_EQ(PyManager::debug_shared_state_address(), 0u);

  constexpr int kThreads = 8;
  pyscheduler::ext::ManagerOptions options;
  options.worker_threads = 5;
  std::vector<std::unique_ptr<PyManager>> managers(kThreads);
  std::vector<long long> interpreter_ids(kThreads);
  std::atomic<int> ready{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      ready.fetch_add(1);
      while (ready.load() < kThreads) {
        // start together
      }
      managers[i] = std::make_unique<PyManager>(options);
      managers[i]->add_path(PYSCHED_TEST_PYTHON_DIR);
      auto id = managers[i]->loadPythonModule("pysched_cpp_testmod", "interpreter_id");
      interpreter_ids[i] = id.invoke<long long>();
    });
  }
  for (auto& t : threads) {
    t.join();
  }
  EXPECT_EQ(Py_IsInitialized(), 1);
  EXPECT_EQ(PyManager::debug_arc_count(), static_cast<uint64_t>(kThreads));
  const auto address = PyManager::debug_shared_state_address();
  EXPECT_NE(address, 0u);
  for (int i = 0; i < kThreads; ++i) {
    EXPECT_EQ(interpreter_ids[i], interpreter_ids[0]);
    EXPECT_EQ(managers[i]->worker_threads(), 5u) << "the first manager's options set the pool";
  }
  // Python's signal handlers are not installed: SIGINT keeps its default disposition
  // (checked at the OS level: importing Python's signal module would install one).
  struct sigaction sigint {};
  ASSERT_EQ(sigaction(SIGINT, nullptr, &sigint), 0);
  EXPECT_EQ(sigint.sa_handler, SIG_DFL);
  auto handler = managers[0]->loadPythonModule("pysched_cpp_testmod", "interpreter_id");
  managers.clear();
  // The handler alone keeps the state alive.
  EXPECT_EQ(PyManager::debug_arc_count(), 1u);
  EXPECT_EQ(PyManager::debug_shared_state_address(), address);
}

}  // namespace
