// A UDL-style plugin: a shared object that uses pyscheduler through the C++ wrapper and
// is dlopen()ed with RTLD_NOW | RTLD_LOCAL by a host (test_plugins.cpp,
// test_plugin_host_plain.cpp). Built twice, as two distinct DSOs.
#include "plugin_api.h"

#include <pyscheduler/pyscheduler.hpp>

#include <cstdio>
#include <exception>
#include <future>
#include <memory>
#include <optional>

namespace {

struct Plugin {
  pyscheduler::PyManager manager;
  std::optional<pyscheduler::PyManager::InvokeHandler> bump;
  std::optional<pyscheduler::PyManager::InvokeHandler> interpreter_id;
  std::optional<pyscheduler::PyManager::InvokeHandler> numpy_sum;
  std::optional<pyscheduler::PyManager::InvokeHandler> have_numpy;
};

std::unique_ptr<Plugin> g_plugin;

void set_error(plugin_report* report, const char* what) {
  report->ok = 0;
  std::snprintf(report->error, sizeof report->error, "%s", what);
}

}  // namespace

extern "C" PYSCHED_PLUGIN_EXPORT int pysched_plugin_start(const char* python_dir, char* error, size_t error_size) {
  try {
    auto p = std::make_unique<Plugin>();
    p->manager.add_path(python_dir);
    p->bump.emplace(p->manager.loadPythonModule("pysched_cpp_testmod", "bump", 4));
    p->interpreter_id.emplace(p->manager.loadPythonModule("pysched_cpp_testmod", "interpreter_id"));
    p->numpy_sum.emplace(p->manager.loadPythonModule("pysched_cpp_testmod", "numpy_sum"));
    p->have_numpy.emplace(p->manager.loadPythonModule("pysched_cpp_testmod", "have_numpy"));
    g_plugin = std::move(p);
    return 0;
  } catch (const std::exception& e) {
    std::snprintf(error, error_size, "%s", e.what());
    return 1;
  }
}

extern "C" PYSCHED_PLUGIN_EXPORT void pysched_plugin_report(plugin_report* report) {
  *report = plugin_report{};
  report->ok = 1;
  if (!g_plugin) {
    set_error(report, "not started");
    return;
  }
  try {
    report->state_address = pyscheduler::PyManager::debug_shared_state_address();
    report->arc_count = pyscheduler::PyManager::debug_arc_count();
    report->interpreter_id = g_plugin->interpreter_id->invoke<long long>();
    // Through the queue, so the worker pool serves this plugin's handler too.
    report->counter = g_plugin->bump
                          ->queue_invoke([] { return pybind11::none(); },
                                         [](pybind11::object&& o) { return o.cast<long long>(); })
                          .get();
    report->have_numpy = g_plugin->have_numpy->invoke<bool>() ? 1 : 0;
    report->numpy_sum = report->have_numpy ? g_plugin->numpy_sum->invoke<long long>(10) : -1;
  } catch (const std::exception& e) {
    set_error(report, e.what());
  }
}

extern "C" PYSCHED_PLUGIN_EXPORT void pysched_plugin_stop(void) { g_plugin.reset(); }
