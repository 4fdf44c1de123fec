// Shared across shared objects, API.md part A: two plugins dlopen()ed with RTLD_LOCAL and
// the host see one interpreter and one shared state (same debug_shared_state_address);
// debug_arc_count counts every live manager and handler process-wide.
#include "plugin_loader.hpp"

#include <pyscheduler/pyscheduler.hpp>

#include <gtest/gtest.h>

namespace {

using pysched_test::LoadedPlugin;
using pyscheduler::PyManager;

TEST(Plugins, TwoPluginsAndTheHostShareOneInterpreterAndState) {
  PyManager host;
  host.add_path(PYSCHED_TEST_PYTHON_DIR);
  auto interpreter_id = host.loadPythonModule("pysched_cpp_testmod", "interpreter_id");
  auto bump = host.loadPythonModule("pysched_cpp_testmod", "bump");
  const uint64_t host_count = PyManager::debug_arc_count();
  ASSERT_EQ(host_count, 3u);  // the manager and two handlers

  LoadedPlugin a, b;
  ASSERT_TRUE(a.open(PYSCHED_PLUGIN_A, PYSCHED_TEST_PYTHON_DIR));
  ASSERT_TRUE(b.open(PYSCHED_PLUGIN_B, PYSCHED_TEST_PYTHON_DIR));
  const long long before = bump.invoke<long long>();
  const plugin_report ra = a.get_report();
  const plugin_report rb = b.get_report();

  const uintptr_t address = PyManager::debug_shared_state_address();
  EXPECT_NE(address, 0u);
  EXPECT_EQ(ra.state_address, address);
  EXPECT_EQ(rb.state_address, address);
  const long long id = interpreter_id.invoke<long long>();
  EXPECT_EQ(ra.interpreter_id, id);
  EXPECT_EQ(rb.interpreter_id, id);
  // One copy of the module: the plugins' bumps follow the host's.
  EXPECT_EQ(ra.counter, before + 1);
  EXPECT_EQ(rb.counter, before + 2);
  // Each plugin holds a manager and four handlers.
  EXPECT_EQ(ra.arc_count, host_count + 10);
  EXPECT_EQ(rb.arc_count, host_count + 10);
  EXPECT_EQ(PyManager::debug_arc_count(), host_count + 10);
  a.stop();
  EXPECT_EQ(PyManager::debug_arc_count(), host_count + 5);
  b.stop();
  EXPECT_EQ(PyManager::debug_arc_count(), host_count);
  EXPECT_EQ(PyManager::debug_shared_state_address(), address);
}

}  // namespace
