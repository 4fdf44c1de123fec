/* Queued items through the C ABI, as a C caller drives them: commit builds the item
 * with the CPython C-API, and `complete` + `drop` must run exactly once per item on
 * every path: success, commit failure, Python exception, wrong result, cancel,
 * deadline, full queue, shutdown, NULL handler. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "test_util.h"
#include "item_ctx.h"

#include <pthread.h>

static pysched_manager *manager;

static pysched_status queue_ctx(pysched_handler *h, item_ctx *c,
                                pysched_future **out_future) {
  pysched_item item = make_item(c);
  pysched_error *err = NULL;
  pysched_status st = pysched_handler_queue(h, &item, out_future, &err);
  if (st != PYSCHED_OK) {
    CHECK(err != NULL && pysched_error_kind(err) == st);
    if (getenv("PYSCHED_TEST_VERBOSE")) {
      fprintf(stderr, "queue(%ld): %s: %s\n", c->value, pysched_status_name((int32_t)st),
              err ? pysched_error_message(err) : "");
    }
  } else {
    CHECK(err == NULL);
  }
  pysched_error_free(err);
  return st;
}

static void wait_ok(pysched_future *f) {
  pysched_error *err = NULL;
  CHECK_STATUS(PYSCHED_OK, pysched_future_wait(f, &err));
}

static void drain(pysched_handler *h) {
  pysched_error *err = NULL;
  CHECK_STATUS(PYSCHED_OK, pysched_handler_drain(h, &err));
}

/* Queues a slow item (`value` is what the handler's function sleeps on: ms for
 * pysched_testmod.sleep_ms, -ms for pysched_ctest.sleep_or_double) and returns once its
 * Python call has started, so that items queued next wait behind it. Tests queue
 * behind a blocker (or a batch delay) whenever an item could otherwise finish before
 * pysched_handler_queue returns: that race is tested on its own in test_queue_edge.c. */
static pysched_future *start_blocker(pysched_handler *h, item_ctx *c, long value) {
  item_reset(c, value);
  pysched_future *f = NULL;
  REQUIRE(queue_ctx(h, c, &f) == PYSCHED_OK);
  wait_item_started(c);
  return f;
}

static long take_long(pysched_future *f, pysched_status *status) {
  PyObject *obj = NULL;
  pysched_error *err = NULL;
  *status = pysched_future_take(f, &obj, &err);
  long v = -1;
  if (*status == PYSCHED_OK) {
    PyGILState_STATE g = PyGILState_Ensure();
    v = PyLong_AsLong(obj);
    Py_DECREF(obj);
    PyGILState_Release(g);
  }
  pysched_error_free(err);
  return v;
}

static pysched_stats stats_of(pysched_handler *h) {
  pysched_stats s;
  pysched_error *err = NULL;
  memset(&s, 0, sizeof s);
  CHECK_STATUS(PYSCHED_OK, pysched_handler_stats(h, &s, &err));
  return s;
}

static void check_counters_add_up(pysched_handler *h) {
  pysched_stats s = stats_of(h);
  uint64_t finished = s.completed + s.failed + s.cancelled + s.expired + s.rejected;
  if (finished != s.total_enqueued || s.commit_queue_size || s.execute_queue_size) {
    fprintf(stderr,
            "%s: counters do not add up: enqueued=%llu completed=%llu failed=%llu "
            "cancelled=%llu expired=%llu rejected=%llu queues=%llu/%llu\n",
            pysched_handler_name(h), (unsigned long long)s.total_enqueued,
            (unsigned long long)s.completed, (unsigned long long)s.failed,
            (unsigned long long)s.cancelled, (unsigned long long)s.expired,
            (unsigned long long)s.rejected, (unsigned long long)s.commit_queue_size,
            (unsigned long long)s.execute_queue_size);
    test_failures++;
  }
}

