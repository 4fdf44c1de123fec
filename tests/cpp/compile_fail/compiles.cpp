// The control of the compile-fail tests: the same shape, correct, compiles.
#include <pyscheduler/pyscheduler.hpp>

void queue_correctly(pyscheduler::PyManager::InvokeHandler& h) {
  auto f = h.queue_invoke([](int x) { return pybind11::cast(x); }, [](pybind11::object&& o) { return o.cast<int>(); }, 1);
  (void)f;
}
