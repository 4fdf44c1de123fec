// The second translation unit of the two-unit program (see two_tu_a.cpp).
#include <pyscheduler/pyscheduler.hpp>

#include <gtest/gtest.h>

int two_tu_sync_add(pyscheduler::PyManager& manager, int a, int b);
int two_tu_queued_double(pyscheduler::PyManager::InvokeHandler& handler, int x);
void two_tu_raise(pyscheduler::PyManager& manager);

namespace {

TEST(TwoTranslationUnits, HeadersLinkAndWorkFromBothUnits) {
  pyscheduler::PyManager manager;
  manager.add_path(PYSCHED_TEST_PYTHON_DIR);
  EXPECT_EQ(two_tu_sync_add(manager, 2, 3), 5);
  auto dbl = manager.loadPythonModule("pysched_testmod", "double", 4);
  EXPECT_EQ(two_tu_queued_double(dbl, 21), 42);
  EXPECT_EQ(dbl.queue_invoke([](int v) { return pybind11::cast(v); }, [](pybind11::object&& o) { return o.cast<int>(); }, 4)
                .get(),
            8);
  // An exception thrown from unit a is caught by its type in unit b.
  try {
    two_tu_raise(manager);
    FAIL() << "no exception";
  } catch (const pyscheduler::ext::PythonError& e) {
    EXPECT_EQ(e.python_type(), "RuntimeError");
  }
}

}  // namespace
