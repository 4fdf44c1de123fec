// MUST NOT COMPILE (API.md part A): a queue_invoke callback returning pybind11::object
// would hand a Python reference to a thread without the GIL through the future.
#include <pyscheduler/pyscheduler.hpp>

void queue_with_object_callback(pyscheduler::PyManager::InvokeHandler& h) {
  auto f = h.queue_invoke([](int x) { return pybind11::cast(x); }, [](pybind11::object&& o) { return o; }, 1);
  (void)f;
}
