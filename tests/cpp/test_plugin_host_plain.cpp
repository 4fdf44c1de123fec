// The Cascade deployment (NOTES.md): a host that links neither libpython nor
// pyscheduler dlopen()s two UDL plugins with RTLD_NOW | RTLD_LOCAL. Both must share one
// interpreter and state, and C extension modules (numpy) must import from a plugin.
#include "plugin_loader.hpp"

#include <gtest/gtest.h>

#include <dlfcn.h>

namespace {

using pysched_test::LoadedPlugin;

TEST(PlainHost, PluginsShareOneInterpreterAndImportCExtensions) {
  ASSERT_EQ(dlsym(RTLD_DEFAULT, "Py_IsInitialized"), nullptr) << "this host must not link libpython";
  LoadedPlugin a, b;
  ASSERT_TRUE(a.open(PYSCHED_PLUGIN_A, PYSCHED_TEST_PYTHON_DIR));
  ASSERT_TRUE(b.open(PYSCHED_PLUGIN_B, PYSCHED_TEST_PYTHON_DIR));
  const plugin_report ra = a.get_report();
  const plugin_report rb = b.get_report();
  EXPECT_NE(ra.state_address, 0u);
  EXPECT_EQ(ra.state_address, rb.state_address);
  EXPECT_EQ(ra.interpreter_id, rb.interpreter_id);
  EXPECT_EQ(rb.counter, ra.counter + 1);
  EXPECT_EQ(ra.arc_count, 10u);
  EXPECT_EQ(rb.arc_count, 10u);
  // have_numpy asks importlib.util.find_spec, without importing: only a numpy that is
  // not installed skips; one that is installed and fails to import (the RTLD_LOCAL
  // "undefined symbol" ImportError) fails get_report's ok check and the sums below.
  if (!ra.have_numpy) {
    GTEST_SKIP() << "numpy is not installed for this Python";
  }
  EXPECT_EQ(ra.numpy_sum, 45) << "numpy (a C extension) imported inside an RTLD_LOCAL plugin";
  EXPECT_EQ(rb.numpy_sum, 45);
  a.stop();
  b.stop();
}

}  // namespace
