// MUST NOT COMPILE: commit must build a pybind11::object.
#include <pyscheduler/pyscheduler.hpp>

void queue_with_int_commit(pyscheduler::PyManager::InvokeHandler& h) {
  auto f = h.queue_invoke([](int x) { return x; }, [](pybind11::object&& o) { return o.cast<int>(); }, 1);
  (void)f;
}