static void test_success_and_per_item_commit_failures(void) {
  pysched_handler_options o = test_options(8);
  pysched_handler *h = test_load(manager, "pysched_ctest", "sleep_or_double", &o);
  item_ctx blocker;
  pysched_future *bf = start_blocker(h, &blocker, -200);
  enum { N = 400 };
  static item_ctx ctx[N];
  pysched_future *fut[N];
  for (int i = 0; i < N; i++) {
    item_reset(&ctx[i], i);
    if (i % 7 == 3) {
      ctx[i].commit_mode = COMMIT_FAIL;
    }
    REQUIRE(queue_ctx(h, &ctx[i], &fut[i]) == PYSCHED_OK);
  }
  for (int i = 0; i < N; i++) {
    wait_ok(fut[i]);
    CHECK(pysched_future_is_ready(fut[i]));
    pysched_status st;
    long v = take_long(fut[i], &st);
    if (i % 7 == 3) {
      CHECK(st == PYSCHED_COMMIT);
      CHECK(!ctx[i].ok && ctx[i].kind == PYSCHED_COMMIT);
      CHECK_CONTAINS(ctx[i].message, "ValueError");
      CHECK_CONTAINS(ctx[i].message, "commit refused");
      CHECK(strcmp(ctx[i].python_type, "ValueError") == 0);
    } else {
      CHECK(st == PYSCHED_OK && v == 2 * i);
      CHECK(ctx[i].ok && ctx[i].result == 2 * i);
      CHECK(ctx[i].gil_in_commit);
    }
    CHECK(atomic_load(&ctx[i].commits) == 1);
    CHECK(atomic_load(&ctx[i].prepares) == 0);
    CHECK_ONCE(&ctx[i]);
    pysched_future_free(fut[i]);
  }
  wait_ok(bf);
  CHECK(blocker.ok && blocker.result == 200);
  CHECK_ONCE(&blocker);
  pysched_future_free(bf);
  pysched_stats s = stats_of(h);
  CHECK(s.total_enqueued == N + 1);
  CHECK(s.failed == (N + 3) / 7);
  CHECK(s.completed == N + 1 - s.failed);
  check_counters_add_up(h);
  pysched_handler_free(h);
}

/* prepare runs on a worker without the GIL, before commit; a failing prepare fails
 * only its item (queued with prefetch 1 so nothing finishes while it is being queued).
 * That preparation overlaps a running batch is tested in test_prefetch.c. */
static void run_prepare_case(uint32_t prefetch, int fail_every) {
  pysched_handler_options o = test_options(4);
  o.prefetch_depth = prefetch;
  pysched_handler *h = test_load(manager, "pysched_ctest", "sleep_or_double", &o);
  item_ctx blocker;
  pysched_future *bf = start_blocker(h, &blocker, -200);
  enum { N = 64 };
  static item_ctx ctx[N];
  pysched_future *fut[N];
  for (int i = 0; i < N; i++) {
    item_reset(&ctx[i], i);
    ctx[i].prepare_rc = (fail_every && i % fail_every == 0) ? 7 : 0;
    pysched_item item = make_item(&ctx[i]);
    item.prepare = item_prepare;
    pysched_error *err = NULL;
    REQUIRE(CHECK_STATUS(PYSCHED_OK,
                         pysched_handler_queue(h, &item, &fut[i], &err)) ==
            PYSCHED_OK);
  }
  for (int i = 0; i < N; i++) {
    wait_ok(fut[i]);
    pysched_status st;
    long v = take_long(fut[i], &st);
    CHECK(atomic_load(&ctx[i].prepares) == 1);
    CHECK(ctx[i].gil_in_prepare == 0);
    if (ctx[i].prepare_rc) {
      CHECK(st == PYSCHED_COMMIT && ctx[i].kind == PYSCHED_COMMIT);
      CHECK(atomic_load(&ctx[i].commits) == 0);
      CHECK_CONTAINS(ctx[i].message, "prepare");
    } else {
      CHECK(st == PYSCHED_OK && v == 2 * i && ctx[i].ok);
      CHECK(atomic_load(&ctx[i].commits) == 1);
    }
    CHECK_ONCE(&ctx[i]);
    pysched_future_free(fut[i]);
  }
  wait_ok(bf);
  CHECK_ONCE(&blocker);
  pysched_future_free(bf);
  check_counters_add_up(h);
  pysched_handler_free(h);
}

