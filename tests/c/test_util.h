/* Shared helpers of the C tests: checks that report file:line and keep going, status
 * checks that print the error object, and a manager with tests/python on sys.path.
 *
 * Include after <Python.h> when the test uses the CPython C-API. */
#ifndef PYSCHED_TEST_UTIL_H
#define PYSCHED_TEST_UTIL_H

/* clock_gettime/nanosleep under -std=c11 (Python.h, when included first, already
 * asks for them). */
#if !defined(_POSIX_C_SOURCE) && !defined(_GNU_SOURCE)
#define _POSIX_C_SOURCE 200809L
#endif

#include "pyscheduler.h"
#include "tsan_annotations.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <poll.h>
#include <unistd.h>

#ifndef PYSCHED_TEST_PYTHON_DIR
#error "compile with -DPYSCHED_TEST_PYTHON_DIR=\"<repo>/tests/python\""
#endif

static int test_failures = 0;

/* The tests' one hand-off point for TSan: callbacks acquire it on entry and release
 * it on exit, the thread that queues releases it (make_item), and every check acquires
 * it before reading what callbacks wrote. Coarse, but the code under test (the Rust
 * core) is not instrumented anyway; this only keeps TSan from flagging the tests' own
 * bookkeeping. */
static char test_handoff;

#define CHECK(cond)                                                               \
  do {                                                                            \
    tsan_acquire(&test_handoff);                                                  \
    if (!(cond)) {                                                                \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);    \
      test_failures++;                                                            \
    }                                                                             \
  } while (0)

/* A failed REQUIRE ends the test program: later steps depend on it. */
#define REQUIRE(cond)                                                             \
  do {                                                                            \
    tsan_acquire(&test_handoff);                                                  \
    if (!(cond)) {                                                                \
      fprintf(stderr, "%s:%d: REQUIRE failed: %s\n", __FILE__, __LINE__, #cond);  \
      exit(1);                                                                    \
    }                                                                             \
  } while (0)

/* Checks that `expr` (a call taking `&err` as its out_error) returns `expected`; on
 * mismatch prints the error object. Frees the error either way. Evaluates to the status. */
#define CHECK_STATUS(expected, expr)                                              \
  check_status_impl(__FILE__, __LINE__, #expr, (expected), (expr), &err)

static inline pysched_status check_status_impl(const char *file, int line,
                                               const char *text,
                                               pysched_status expected,
                                               pysched_status got,
                                               pysched_error **err) {
  if (got != expected) {
    fprintf(stderr, "%s:%d: %s returned %s (%d), expected %s: %s\n", file, line,
            text, pysched_status_name((int32_t)got), (int)got,
            pysched_status_name((int32_t)expected),
            *err ? pysched_error_message(*err) : "(no error object)");
    test_failures++;
  } else if (got != PYSCHED_OK) {
    /* Every error status comes with an error object of that kind and a message. */
    if (*err == NULL) {
      fprintf(stderr, "%s:%d: %s: status %s without an error object\n", file, line,
              text, pysched_status_name((int32_t)got));
      test_failures++;
    } else {
      if (pysched_error_kind(*err) != got) {
        fprintf(stderr, "%s:%d: %s: error kind %d differs from status %d\n", file,
                line, text, (int)pysched_error_kind(*err), (int)got);
        test_failures++;
      }
      if (pysched_error_message(*err)[0] == '\0') {
        fprintf(stderr, "%s:%d: %s: empty error message\n", file, line, text);
        test_failures++;
      }
    }
  } else if (*err != NULL) {
    fprintf(stderr, "%s:%d: %s: success but an error object was written\n", file,
            line, text);
    test_failures++;
  }
  pysched_error_free(*err);
  *err = NULL;
  return got;
}

static inline int contains(const char *haystack, const char *needle) {
  return haystack != NULL && strstr(haystack, needle) != NULL;
}

#define CHECK_CONTAINS(haystack, needle)                                          \
  do {                                                                            \
    tsan_acquire(&test_handoff);                                                  \
    const char *h_ = (haystack);                                                  \
    if (!contains(h_, (needle))) {                                                \
      fprintf(stderr, "%s:%d: \"%s\" does not contain \"%s\"\n", __FILE__,        \
              __LINE__, h_ ? h_ : "(null)", (needle));                            \
      test_failures++;                                                            \
    }                                                                             \
  } while (0)

static inline uint64_t now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static inline void sleep_us(uint64_t us) {
  struct timespec ts = {(time_t)(us / 1000000u), (long)(us % 1000000u) * 1000L};
  while (nanosleep(&ts, &ts) != 0) {
  }
}

/* "The call has started", signalled from inside Python: a pipe whose write end is
 * passed to pysched_testmod.signal_then_sleep, which writes one byte to it before it
 * sleeps. call_started_wait returns 1 once that byte arrived, 0 after `timeout_ms`. */
typedef struct {
  int read_fd;
  int write_fd;
} call_started;

static inline void call_started_init(call_started *s) {
  int fds[2];
  REQUIRE(pipe(fds) == 0);
  s->read_fd = fds[0];
  s->write_fd = fds[1];
}

static inline int call_started_wait(const call_started *s, int timeout_ms) {
  struct pollfd p = {s->read_fd, POLLIN, 0};
  char byte;
  return poll(&p, 1, timeout_ms) == 1 && read(s->read_fd, &byte, 1) == 1;
}

/* A manager with the test modules on sys.path; ends the program if that fails. */
static inline pysched_manager *test_manager(void) {
  pysched_manager *m = NULL;
  pysched_error *err = NULL;
  REQUIRE(CHECK_STATUS(PYSCHED_OK, pysched_manager_new(NULL, &m, &err)) ==
          PYSCHED_OK);
  REQUIRE(m != NULL);
  REQUIRE(CHECK_STATUS(PYSCHED_OK, pysched_manager_add_path(
                                       m, PYSCHED_TEST_PYTHON_DIR, &err)) ==
          PYSCHED_OK);
  return m;
}

static inline pysched_handler *test_load(pysched_manager *m, const char *module,
                                         const char *entry,
                                         const pysched_handler_options *options) {
  pysched_handler *h = NULL;
  pysched_error *err = NULL;
  REQUIRE(CHECK_STATUS(PYSCHED_OK, pysched_manager_load(m, module, entry, options,
                                                       &h, &err)) == PYSCHED_OK);
  REQUIRE(h != NULL);
  return h;
}

static inline pysched_handler_options test_options(uint32_t batch) {
  pysched_handler_options o = pysched_handler_options_default();
  o.batch_size = batch;
  return o;
}

static inline int test_finish(const char *name) {
  if (test_failures) {
    fprintf(stderr, "%s: %d check(s) failed\n", name, test_failures);
    return 1;
  }
  printf("%s: all checks passed\n", name);
  return 0;
}

#endif /* PYSCHED_TEST_UTIL_H */
