// Two translation units including the headers link into one program (two_tu_main.cpp):
// every function in the headers is inline or a template, and the error types are one
// type across units.
#include <pyscheduler/pyscheduler.hpp>

#include <string>

int two_tu_sync_add(pyscheduler::PyManager& manager, int a, int b) {
  auto add = manager.loadPythonModule("pysched_testmod", "add");
  return add.invoke<int>(a, b);
}

int two_tu_queued_double(pyscheduler::PyManager::InvokeHandler& handler, int x) {
  return handler
      .queue_invoke([](int v) { return pybind11::cast(v); }, [](pybind11::object&& o) { return o.cast<int>(); }, x)
      .get();
}

void two_tu_raise(pyscheduler::PyManager& manager) {
  manager.loadPythonModule("pysched_testmod", "raise_error").invoke<void>(std::string("from unit a"));
}