static void test_prepare_runs_without_gil_before_commit(void) {
  run_prepare_case(2, 0);
  run_prepare_case(1, 5);
}

/* Runs a batch of `n` items through `entry` and expects each to fail with `kind`,
 * with the given Python type and text in the message. */
static void expect_batch_failure(const char *entry, pysched_status kind,
                                 const char *python_type, const char *text,
                                 int want_traceback) {
  /* One batch held back by the batch delay until all items are queued. */
  enum { N = 12 };
  pysched_handler_options o = test_options(N + 4);
  o.max_batch_delay_us = 300000;
  pysched_handler *h = test_load(manager, "pysched_testmod", entry, &o);
  item_ctx ctx[N];
  pysched_future *fut[N];
  for (int i = 0; i < N; i++) {
    item_reset(&ctx[i], i);
    REQUIRE(queue_ctx(h, &ctx[i], &fut[i]) == PYSCHED_OK);
  }
  for (int i = 0; i < N; i++) {
    wait_ok(fut[i]);
    PyObject *obj = NULL;
    pysched_error *err = NULL;
    pysched_status st = pysched_future_take(fut[i], &obj, &err);
    CHECK(st == kind);
    CHECK(obj == NULL);
    CHECK(err != NULL && pysched_error_kind(err) == kind);
    CHECK_CONTAINS(pysched_error_message(err), text);
    CHECK(strcmp(pysched_error_python_type(err), python_type) == 0);
    if (want_traceback) {
      CHECK_CONTAINS(pysched_error_traceback(err), entry);
      CHECK_CONTAINS(pysched_error_traceback(err), "pysched_testmod.py");
    }
    pysched_error_free(err);
    CHECK(!ctx[i].ok && ctx[i].kind == kind);
    CHECK_CONTAINS(ctx[i].message, text);
    CHECK(strcmp(ctx[i].python_type, python_type) == 0);
    CHECK(ctx[i].has_traceback == want_traceback);
    CHECK_ONCE(&ctx[i]);
    pysched_future_free(fut[i]);
  }
  pysched_stats s = stats_of(h);
  CHECK(s.failed == N && s.completed == 0);
  check_counters_add_up(h);
  pysched_handler_free(h);
}

static void test_python_failures(void) {
  expect_batch_failure("raise_value_error", PYSCHED_PYTHON_EXCEPTION, "ValueError",
                       "bad batch of 12", 1);
  expect_batch_failure("wrong_length", PYSCHED_PYTHON_EXCEPTION, "",
                       "must return a sequence of 12", 0);
  expect_batch_failure("not_a_sequence", PYSCHED_PYTHON_EXCEPTION, "", "int", 0);
  expect_batch_failure("returns_generator", PYSCHED_PYTHON_EXCEPTION, "", "generator",
                       0);
  /* Neither ends the process nor escapes as an exit. */
  expect_batch_failure("call_sys_exit", PYSCHED_PYTHON_EXCEPTION, "SystemExit",
                       "SystemExit", 1);
  expect_batch_failure("raise_keyboard_interrupt", PYSCHED_PYTHON_EXCEPTION,
                       "KeyboardInterrupt", "KeyboardInterrupt", 1);
}

