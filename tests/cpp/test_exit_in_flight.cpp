// Exiting the process with handlers and managers alive and work in flight must neither
// crash nor hang (API.md part A, "One interpreter per process"). Not a gtest program:
// CTest checks the exit status, the output, and the timeout.
#include <pyscheduler/pyscheduler.hpp>

#include <cstdio>
#include <future>
#include <vector>

namespace {

using pyscheduler::PyManager;

// Reachable from globals on purpose (not leaks): never destroyed.
PyManager* g_never_destroyed_manager = nullptr;
PyManager::InvokeHandler* g_never_destroyed_handler = nullptr;
std::vector<std::future<int>>* g_abandoned_futures = nullptr;

auto commit_int = [](int x) { return pybind11::cast(x); };
auto to_int = [](pybind11::object&& o) { return o.cast<int>(); };

}  // namespace

// Destroyed by exit(): its destructor drains the items still queued.
PyManager::InvokeHandler g_static_handler;

int main() {
  g_never_destroyed_manager = new PyManager();
  g_never_destroyed_manager->add_path(PYSCHED_TEST_PYTHON_DIR);
  g_never_destroyed_handler =
      new PyManager::InvokeHandler(g_never_destroyed_manager->loadPythonModule("pysched_cpp_testmod", "sleep_ms_each"));
  g_static_handler = g_never_destroyed_manager->loadPythonModule("pysched_cpp_testmod", "sleep_ms_each", 4);
  g_abandoned_futures = new std::vector<std::future<int>>();
  for (int i = 0; i < 200; ++i) {
    g_abandoned_futures->push_back(g_never_destroyed_handler->queue_invoke(commit_int, to_int, 5));
  }
  for (int i = 0; i < 8; ++i) {
    g_static_handler.queue_invoke(commit_int, to_int, 5);
  }
  // A manager that is destroyed normally while the others live on.
  { PyManager transient; }
  std::puts("pyscheduler: exiting with work in flight");
  std::fflush(stdout);
  return 0;
}
