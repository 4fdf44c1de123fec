// dlopen()s a test plugin the way Cascade loads a UDL: RTLD_NOW | RTLD_LOCAL.
#ifndef PYSCHEDULER_TESTS_CPP_PLUGIN_LOADER_HPP
#define PYSCHEDULER_TESTS_CPP_PLUGIN_LOADER_HPP

#include "plugin_api.h"

#include <gtest/gtest.h>

#include <dlfcn.h>

#include <string>

namespace pysched_test {

struct LoadedPlugin {
  void* dso = nullptr;
  pysched_plugin_start_fn start = nullptr;
  pysched_plugin_report_fn report = nullptr;
  pysched_plugin_stop_fn stop = nullptr;

  /// Loads and starts the plugin; on failure records a test failure and returns false.
  bool open(const char* path, const char* python_dir) {
    dso = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (dso == nullptr) {
      ADD_FAILURE() << "dlopen(" << path << "): " << dlerror();
      return false;
    }
    start = reinterpret_cast<pysched_plugin_start_fn>(dlsym(dso, "pysched_plugin_start"));
    report = reinterpret_cast<pysched_plugin_report_fn>(dlsym(dso, "pysched_plugin_report"));
    stop = reinterpret_cast<pysched_plugin_stop_fn>(dlsym(dso, "pysched_plugin_stop"));
    if (start == nullptr || report == nullptr || stop == nullptr) {
      ADD_FAILURE() << "missing plugin symbols in " << path;
      return false;
    }
    char error[512] = {0};
    if (start(python_dir, error, sizeof error) != 0) {
      ADD_FAILURE() << "plugin start failed: " << error;
      return false;
    }
    return true;
  }

  plugin_report get_report() const {
    plugin_report r{};
    report(&r);
    EXPECT_EQ(r.ok, 1) << r.error;
    return r;
  }
  // Plugins are never dlclose()d: a DSO that touched Python stays for the process.
};

}  // namespace pysched_test

#endif  // PYSCHEDULER_TESTS_CPP_PLUGIN_LOADER_HPP