static void test_complete_failure_counts_as_callback_error(void) {
  pysched_handler_options o = test_options(2);
  o.max_batch_delay_us = 200000;
  pysched_handler *h = test_load(manager, "pysched_testmod", "identity", &o);
  item_ctx c;
  item_reset(&c, 5);
  c.complete_rc = 3;
  pysched_future *f = NULL;
  REQUIRE(queue_ctx(h, &c, &f) == PYSCHED_OK);
  wait_ok(f);
  pysched_status st;
  take_long(f, &st);
  CHECK(st == PYSCHED_CALLBACK);
  CHECK(c.ok && c.result == 5);
  CHECK_ONCE(&c);
  pysched_stats s = stats_of(h);
  CHECK(s.failed == 1 && s.completed == 0);
  pysched_future_free(f);
  pysched_handler_free(h);
}

static void test_fire_and_forget(void) {
  pysched_handler_options o = test_options(16);
  pysched_handler *h = test_load(manager, "pysched_testmod", "double", &o);
  enum { N = 300 };
  static item_ctx ctx[N];
  for (int i = 0; i < N; i++) {
    item_reset(&ctx[i], i);
    REQUIRE(queue_ctx(h, &ctx[i], NULL) == PYSCHED_OK);
  }
  drain(h);
  for (int i = 0; i < N; i++) {
    CHECK(ctx[i].ok && ctx[i].result == 2 * i);
    CHECK_ONCE(&ctx[i]);
  }
  pysched_handler_free(h);
  /* Without complete/drop callbacks at all. */
  h = test_load(manager, "pysched_ctest", "sleep_or_double", NULL);
  item_ctx blocker;
  pysched_future *bf = start_blocker(h, &blocker, -100);
  pysched_item bare;
  memset(&bare, 0, sizeof bare);
  item_ctx c;
  item_reset(&c, 9);
  bare.user_data = &c;
  bare.commit = item_commit;
  tsan_release(&test_handoff); /* what make_item does */
  pysched_future *f = NULL;
  pysched_error *err = NULL;
  REQUIRE(CHECK_STATUS(PYSCHED_OK, pysched_handler_queue(h, &bare, &f, &err)) ==
          PYSCHED_OK);
  wait_ok(f);
  pysched_status st;
  CHECK(take_long(f, &st) == 18 && st == PYSCHED_OK);
  CHECK(atomic_load(&c.commits) == 1);
  pysched_future_free(f);
  pysched_future_free(bf);
  check_counters_add_up(h);
  pysched_handler_free(h);
}

static void test_cancel(void) {
  pysched_handler *h = test_load(manager, "pysched_testmod", "sleep_ms", NULL);
  item_ctx blocker;
  pysched_future *bf = start_blocker(h, &blocker, 400);
  enum { N = 6 };
  item_ctx ctx[N];
  pysched_future *fut[N];
  for (int i = 0; i < N; i++) {
    item_reset(&ctx[i], 0);
    REQUIRE(queue_ctx(h, &ctx[i], &fut[i]) == PYSCHED_OK);
  }
  CHECK(!pysched_future_cancel(bf)); /* already running */
  for (int i = 1; i < N; i += 2) {
    CHECK(pysched_future_cancel(fut[i]));
    /* complete and drop ran on this thread before cancel returned. */
    CHECK(ctx[i].kind == PYSCHED_CANCELLED);
    CHECK_ONCE(&ctx[i]);
    CHECK(pysched_future_is_ready(fut[i]));
    CHECK(!pysched_future_cancel(fut[i]));
  }
  wait_ok(bf);
  for (int i = 0; i < N; i++) {
    wait_ok(fut[i]);
    pysched_status st;
    take_long(fut[i], &st);
    CHECK(st == ((i % 2) ? PYSCHED_CANCELLED : PYSCHED_OK));
    CHECK(atomic_load(&ctx[i].commits) == ((i % 2) ? 0 : 1));
    CHECK(!pysched_future_cancel(fut[i])); /* finished */
    CHECK_ONCE(&ctx[i]);
    pysched_future_free(fut[i]);
  }
  CHECK_ONCE(&blocker);
  pysched_future_free(bf);
  pysched_stats s = stats_of(h);
  CHECK(s.cancelled == N / 2);
  check_counters_add_up(h);
  pysched_handler_free(h);
}

