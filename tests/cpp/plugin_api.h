/* The C interface of the test plugins (plugin.cpp), resolved with dlsym by the hosts. */
#ifndef PYSCHEDULER_TESTS_CPP_PLUGIN_API_H
#define PYSCHEDULER_TESTS_CPP_PLUGIN_API_H

#include <stddef.h>
#include <stdint.h>

#define PYSCHED_PLUGIN_EXPORT __attribute__((visibility("default")))

#ifdef __cplusplus
extern "C" {
#endif

typedef struct plugin_report {
  int ok;
  char error[512];
  uintptr_t state_address;  /* PyManager::debug_shared_state_address() seen by the plugin */
  uint64_t arc_count;       /* PyManager::debug_arc_count() seen by the plugin */
  long long interpreter_id; /* id(sys) of the interpreter the plugin talks to */
  long long counter;        /* pysched_cpp_testmod.counter after the plugin bumped it */
  int have_numpy;
  long long numpy_sum; /* sum(range(10)) computed by numpy inside the plugin, or -1 */
} plugin_report;

typedef int (*pysched_plugin_start_fn)(const char* python_dir, char* error, size_t error_size);
typedef void (*pysched_plugin_report_fn)(plugin_report* report);
typedef void (*pysched_plugin_stop_fn)(void);

#ifdef __cplusplus
}
#endif

#endif
