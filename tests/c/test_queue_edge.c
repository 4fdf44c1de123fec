/* Items that finish while pysched_handler_queue is still returning, and commit
 * callbacks that break their contract. The header promises: an accepted item returns
 * PYSCHED_OK and its future holds the outcome (whatever the worker did meanwhile); an
 * error status means the item was refused, not that it already ran. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "test_util.h"
#include "item_ctx.h"

#include <pthread.h>

static pysched_manager *manager;

/* Many producer threads on two cores: a producer is often preempted right after its
 * item became visible to the workers and before pysched_handler_queue returns, so some
 * items finish (succeed or fail) inside the call. Each must still be reported as
 * accepted, with its outcome in its future. A deadline on the items makes the window
 * after the hand-off a little longer (the timer is armed there). */
enum { RACE_THREADS = 8, RACE_PER_THREAD = 4000 };

typedef struct {
  pysched_handler *h;
  int fail_commit;
  int lost;          /* success whose result was gone from the future */
  int refused;       /* accepted item reported as an error by queue */
  int wrong;         /* callbacks not exactly once, or a wrong value */
  pysched_status first_status;
  char first_message[200];
} race_arg;

static void *race_producer(void *p) {
  race_arg *a = (race_arg *)p;
  for (int i = 0; i < RACE_PER_THREAD; i++) {
    item_ctx c;
    item_reset(&c, i);
    c.commit_mode = a->fail_commit ? COMMIT_FAIL : COMMIT_INT;
    pysched_item item = make_item(&c);
    item.timeout_us = 60000000u;
    pysched_future *f = NULL;
    pysched_error *err = NULL;
    pysched_status st = pysched_handler_queue(a->h, &item, &f, &err);
    if (st != PYSCHED_OK) {
      if (a->refused++ == 0) {
        a->first_status = st;
        snprintf(a->first_message, sizeof a->first_message, "%s", pysched_error_message(err));
      }
      pysched_error_free(err);
      err = NULL;
    } else {
      pysched_future_wait(f, NULL);
      PyObject *obj = NULL;
      st = pysched_future_take(f, &obj, &err);
      pysched_status want = a->fail_commit ? PYSCHED_COMMIT : PYSCHED_OK;
      if (st != want) {
        if (a->lost++ == 0) {
          a->first_status = st;
          snprintf(a->first_message, sizeof a->first_message, "%s", pysched_error_message(err));
        }
      } else if (obj != NULL) {
        PyGILState_STATE g = PyGILState_Ensure();
        a->wrong += PyLong_AsLong(obj) != 2L * i;
        Py_DECREF(obj);
        PyGILState_Release(g);
      }
      pysched_error_free(err);
      pysched_future_free(f);
    }
    /* Wait for the callbacks (an item whose future was never handed out). */
    uint64_t give_up = now_us() + 5000000u;
    while (atomic_load(&c.drops) == 0 && now_us() < give_up) {
      sleep_us(100);
    }
    a->wrong += atomic_load(&c.completes) != 1 || atomic_load(&c.drops) != 1 ||
                atomic_load(&c.bad_calls) != 0;
  }
  return NULL;
}

static void run_race(const char *entry, int fail_commit) {
  pysched_handler *h = test_load(manager, "pysched_testmod", entry, NULL);
  pthread_t t[RACE_THREADS];
  race_arg a[RACE_THREADS];
  for (int k = 0; k < RACE_THREADS; k++) {
    memset(&a[k], 0, sizeof a[k]);
    a[k].h = h;
    a[k].fail_commit = fail_commit;
    REQUIRE(pthread_create(&t[k], NULL, race_producer, &a[k]) == 0);
  }
  int lost = 0, refused = 0, wrong = 0;
  const race_arg *first = NULL;
  for (int k = 0; k < RACE_THREADS; k++) {
    pthread_join(t[k], NULL);
    lost += a[k].lost;
    refused += a[k].refused;
    wrong += a[k].wrong;
    if (!first && (a[k].lost || a[k].refused)) {
      first = &a[k];
    }
  }
  CHECK(wrong == 0);
  if (lost || refused) {
    fprintf(stderr,
            "BUG: %s: of %d items that could finish inside pysched_handler_queue, %d "
            "were reported as refused and %d lost their outcome (first: %s: %s)\n",
            entry, RACE_THREADS * RACE_PER_THREAD, refused, lost,
            pysched_status_name((int32_t)first->first_status), first->first_message);
    test_failures++;
  }
  pysched_handler_free(h);
}

static void test_fast_success_keeps_its_result(void) { run_race("double", 0); }

/* An item that fails on its worker (here: its commit) was accepted: queue returns OK and
 * the failure is in the future, not in queue's status. */
static void test_fast_failure_is_not_a_refusal(void) { run_race("identity", 1); }

/* The header: a commit returning NULL fails the item with PYSCHED_COMMIT. */
static void test_commit_null_without_exception(void) {
  pysched_handler_options o = test_options(2);
  o.max_batch_delay_us = 100000;
  pysched_handler *h = test_load(manager, "pysched_testmod", "identity", &o);
  item_ctx c;
  item_reset(&c, 0);
  c.commit_mode = COMMIT_FAIL_NO_EXC;
  pysched_item item = make_item(&c);
  pysched_future *f = NULL;
  pysched_error *err = NULL;
  REQUIRE(CHECK_STATUS(PYSCHED_OK, pysched_handler_queue(h, &item, &f, &err)) ==
          PYSCHED_OK);
  CHECK_STATUS(PYSCHED_OK, pysched_future_wait(f, &err));
  CHECK_ONCE(&c);
  if (c.kind != PYSCHED_COMMIT) {
    fprintf(stderr,
            "BUG: commit returning NULL without an exception fails the item with %s "
            "(%s), the header says PYSCHED_COMMIT\n",
            pysched_status_name((int32_t)c.kind), c.message);
    test_failures++;
  }
  /* No Python exception may be left behind on the worker: the next item is fine. */
  item_reset(&c, 4);
  item = make_item(&c);
  pysched_future *f2 = NULL;
  REQUIRE(CHECK_STATUS(PYSCHED_OK, pysched_handler_queue(h, &item, &f2, &err)) ==
          PYSCHED_OK);
  CHECK_STATUS(PYSCHED_OK, pysched_future_wait(f2, &err));
  CHECK(c.ok && c.result == 4);
  pysched_future_free(f);
  pysched_future_free(f2);
  pysched_handler_free(h);
}

int main(void) {
  manager = test_manager();
  test_commit_null_without_exception();
  test_fast_failure_is_not_a_refusal();
  test_fast_success_keeps_its_result();
  pysched_manager_free(manager);
  return test_finish("test_queue_edge");
}