static void test_deadline(void) {
  pysched_handler *h = test_load(manager, "pysched_testmod", "sleep_ms", NULL);
  item_ctx blocker;
  pysched_future *bf = start_blocker(h, &blocker, 600);
  item_ctx late, fine;
  item_reset(&late, 0);
  item_reset(&fine, 0);
  pysched_item item = make_item(&late);
  item.timeout_us = 50000;
  pysched_future *lf = NULL, *ff = NULL;
  pysched_error *err = NULL;
  uint64_t t0 = now_us();
  REQUIRE(CHECK_STATUS(PYSCHED_OK, pysched_handler_queue(h, &item, &lf, &err)) ==
          PYSCHED_OK);
  item = make_item(&fine);
  item.timeout_us = 60u * 1000000u;
  REQUIRE(CHECK_STATUS(PYSCHED_OK, pysched_handler_queue(h, &item, &ff, &err)) ==
          PYSCHED_OK);
  /* The deadline is enforced eagerly, while the blocker still runs. */
  CHECK_STATUS(PYSCHED_OK, pysched_future_wait_for(lf, 450000, &err));
  uint64_t waited = now_us() - t0;
  CHECK(waited >= 45000 && waited < 450000);
  CHECK(!pysched_future_is_ready(bf));
  CHECK(late.kind == PYSCHED_TIMED_OUT);
  CHECK_ONCE(&late);
  pysched_status st;
  take_long(lf, &st);
  CHECK(st == PYSCHED_TIMED_OUT);
  CHECK(atomic_load(&late.commits) == 0);
  wait_ok(ff);
  CHECK(take_long(ff, &st) == 0 && st == PYSCHED_OK);
  CHECK_ONCE(&fine);
  wait_ok(bf);
  pysched_future_free(bf);
  pysched_future_free(lf);
  pysched_future_free(ff);
  pysched_stats s = stats_of(h);
  CHECK(s.expired == 1);
  check_counters_add_up(h);
  pysched_handler_free(h);
}

/* Fire-and-forget items with a deadline (the timer can reach them: they are kept as
 * shared items) interleaved with plain ones (inline in the queue): the late ones expire
 * while the blocker runs, each reported once through `complete`, the others run in
 * order, and drain returns once all are accounted for. */
static void test_deadline_without_future(void) {
  pysched_handler_options o = test_options(8);
  pysched_handler *h = test_load(manager, "pysched_testmod", "sleep_ms", &o);
  item_ctx blocker;
  pysched_future *bf = start_blocker(h, &blocker, 300);
  enum { N = 40 };
  static item_ctx ctx[N];
  for (int i = 0; i < N; i++) {
    item_reset(&ctx[i], 0);
    pysched_item item = make_item(&ctx[i]);
    item.timeout_us = (i % 2) ? 20000 : 0;
    pysched_error *err = NULL;
    REQUIRE(CHECK_STATUS(PYSCHED_OK, pysched_handler_queue(h, &item, NULL, &err)) ==
            PYSCHED_OK);
  }
  drain(h);
  int prev_drop = -1;
  for (int i = 0; i < N; i++) {
    CHECK_ONCE(&ctx[i]);
    if (i % 2) {
      CHECK(!ctx[i].ok && ctx[i].kind == PYSCHED_TIMED_OUT);
      CHECK(atomic_load(&ctx[i].commits) == 0);
    } else {
      CHECK(ctx[i].ok && ctx[i].result == 0);
      CHECK(ctx[i].drop_seq > prev_drop); /* the plain ones in queueing order */
      prev_drop = ctx[i].drop_seq;
    }
  }
  wait_ok(bf);
  pysched_future_free(bf);
  pysched_stats s = stats_of(h);
  CHECK(s.expired == N / 2);
  CHECK(s.completed == N / 2 + 1);
  check_counters_add_up(h);
  pysched_handler_free(h);
}

