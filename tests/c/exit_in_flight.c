/* A process that exits with work in flight must exit cleanly (status 0, no crash, no
 * hang): run once per mode by CTest, which fails it on a non-zero status, a signal, a
 * timeout or a fatal message on stderr. Python never finalizes, so nothing may wait
 * for the workers or touch the interpreter at exit.
 *
 * usage: exit_in_flight <mode>
 *   queued         thousands of items queued on live handlers; main returns
 *   long_call      a worker is inside a 120 s time.sleep (GIL released); main returns
 *   spin           a worker runs pure-Python bytecode (holds the GIL); main returns
 *   sync_thread    another thread is inside a 120 s pysched_handler_call; main returns
 *   gil_main       main holds the GIL while workers wait for it; main returns
 *   manager_freed  managers freed, handlers alive with queued items; main returns
 *   deadlines      items with pending deadlines and a batch-delay timer; main returns
 *   exit_thread    another thread calls exit(0) while main waits on a future */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "test_util.h"

#include <pthread.h>
#include <stdatomic.h>

static atomic_int committed;

static PyObject *commit_value(void *user_data) {
  atomic_fetch_add(&committed, 1);
  return PyLong_FromLong((long)(intptr_t)user_data);
}

static void drop_noop(void *user_data) { (void)user_data; }

static int complete_noop(void *user_data, PyObject *result, const pysched_error *error) {
  (void)user_data;
  (void)result;
  (void)error;
  return 0;
}

static pysched_future *queue_value(pysched_handler *h, long value, uint64_t timeout_us,
                                   int want_future) {
  pysched_item item;
  memset(&item, 0, sizeof item);
  item.user_data = (void *)(intptr_t)value;
  item.commit = commit_value;
  item.complete = complete_noop;
  item.drop = drop_noop;
  item.timeout_us = timeout_us;
  pysched_future *f = NULL;
  pysched_error *err = NULL;
  REQUIRE(CHECK_STATUS(PYSCHED_OK, pysched_handler_queue(h, &item, want_future ? &f : NULL,
                                                        &err)) == PYSCHED_OK);
  return f;
}

static void wait_committed(int n) {
  uint64_t give_up = now_us() + 10000000u;
  while (atomic_load(&committed) < n && now_us() < give_up) {
    sleep_us(500);
  }
  REQUIRE(atomic_load(&committed) >= n);
}

typedef struct {
  pysched_handler *h;
  call_started started; /* written to from inside the Python call */
} thread_arg;

static void *sync_sleeper(void *p) {
  thread_arg *a = (thread_arg *)p;
  PyGILState_STATE g = PyGILState_Ensure();
  PyObject *args = Py_BuildValue("(id)", a->started.write_fd, 120.0);
  PyGILState_Release(g);
  PyObject *out = NULL;
  pysched_handler_call(a->h, args, NULL, &out, NULL);
  fprintf(stderr, "exit_in_flight: the 120 s call returned: the process did not exit\n");
  return NULL;
}

static void *exiter(void *p) {
  (void)p;
  sleep_us(100000);
  printf("exit_in_flight: exit(0) from another thread\n");
  fflush(stdout);
  exit(0);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s <mode>\n", argv[0]);
    return 2;
  }
  const char *mode = argv[1];
  pysched_manager *m = test_manager();
  pysched_handler_options o = pysched_handler_options_default();

  if (strcmp(mode, "queued") == 0) {
    pysched_handler *h = test_load(m, "pysched_testmod", "sleep_ms", &o);
    o.batch_size = 4;
    pysched_handler *h2 = test_load(m, "pysched_testmod", "double", &o);
    for (int i = 0; i < 2000; i++) {
      queue_value(h, 5, 0, i % 2);
      queue_value(h2, i, 0, 0);
    }
    wait_committed(1);
  } else if (strcmp(mode, "long_call") == 0) {
    pysched_handler *h = test_load(m, "pysched_testmod", "sleep_ms", &o);
    queue_value(h, 120000, 0, 1);
    queue_value(h, 1, 0, 1);
    wait_committed(1);
    sleep_us(50000);
  } else if (strcmp(mode, "spin") == 0) {
    pysched_handler *h = test_load(m, "pysched_testmod", "spin", &o);
    pysched_handler *h2 = test_load(m, "pysched_testmod", "double", &o);
    queue_value(h, 2000000000L, 0, 1);
    wait_committed(1);
    for (int i = 0; i < 100; i++) {
      queue_value(h2, i, 0, 0); /* waiting for the GIL the spinner holds */
    }
    sleep_us(50000);
  } else if (strcmp(mode, "sync_thread") == 0) {
    static thread_arg a;
    a.h = test_load(m, "pysched_testmod", "signal_then_sleep", &o);
    call_started_init(&a.started);
    pthread_t t;
    REQUIRE(pthread_create(&t, NULL, sync_sleeper, &a) == 0);
    REQUIRE(call_started_wait(&a.started, 10000)); /* inside the 120 s call */
  } else if (strcmp(mode, "gil_main") == 0) {
    pysched_handler *h = test_load(m, "pysched_testmod", "double", &o);
    PyGILState_Ensure();
    for (int i = 0; i < 100; i++) {
      queue_value(h, i, 0, 1);
    }
    sleep_us(20000);
    /* Returns holding the GIL. */
  } else if (strcmp(mode, "manager_freed") == 0) {
    pysched_handler *h = test_load(m, "pysched_testmod", "sleep_ms", &o);
    pysched_manager *m2 = test_manager();
    pysched_handler *h2 = test_load(m2, "pysched_testmod", "sleep_ms", &o);
    for (int i = 0; i < 100; i++) {
      queue_value(h, 10, 0, 0);
      queue_value(h2, 10, 0, 0);
    }
    pysched_manager_free(m2);
    pysched_manager_free(m);
    wait_committed(2);
    return 0;
  } else if (strcmp(mode, "deadlines") == 0) {
    o.batch_size = 1000;
    o.max_batch_delay_us = 30000000; /* a 30 s batch-delay timer */
    pysched_handler *h = test_load(m, "pysched_testmod", "double", &o);
    o.batch_size = 1;
    o.max_batch_delay_us = 0;
    pysched_handler *slow = test_load(m, "pysched_testmod", "sleep_ms", &o);
    queue_value(slow, 60000, 0, 0);
    for (int i = 0; i < 50; i++) {
      queue_value(h, i, 0, 0);
      queue_value(slow, 1, 60000000u + (uint64_t)i, 0); /* deadlines in the timer */
    }
    wait_committed(1);
  } else if (strcmp(mode, "exit_thread") == 0) {
    pysched_handler *h = test_load(m, "pysched_testmod", "sleep_ms", &o);
    pysched_future *f = queue_value(h, 120000, 0, 1);
    wait_committed(1);
    pthread_t t;
    REQUIRE(pthread_create(&t, NULL, exiter, NULL) == 0);
    pysched_future_wait(f, NULL);
    fprintf(stderr, "exit_in_flight: the 120 s item finished: exit() did not end the process\n");
    return 1;
  } else {
    fprintf(stderr, "unknown mode %s\n", mode);
    return 2;
  }
  printf("exit_in_flight %s: returning from main with work in flight\n", mode);
  return test_failures ? 1 : 0;
}
