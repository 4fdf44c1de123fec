/* The deployment that matters most (shared/NOTES.md): a plain C host that links
 * nothing but libdl (no libpython, no pyscheduler) dlopen()s two UDL-style plugins with
 * RTLD_NOW | RTLD_LOCAL. Each plugin links pyscheduler, imports a module that imports
 * numpy, and computes numpy sums through the C ABI; the two plugins must share
 * pyscheduler's process-wide state.
 *
 * usage: dlopen_host <plugin_a.so> <plugin_b.so> <python_dir>
 *        dlopen_host --control <plugin_plain_embed.so>
 * The control mode loads a plugin that embeds CPython without pyscheduler and expects
 * its numpy import to fail on an undefined symbol (exit 0), which shows that this
 * machine reproduces the failure the main mode proves absent; exit 77 (skip) if numpy
 * imports anyway, because then the main mode proves nothing here. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int (*start_fn)(const char *, char *, size_t);
typedef int (*run_fn)(long, char *, size_t);
typedef size_t (*address_fn)(void);
typedef uint64_t (*count_fn)(void);
typedef void (*stop_fn)(void);

typedef struct {
  const char *path;
  void *dl;
  start_fn start;
  run_fn run;
  address_fn state_address;
  count_fn arc_count;
  stop_fn stop;
} plugin;

static int failures = 0;

#define EXPECT(cond, ...)                                                         \
  do {                                                                            \
    if (!(cond)) {                                                                \
      fprintf(stderr, "dlopen_host: FAILED: %s: ", #cond);                        \
      fprintf(stderr, __VA_ARGS__);                                               \
      fprintf(stderr, "\n");                                                      \
      failures++;                                                                 \
    }                                                                             \
  } while (0)

static int find_loaded(struct dl_phdr_info *info, size_t size, void *data) {
  (void)size;
  const char *needle = (const char *)data;
  return info->dlpi_name != NULL && strstr(info->dlpi_name, needle) != NULL;
}

static int is_loaded(const char *name_part) {
  return dl_iterate_phdr(find_loaded, (void *)name_part) != 0;
}

static void *symbol(plugin *p, const char *name) {
  dlerror();
  void *s = dlsym(p->dl, name);
  const char *e = dlerror();
  if (s == NULL || e != NULL) {
    fprintf(stderr, "dlopen_host: %s: dlsym(%s): %s\n", p->path, name, e ? e : "NULL");
    exit(1);
  }
  return s;
}

static void load(plugin *p, const char *path) {
  p->path = path;
  p->dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (p->dl == NULL) {
    fprintf(stderr, "dlopen_host: dlopen(%s): %s\n", path, dlerror());
    exit(1);
  }
  /* Function pointers from void* (POSIX guarantees this works). */
  *(void **)&p->start = symbol(p, "plugin_start");
  *(void **)&p->run = symbol(p, "plugin_run");
  *(void **)&p->state_address = symbol(p, "plugin_state_address");
  *(void **)&p->arc_count = symbol(p, "plugin_arc_count");
  *(void **)&p->stop = symbol(p, "plugin_stop");
}

static int control(const char *path) {
  EXPECT(!is_loaded("libpython"), "libpython is loaded before any plugin");
  void *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (dl == NULL) {
    fprintf(stderr, "dlopen_host: dlopen(%s): %s\n", path, dlerror());
    return 1;
  }
  start_fn start;
  *(void **)&start = dlsym(dl, "plugin_start");
  if (start == NULL) {
    fprintf(stderr, "dlopen_host: no plugin_start in %s\n", path);
    return 1;
  }
  char msg[4096] = "";
  if (start("", msg, sizeof msg) == 0) {
    printf("dlopen_host --control: numpy imported from a plain RTLD_LOCAL embedding; "
           "this machine does not reproduce the failure (skipped)\n");
    return 77;
  }
  const char *why = strstr(msg, "undefined symbol");
  if (why == NULL) {
    fprintf(stderr, "dlopen_host --control: numpy failed for another reason: %s\n", msg);
    return 1;
  }
  printf("dlopen_host --control: plain embedding fails as expected: %.120s\n", why);
  return failures ? 1 : 0;
}