static void test_queue_full_reject(void) {
  pysched_handler_options o = pysched_handler_options_default();
  o.max_queue = 2;
  o.full_policy = PYSCHED_FULL_REJECT;
  pysched_handler *h = test_load(manager, "pysched_testmod", "sleep_ms", &o);
  item_ctx blocker;
  pysched_future *bf = start_blocker(h, &blocker, 300);
  item_ctx a, b, c;
  item_reset(&a, 0);
  item_reset(&b, 0);
  item_reset(&c, 0);
  pysched_future *fa = NULL, *fb = NULL;
  pysched_future *fc = (pysched_future *)&c; /* sentinel: must stay untouched */
  CHECK(queue_ctx(h, &a, &fa) == PYSCHED_OK);
  CHECK(queue_ctx(h, &b, &fb) == PYSCHED_OK);
  CHECK(queue_ctx(h, &c, &fc) == PYSCHED_QUEUE_FULL);
  CHECK(fc == (pysched_future *)&c);
  /* Refused: both callbacks already ran, with the error. */
  CHECK(c.kind == PYSCHED_QUEUE_FULL);
  CHECK_CONTAINS(c.message, "full");
  CHECK_ONCE(&c);
  CHECK(atomic_load(&c.commits) == 0);
  wait_ok(fa);
  wait_ok(fb);
  CHECK(a.ok && b.ok);
  CHECK_ONCE(&a);
  CHECK_ONCE(&b);
  pysched_future_free(fa);
  pysched_future_free(fb);
  pysched_future_free(bf);
  pysched_stats s = stats_of(h);
  CHECK(s.rejected == 1);
  CHECK(s.total_enqueued == 4);
  check_counters_add_up(h);
  pysched_handler_free(h);
}

static void test_queue_full_block(void) {
  pysched_handler_options o = pysched_handler_options_default();
  o.max_queue = 1;
  o.full_policy = PYSCHED_FULL_BLOCK;
  o.block_timeout_us = 100000;
  pysched_handler *h = test_load(manager, "pysched_testmod", "sleep_ms", &o);
  item_ctx blocker, a, b;
  pysched_future *bf = start_blocker(h, &blocker, 500);
  item_reset(&a, 0);
  item_reset(&b, 0);
  pysched_future *fa = NULL, *fb = NULL;
  CHECK(queue_ctx(h, &a, &fa) == PYSCHED_OK);
  uint64_t t0 = now_us();
  CHECK(queue_ctx(h, &b, &fb) == PYSCHED_QUEUE_FULL);
  uint64_t blocked = now_us() - t0;
  CHECK(blocked >= 90000 && blocked < 450000);
  CHECK(fb == NULL);
  CHECK(b.kind == PYSCHED_QUEUE_FULL);
  CHECK_ONCE(&b);
  wait_ok(fa);
  CHECK_ONCE(&a);
  pysched_future_free(fa);
  pysched_future_free(bf);
  pysched_handler_free(h);

  /* Without a timeout the caller waits for room, then the item is accepted. */
  o.block_timeout_us = 0;
  h = test_load(manager, "pysched_testmod", "sleep_ms", &o);
  bf = start_blocker(h, &blocker, 200);
  item_reset(&a, 0);
  item_reset(&b, 0);
  CHECK(queue_ctx(h, &a, &fa) == PYSCHED_OK);
  t0 = now_us();
  CHECK(queue_ctx(h, &b, &fb) == PYSCHED_OK);
  CHECK(now_us() - t0 >= 50000);
  wait_ok(fb);
  CHECK(a.ok && b.ok);
  CHECK_ONCE(&a);
  CHECK_ONCE(&b);
  pysched_future_free(fa);
  pysched_future_free(fb);
  pysched_future_free(bf);
  check_counters_add_up(h);
  pysched_handler_free(h);
}

static void test_null_handler_and_bad_items(void) {
  item_ctx c;
  item_reset(&c, 1);
  pysched_item item = make_item(&c);
  pysched_future *f = (pysched_future *)&c;
  pysched_error *err = NULL;
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_handler_queue(NULL, &item, &f, &err));
  CHECK(f == (pysched_future *)&c);
  CHECK(c.kind == PYSCHED_INVALID_ARGUMENT);
  CHECK_CONTAINS(c.message, "handler");
  CHECK_ONCE(&c);
  CHECK(atomic_load(&c.commits) == 0);

  pysched_handler *h = test_load(manager, "pysched_testmod", "identity", NULL);
  item_reset(&c, 2);
  item = make_item(&c);
  item.commit = NULL;
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_handler_queue(h, &item, &f, &err));
  CHECK(c.kind == PYSCHED_INVALID_ARGUMENT);
  CHECK_CONTAINS(c.message, "commit");
  CHECK_ONCE(&c);

  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_handler_queue(h, NULL, &f, &err));
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_handler_queue(NULL, NULL, NULL, &err));
  /* NULL out_error is allowed on the error path as well. */
  item_reset(&c, 3);
  item = make_item(&c);
  CHECK(pysched_handler_queue(NULL, &item, NULL, NULL) == PYSCHED_INVALID_ARGUMENT);
  CHECK_ONCE(&c);
  check_counters_add_up(h);
  pysched_handler_free(h);
}

/* Freeing a handler drains it: every queued item finishes before free returns. */
static void test_free_drains(void) {
  pysched_handler_options o = test_options(5);
  pysched_handler *h = test_load(manager, "pysched_testmod", "sleep_ms", &o);
  enum { N = 200 };
  static item_ctx ctx[N];
  for (int i = 0; i < N; i++) {
    item_reset(&ctx[i], (i % 50 == 0) ? 5 : 0);
    REQUIRE(queue_ctx(h, &ctx[i], NULL) == PYSCHED_OK);
  }
  pysched_handler_free(h);
  for (int i = 0; i < N; i++) {
    CHECK(ctx[i].ok);
    CHECK_ONCE(&ctx[i]);
  }
}

/* A completion callback that frees its own handler must not deadlock; items queued
 * before still finish through their futures. The first item sleeps so that the others
 * are queued (long) before its callback frees the handle. */
static void test_free_from_own_callback(void) {
  pysched_handler *h = test_load(manager, "pysched_testmod", "sleep_ms", NULL);
  item_ctx first;
  item_reset(&first, 300);
  first.free_in_complete = h;
  pysched_future *ff = NULL;
  REQUIRE(queue_ctx(h, &first, &ff) == PYSCHED_OK);
  enum { N = 20 };
  item_ctx ctx[N];
  pysched_future *fut[N];
  for (int i = 0; i < N; i++) {
    item_reset(&ctx[i], 0);
    REQUIRE(queue_ctx(h, &ctx[i], &fut[i]) == PYSCHED_OK);
  }
  /* `h` is freed by first's callback from here on: not touched again. */
  wait_ok(ff);
  CHECK(first.ok);
  CHECK_ONCE(&first);
  pysched_error *err = NULL;
  for (int i = 0; i < N; i++) {
    CHECK_STATUS(PYSCHED_OK, pysched_future_wait_for(fut[i], 10000000, &err));
    CHECK(ctx[i].ok);
    CHECK_ONCE(&ctx[i]);
    pysched_future_free(fut[i]);
  }
  pysched_future_free(ff);
}

/* With concurrency 4, batches of a GIL-releasing function overlap; every item still
 * finishes exactly once with its own result. */