int main(int argc, char **argv) {
  if (argc == 3 && strcmp(argv[1], "--control") == 0) {
    return control(argv[2]);
  }
  if (argc != 4) {
    fprintf(stderr, "usage: %s <plugin_a.so> <plugin_b.so> <python_dir>\n", argv[0]);
    return 2;
  }
  const char *python_dir = argv[3];
  char msg[1024];

  /* The host itself links neither libpython nor pyscheduler. */
  EXPECT(!is_loaded("libpython"), "libpython is loaded before any plugin");
  EXPECT(!is_loaded("libpyscheduler"), "libpyscheduler is loaded before any plugin");

  plugin a, b;
  load(&a, argv[1]);
  EXPECT(is_loaded("libpython"), "the plugin did not bring libpython");
  /* RTLD_LOCAL: neither the plugin's nor libpython's symbols are global yet. */
  EXPECT(dlsym(RTLD_DEFAULT, "plugin_start") == NULL, "plugin symbols are global");
  if (dlsym(RTLD_DEFAULT, "PyObject_SelfIter") != NULL) {
    printf("dlopen_host: note: libpython was already global after dlopen\n");
  }

  msg[0] = '\0';
  int rc = a.start(python_dir, msg, sizeof msg);
  EXPECT(rc == 0, "plugin A start: %s", msg);
  if (rc != 0) {
    return 1;
  }
  printf("dlopen_host: plugin A started: %s\n", msg);
  /* pyscheduler promoted libpython to global scope: that is what lets numpy's C
   * extensions resolve PyObject_SelfIter and friends. */
  EXPECT(dlsym(RTLD_DEFAULT, "PyObject_SelfIter") != NULL,
         "libpython's symbols are not global after the interpreter started");

  rc = a.run(300, msg, sizeof msg);
  EXPECT(rc == 0, "plugin A run: %s", msg);
  printf("dlopen_host: plugin A: %s\n", msg);

  load(&b, argv[2]);
  EXPECT(b.dl != a.dl, "the two plugins are the same object");
  rc = b.start(python_dir, msg, sizeof msg);
  EXPECT(rc == 0, "plugin B start: %s", msg);
  rc = b.run(300, msg, sizeof msg);
  EXPECT(rc == 0, "plugin B run: %s", msg);
  printf("dlopen_host: plugin B: %s\n", msg);

  size_t addr_a = a.state_address(), addr_b = b.state_address();
  printf("dlopen_host: shared state A=%#zx B=%#zx, live handles %llu\n", addr_a, addr_b,
         (unsigned long long)a.arc_count());
  EXPECT(addr_a != 0 && addr_a == addr_b, "state differs: %#zx vs %#zx", addr_a, addr_b);
  /* Each plugin holds a manager and a handler. */
  EXPECT(a.arc_count() == 4 && b.arc_count() == 4, "arc counts %llu / %llu, expected 4",
         (unsigned long long)a.arc_count(), (unsigned long long)b.arc_count());

  /* Interleaved use of both plugins. */
  for (int i = 0; i < 3; i++) {
    EXPECT(a.run(50, msg, sizeof msg) == 0, "A: %s", msg);
    EXPECT(b.run(50, msg, sizeof msg) == 0, "B: %s", msg);
  }

  b.stop();
  EXPECT(a.arc_count() == 2, "after B stopped: %llu", (unsigned long long)a.arc_count());
  EXPECT(a.state_address() == addr_a, "state moved while A is alive");
  EXPECT(a.run(20, msg, sizeof msg) == 0, "A after B stopped: %s", msg);
  a.stop();
  EXPECT(a.arc_count() == 0 && b.state_address() == 0, "state still alive");

  /* The plugins stay loaded (UDL hosts keep them): exit with the interpreter running. */
  if (failures) {
    fprintf(stderr, "dlopen_host: %d failure(s)\n", failures);
    return 1;
  }
  printf("dlopen_host: all checks passed\n");
  return 0;
}