static void test_concurrency(void) {
  pysched_handler_options o = test_options(1);
  o.concurrency = 4;
  pysched_handler *h = test_load(manager, "pysched_ctest", "sleep_or_double", &o);
  enum { N = 8 };
  item_ctx ctx[N];
  pysched_future *fut[N];
  uint64_t t0 = now_us();
  for (int i = 0; i < N; i++) {
    item_reset(&ctx[i], -150);
    REQUIRE(queue_ctx(h, &ctx[i], &fut[i]) == PYSCHED_OK);
  }
  for (int i = 0; i < N; i++) {
    wait_ok(fut[i]);
    pysched_status st;
    CHECK(take_long(fut[i], &st) == 150 && st == PYSCHED_OK);
    CHECK_ONCE(&ctx[i]);
    pysched_future_free(fut[i]);
  }
  uint64_t took = now_us() - t0;
  /* 8 x 150 ms one after the other would be 1.2 s; 4 at a time takes ~300 ms. */
  CHECK(took < 900000);
  check_counters_add_up(h);
  pysched_handler_free(h);
}

typedef struct {
  pysched_handler *h[2];
  item_ctx *ctx;
  int n;
  int errors;
} producer_arg;

static void *producer(void *p) {
  producer_arg *a = (producer_arg *)p;
  for (int i = 0; i < a->n; i++) {
    if (queue_ctx(a->h[i % 2], &a->ctx[i], NULL) != PYSCHED_OK) {
      a->errors++;
    }
  }
  return NULL;
}

static void test_many_producers(void) {
  pysched_handler_options o = test_options(16);
  pysched_handler *h1 = test_load(manager, "pysched_testmod", "double", &o);
  o.batch_size = 3;
  o.prefetch_depth = 3;
  pysched_handler *h2 = test_load(manager, "pysched_testmod", "double", &o);
  enum { THREADS = 4, PER = 2500 };
  static item_ctx ctx[THREADS][PER];
  pthread_t t[THREADS];
  producer_arg args[THREADS];
  for (int k = 0; k < THREADS; k++) {
    for (int i = 0; i < PER; i++) {
      item_reset(&ctx[k][i], k * PER + i);
    }
    args[k] = (producer_arg){{h1, h2}, ctx[k], PER, 0};
    REQUIRE(pthread_create(&t[k], NULL, producer, &args[k]) == 0);
  }
  for (int k = 0; k < THREADS; k++) {
    pthread_join(t[k], NULL);
    CHECK(args[k].errors == 0);
  }
  drain(h1);
  drain(h2);
  for (int k = 0; k < THREADS; k++) {
    for (int i = 0; i < PER; i++) {
      CHECK(ctx[k][i].ok && ctx[k][i].result == 2L * (k * PER + i));
      CHECK_ONCE(&ctx[k][i]);
    }
  }
  pysched_stats s1 = stats_of(h1), s2 = stats_of(h2);
  CHECK(s1.total_enqueued + s2.total_enqueued == THREADS * PER);
  CHECK(s1.completed + s2.completed == THREADS * PER);
  CHECK(s1.execute_batch_size_ema <= 16.0 && s2.execute_batch_size_ema <= 3.0);
  check_counters_add_up(h1);
  check_counters_add_up(h2);
  pysched_handler_free(h1);
  pysched_handler_free(h2);
}

int main(void) {
  manager = test_manager();
  test_success_and_per_item_commit_failures();
  test_prepare_runs_without_gil_before_commit();
  test_python_failures();
  test_complete_failure_counts_as_callback_error();
  test_fire_and_forget();
  test_cancel();
  test_deadline();
  test_deadline_without_future();
  test_queue_full_reject();
  test_queue_full_block();
  test_null_handler_and_bad_items();
  test_free_drains();
  test_free_from_own_callback();
  test_many_producers();
  test_concurrency();
  pysched_manager_free(manager);
  return test_finish("test_queue");
}
