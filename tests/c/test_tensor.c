/* Tensor handlers through the C ABI, as a C caller drives them: every new function
 * with NULL and invalid arguments, bad signatures, inputs copied at queueing, borrowed
 * (PYSCHED_TENSOR_BORROW_INPUTS) or filled in place without the GIL, output rows
 * written to caller memory, and `complete` + `drop` exactly once, in that order, on
 * every path: success, fill failure (that item only), Python raising, a wrong result,
 * refusal at queueing, deadline, cancel through the future, shutdown (free drains),
 * several producer threads.
 *
 * Python side: tests/python/tensor_testmod.py. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "test_util.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>

static pysched_manager *manager;

/* An address no library call would write: out-parameters are set to it and checked. */
static char sentinel_storage;
#define SENTINEL ((void *)&sentinel_storage)

/* --- One item's bookkeeping ---------------------------------------------------------- */

enum fill_kind {
  FILL_LINEAR = 0, /* x[i] = linear_input(id, i) */
  FILL_ADD = 1,    /* a[k] = id*10+k, b[k] = id*10+100+k */
};

typedef struct tctx {
  /* Inputs. */
  long id;
  int fill_kind;
  int fill_rc;       /* returned by fill */
  float x[64];       /* linear: the input (copied or borrowed) */
  int64_t v;         /* sleep_echo: the input */
  /* Output destinations. */
  float y[16];       /* linear */
  double sum[3];     /* add_and_sum */
  double total;      /* add_and_sum */
  int64_t echoed;    /* sleep_echo */
  /* Observations. */
  atomic_int fills;
  atomic_int completes;
  atomic_int drops;
  atomic_int bad_calls; /* a callback saw something that breaks the contract */
  int complete_seq;
  int drop_seq;
  int gil_in_fill;
  int gil_in_complete;
  int ok;
  pysched_status kind;
  char message[512];
} tctx;

static atomic_int tseq = 1;

static float linear_input(long id, int i) { return (float)((id * 7 + i) % 13) - 6.0f; }

/* tensor_testmod.linear in C: y = x @ W, W[i][j] = (((i*16 + j) % 7) - 3) / 8. */
static void linear_reference(const float *x, float *y) {
  for (int j = 0; j < 16; j++) {
    double acc = 0;
    for (int i = 0; i < 64; i++) {
      acc += (double)x[i] * ((double)((i * 16 + j) % 7) - 3.0) / 8.0;
    }
    y[j] = (float)acc;
  }
}

static int linear_matches(const tctx *c) {
  float x[64], want[16];
  for (int i = 0; i < 64; i++) {
    x[i] = linear_input(c->id, i);
  }
  linear_reference(x, want);
  for (int j = 0; j < 16; j++) {
    if (fabsf(c->y[j] - want[j]) > 1e-3f) {
      fprintf(stderr, "item %ld: y[%d] = %g, want %g\n", c->id, j, c->y[j], want[j]);
      return 0;
    }
  }
  return 1;
}

static int tctx_fill(void *user_data, void *const *slots) {
  tctx *c = (tctx *)user_data;
  tsan_acquire(&test_handoff);
  if (atomic_fetch_add(&c->fills, 1) != 0 || atomic_load(&c->completes) != 0) {
    atomic_fetch_add(&c->bad_calls, 1); /* once, and before complete */
  }
  c->gil_in_fill = PyGILState_Check();
  if (c->fill_rc == 0) {
    if (c->fill_kind == FILL_LINEAR) {
      float *x = (float *)slots[0];
      for (int i = 0; i < 64; i++) {
        x[i] = linear_input(c->id, i);
      }
    } else {
      double *a = (double *)slots[0], *b = (double *)slots[1];
      for (int k = 0; k < 3; k++) {
        a[k] = (double)(c->id * 10 + k);
        b[k] = (double)(c->id * 10 + 100 + k);
      }
    }
  }
  int rc = c->fill_rc;
  tsan_release(&test_handoff);
  return rc;
}

static void tctx_complete(void *user_data, const pysched_error *error) {
  tctx *c = (tctx *)user_data;
  tsan_acquire(&test_handoff);
  if (atomic_fetch_add(&c->completes, 1) != 0) {
    atomic_fetch_add(&c->bad_calls, 1);
  }
  c->complete_seq = atomic_fetch_add(&tseq, 1);
  c->gil_in_complete = PyGILState_Check();
  if (error == NULL) {
    c->ok = 1;
  } else {
    c->kind = pysched_error_kind(error);
    snprintf(c->message, sizeof c->message, "%s", pysched_error_message(error));
  }
  tsan_release(&test_handoff);
}

static void tctx_drop(void *user_data) {
  tctx *c = (tctx *)user_data;
  tsan_acquire(&test_handoff);
  c->drop_seq = atomic_fetch_add(&tseq, 1);
  tsan_release(&test_handoff);
  if (atomic_fetch_add(&c->drops, 1) != 0) {
    atomic_fetch_add(&c->bad_calls, 1);
  }
}

static void tctx_reset(tctx *c, long id) {
  memset(c, 0, sizeof *c);
  c->id = id;
  for (int i = 0; i < 64; i++) {
    c->x[i] = linear_input(id, i);
  }
  for (int j = 0; j < 16; j++) {
    c->y[j] = -12345.0f;
  }
  c->v = id;
  c->echoed = -1;
  c->total = -1;
}

/* The item's callbacks for `c` (no inputs or outputs yet). Publishes `c` for the
 * pool threads (TSan). */
static pysched_tensor_item make_titem(tctx *c) {
  tsan_release(&test_handoff);
  pysched_tensor_item item;
  memset(&item, 0, sizeof item);
  item.user_data = c;
  item.complete = tctx_complete;
  item.drop = tctx_drop;
  return item;
}

/* complete and drop each ran exactly once, complete first, nothing odd seen. */
#define CHECK_ONCE(c)                                                             \
  do {                                                                            \
    tsan_acquire(&test_handoff);                                                  \
    const tctx *cc_ = (c);                                                        \
    if (atomic_load(&cc_->completes) != 1 || atomic_load(&cc_->drops) != 1 ||     \
        atomic_load(&cc_->bad_calls) != 0 || cc_->complete_seq >= cc_->drop_seq) { \
      fprintf(stderr,                                                             \
              "%s:%d: item %ld: completes=%d drops=%d bad_calls=%d "              \
              "complete_seq=%d drop_seq=%d\n",                                    \
              __FILE__, __LINE__, cc_->id, atomic_load(&cc_->completes),          \
              atomic_load(&cc_->drops), atomic_load(&cc_->bad_calls),             \
              cc_->complete_seq, cc_->drop_seq);                                  \
      test_failures++;                                                            \
    }                                                                             \
  } while (0)

/* --- Handlers and helpers ---------------------------------------------------------- */

static const int64_t SHAPE_64[] = {64};
static const int64_t SHAPE_16[] = {16};
static const int64_t SHAPE_3[] = {3};

static pysched_tensor_spec spec(uint32_t dtype, uint32_t ndim, const int64_t *shape) {
  pysched_tensor_spec s = {dtype, ndim, shape};
  return s;
}

static pysched_tensor_handler *load_tensor(const char *entry,
                                           const pysched_tensor_spec *inputs, uint32_t n_in,
                                           const pysched_tensor_spec *outputs, uint32_t n_out,
                                           const pysched_handler_options *o) {
  pysched_tensor_signature sig = {inputs, n_in, outputs, n_out, -1};
  pysched_tensor_handler *h = NULL;
  pysched_error *err = NULL;
  REQUIRE(CHECK_STATUS(PYSCHED_OK, pysched_manager_load_tensor(manager, "tensor_testmod", entry,
                                                              &sig, o, &h, &err)) ==
          PYSCHED_OK);
  REQUIRE(h != NULL);
  return h;
}

/* (float32[64]) -> (float32[16]) through `entry` (linear, or a broken variant). */
static pysched_tensor_handler *load_linear(const char *entry, const pysched_handler_options *o) {
  pysched_tensor_spec in = spec(PYSCHED_DTYPE_F32, 1, SHAPE_64);
  pysched_tensor_spec out = spec(PYSCHED_DTYPE_F32, 1, SHAPE_16);
  return load_tensor(entry, &in, 1, &out, 1, o);
}

/* (int64 scalar) -> (int64 scalar): tensor_testmod.sleep_echo. */
static pysched_tensor_handler *load_sleep_echo(const pysched_handler_options *o) {
  pysched_tensor_spec s = spec(PYSCHED_DTYPE_I64, 0, NULL);
  return load_tensor("sleep_echo", &s, 1, &s, 1, o);
}

/* Queues a linear item with copied (or borrowed) inputs and its output into c->y. */
static pysched_status queue_linear(pysched_tensor_handler *h, tctx *c, uint32_t flags,
                                   pysched_future **out_future) {
  const void *inputs[1] = {c->x};
  void *outputs[1] = {c->y};
  pysched_tensor_item item = make_titem(c);
  item.inputs = inputs;
  item.outputs = outputs;
  item.flags = flags;
  pysched_error *err = NULL;
  pysched_status st = pysched_tensor_handler_queue(h, &item, out_future, &err);
  CHECK((st == PYSCHED_OK) == (err == NULL));
  CHECK(err == NULL || pysched_error_kind(err) == st);
  pysched_error_free(err);
  return st;
}

/* Queues a sleep_echo item: input c->v (copied unless `flags`), output c->echoed. */
static pysched_status queue_echo(pysched_tensor_handler *h, tctx *c, uint32_t flags,
                                 uint64_t timeout_us, pysched_future **out_future) {
  const void *inputs[1] = {&c->v};
  void *outputs[1] = {&c->echoed};
  pysched_tensor_item item = make_titem(c);
  item.inputs = inputs;
  item.outputs = outputs;
  item.flags = flags;
  item.timeout_us = timeout_us;
  pysched_error *err = NULL;
  pysched_status st = pysched_tensor_handler_queue(h, &item, out_future, &err);
  CHECK((st == PYSCHED_OK) == (err == NULL));
  CHECK(err == NULL || pysched_error_kind(err) == st);
  pysched_error_free(err);
  return st;
}

static void wait_ok(pysched_future *f) {
  pysched_error *err = NULL;
  CHECK_STATUS(PYSCHED_OK, pysched_future_wait(f, &err));
}

/* The status pysched_future_take reports for a finished tensor item. A tensor item has
 * no Python result: success leaves *out_result NULL. */
static pysched_status take_status(pysched_future *f) {
  PyObject *obj = SENTINEL;
  pysched_error *err = NULL;
  pysched_status st = pysched_future_take(f, &obj, &err);
  if (st == PYSCHED_OK) {
    CHECK(obj == NULL);
    CHECK(err == NULL);
  } else {
    CHECK(obj == SENTINEL);
    CHECK(err != NULL && pysched_error_kind(err) == st);
    if (getenv("PYSCHED_TEST_VERBOSE") && err) {
      fprintf(stderr, "take: %s: %s\n", pysched_status_name((int32_t)st),
              pysched_error_message(err));
    }
  }
  pysched_error_free(err);
  return st;
}

static pysched_stats stats_of(const pysched_tensor_handler *h) {
  pysched_stats s;
  pysched_error *err = NULL;
  memset(&s, 0, sizeof s);
  CHECK_STATUS(PYSCHED_OK, pysched_tensor_handler_stats(h, &s, &err));
  return s;
}

static void drain(const pysched_tensor_handler *h) {
  pysched_error *err = NULL;
  CHECK_STATUS(PYSCHED_OK, pysched_tensor_handler_drain(h, &err));
}

static void check_counters_add_up(const pysched_tensor_handler *h) {
  drain(h);
  pysched_stats s = stats_of(h);
  uint64_t finished = s.completed + s.failed + s.cancelled + s.expired + s.rejected;
  if (finished != s.total_enqueued || s.commit_queue_size || s.execute_queue_size) {
    fprintf(stderr,
            "counters do not add up: enqueued=%llu completed=%llu failed=%llu "
            "cancelled=%llu expired=%llu rejected=%llu queues=%llu/%llu\n",
            (unsigned long long)s.total_enqueued, (unsigned long long)s.completed,
            (unsigned long long)s.failed, (unsigned long long)s.cancelled,
            (unsigned long long)s.expired, (unsigned long long)s.rejected,
            (unsigned long long)s.commit_queue_size,
            (unsigned long long)s.execute_queue_size);
    test_failures++;
  }
}

/* tensor_testmod.calls: how many sleep_echo calls have started. */
static long echo_calls(void) {
  PyGILState_STATE g = PyGILState_Ensure();
  long n = -1;
  PyObject *mod = PyImport_ImportModule("tensor_testmod");
  if (mod) {
    PyObject *calls = PyObject_GetAttrString(mod, "calls");
    if (calls) {
      n = PyLong_AsLong(calls);
      Py_DECREF(calls);
    }
    Py_DECREF(mod);
  }
  if (PyErr_Occurred()) {
    PyErr_Print();
  }
  PyGILState_Release(g);
  return n;
}

/* Queues a sleep_echo item that sleeps `ms` and returns once its Python call has
 * started, so that items queued next wait behind it. */
static pysched_future *start_blocker(pysched_tensor_handler *h, tctx *c, long ms) {
  long before = echo_calls();
  tctx_reset(c, ms);
  pysched_future *f = NULL;
  REQUIRE(queue_echo(h, c, 0, 0, &f) == PYSCHED_OK);
  uint64_t give_up = now_us() + 10000000u;
  while (echo_calls() == before && now_us() < give_up) {
    sleep_us(500);
  }
  REQUIRE(echo_calls() > before);
  return f;
}

/* --- Arguments ------------------------------------------------------------------------ */

static void expect_bad_signature(const pysched_tensor_signature *sig,
                                 const pysched_handler_options *o, pysched_status kind,
                                 const char *needle) {
  pysched_tensor_handler *h = SENTINEL;
  pysched_error *err = NULL;
  pysched_status st =
      pysched_manager_load_tensor(manager, "tensor_testmod", "linear", sig, o, &h, &err);
  CHECK(st == kind);
  CHECK(h == SENTINEL);
  CHECK(err != NULL && pysched_error_kind(err) == kind);
  if (err) {
    CHECK_CONTAINS(pysched_error_message(err), needle);
  }
  pysched_error_free(err);
}

static void test_load_arguments(void) {
  pysched_tensor_spec in = spec(PYSCHED_DTYPE_F32, 1, SHAPE_64);
  pysched_tensor_spec out = spec(PYSCHED_DTYPE_F32, 1, SHAPE_16);
  pysched_tensor_signature sig = {&in, 1, &out, 1, -1};
  pysched_tensor_handler *h = SENTINEL;
  pysched_error *err = NULL;

  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_manager_load_tensor(
                                             NULL, "tensor_testmod", "linear", &sig, NULL, &h, &err));
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_manager_load_tensor(
                                             manager, NULL, "linear", &sig, NULL, &h, &err));
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_manager_load_tensor(
                                             manager, "tensor_testmod", NULL, &sig, NULL, &h, &err));
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_manager_load_tensor(
                                             manager, "tensor_testmod", "linear", NULL, NULL, &h, &err));
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_manager_load_tensor(
                                             manager, "tensor_testmod", "linear", &sig, NULL, NULL, &err));
  CHECK(pysched_manager_load_tensor(manager, "tensor_testmod", "linear", NULL, NULL, &h, NULL) ==
        PYSCHED_INVALID_ARGUMENT);
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_manager_load_tensor(
                                             manager, "", "linear", &sig, NULL, &h, &err));
  CHECK_STATUS(PYSCHED_IMPORT, pysched_manager_load_tensor(manager, "no_such_module_xyz", "f",
                                                           &sig, NULL, &h, &err));
  CHECK_STATUS(PYSCHED_ATTRIBUTE, pysched_manager_load_tensor(
                                      manager, "tensor_testmod", "no_such_fn", &sig, NULL, &h, &err));
  CHECK(h == SENTINEL);

  /* Bad signatures. */
  pysched_tensor_spec bad = spec(99, 1, SHAPE_64);
  pysched_tensor_signature s = {&bad, 1, &out, 1, -1};
  expect_bad_signature(&s, NULL, PYSCHED_INVALID_ARGUMENT, "inputs[0].dtype 99");
  s.inputs = &in;
  s.outputs = &bad;
  expect_bad_signature(&s, NULL, PYSCHED_INVALID_ARGUMENT, "outputs[0].dtype 99");

  const int64_t negative[] = {4, -3};
  bad = spec(PYSCHED_DTYPE_F32, 2, negative);
  s.inputs = &bad;
  s.outputs = &out;
  expect_bad_signature(&s, NULL, PYSCHED_INVALID_ARGUMENT, "negative");

  const int64_t zero[] = {4, 0};
  bad = spec(PYSCHED_DTYPE_F32, 2, zero);
  expect_bad_signature(&s, NULL, PYSCHED_INVALID_ARGUMENT, "size 0 in dimension 1");

  const int64_t huge[] = {(int64_t)1 << 40, (int64_t)1 << 30};
  bad = spec(PYSCHED_DTYPE_F64, 2, huge);
  expect_bad_signature(&s, NULL, PYSCHED_INVALID_ARGUMENT, "too large");
  const int64_t big_item[] = {(int64_t)1 << 42}; /* fine alone, too large in a batch */
  bad = spec(PYSCHED_DTYPE_F64, 1, big_item);
  pysched_handler_options big_batch = test_options(1u << 19);
  expect_bad_signature(&s, &big_batch, PYSCHED_INVALID_ARGUMENT, "too large");

  bad = spec(PYSCHED_DTYPE_F32, 2, NULL);
  expect_bad_signature(&s, NULL, PYSCHED_INVALID_ARGUMENT, "shape is NULL");
  int64_t many_dims[40];
  for (int d = 0; d < 40; d++) {
    many_dims[d] = 1;
  }
  bad = spec(PYSCHED_DTYPE_F32, 33, many_dims);
  expect_bad_signature(&s, NULL, PYSCHED_INVALID_ARGUMENT, "ndim 33");

  s.inputs = &in;
  s.n_inputs = 0;
  expect_bad_signature(&s, NULL, PYSCHED_INVALID_ARGUMENT, "at least one input");
  s.inputs = NULL;
  expect_bad_signature(&s, NULL, PYSCHED_INVALID_ARGUMENT, "at least one input");
  s.n_inputs = 1;
  expect_bad_signature(&s, NULL, PYSCHED_INVALID_ARGUMENT, "inputs is NULL");
  s.inputs = &in;
  s.outputs = NULL;
  expect_bad_signature(&s, NULL, PYSCHED_INVALID_ARGUMENT, "outputs is NULL");
  s.outputs = &out;
  pysched_tensor_spec too_many[65];
  for (int k = 0; k < 65; k++) {
    too_many[k] = in;
  }
  s.inputs = too_many;
  s.n_inputs = 65;
  expect_bad_signature(&s, NULL, PYSCHED_INVALID_ARGUMENT, "at most");
  s.inputs = &in;
  s.n_inputs = 1;
  s.device = -2;
  expect_bad_signature(&s, NULL, PYSCHED_INVALID_ARGUMENT, "device -2");
  s.device = -1;

  pysched_handler_options o = test_options(0);
  expect_bad_signature(&s, &o, PYSCHED_INVALID_ARGUMENT, "batch_size");
  o = test_options(4);
  o.subinterpreters = 1;
  expect_bad_signature(&s, &o, PYSCHED_UNSUPPORTED, "subinterpreters");

  /* A good signature after all that; the handler also works with NULL options. */
  h = NULL;
  CHECK_STATUS(PYSCHED_OK, pysched_manager_load_tensor(manager, "tensor_testmod", "linear", &s,
                                                       NULL, &h, &err));
  CHECK(h != NULL && h != SENTINEL);
  pysched_tensor_handler_free(h);
  pysched_tensor_handler_free(NULL);
}

/* A refused item: the status, its callbacks each ran once (with that kind and a message
 * containing `needle`) before the queue call returned, and the future is untouched. */
static void expect_refused(const pysched_tensor_handler *h, const pysched_tensor_item *item,
                           tctx *c, pysched_status kind, const char *needle) {
  pysched_future *f = SENTINEL;
  pysched_error *err = NULL;
  CHECK(pysched_tensor_handler_queue(h, item, &f, &err) == kind);
  CHECK(err != NULL && pysched_error_kind(err) == kind);
  CHECK_CONTAINS(err ? pysched_error_message(err) : NULL, needle);
  pysched_error_free(err);
  CHECK(f == SENTINEL);
  CHECK(c->kind == kind && !c->ok);
  CHECK_CONTAINS(c->message, needle);
  CHECK(atomic_load(&c->fills) == 0);
  CHECK_ONCE(c);
}

static int never_fill(void *user_data, void *const *slots) {
  (void)slots;
  atomic_fetch_add(&((tctx *)user_data)->bad_calls, 1);
  return 0;
}

static void test_queue_and_handler_arguments(void) {
  pysched_handler_options o = test_options(4);
  pysched_tensor_handler *h = load_linear("linear", &o);
  tctx c;
  const void *inputs[1] = {c.x};
  void *outputs[1] = {c.y};
  pysched_error *err = NULL;

  tctx_reset(&c, 1);
  pysched_tensor_item item = make_titem(&c);
  item.inputs = inputs;
  item.outputs = outputs;
  expect_refused(NULL, &item, &c, PYSCHED_INVALID_ARGUMENT, "handler");

  pysched_future *f = SENTINEL;
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_tensor_handler_queue(h, NULL, &f, &err));
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_tensor_handler_queue(NULL, NULL, NULL, &err));
  CHECK(f == SENTINEL);

  tctx_reset(&c, 2);
  item = make_titem(&c);
  item.outputs = outputs;
  expect_refused(h, &item, &c, PYSCHED_INVALID_ARGUMENT, "no fill callback");

  tctx_reset(&c, 3);
  item = make_titem(&c);
  item.inputs = inputs;
  item.fill = never_fill;
  item.outputs = outputs;
  expect_refused(h, &item, &c, PYSCHED_INVALID_ARGUMENT, "both inputs and a fill");

  const void *null_inputs[1] = {NULL};
  tctx_reset(&c, 4);
  item = make_titem(&c);
  item.inputs = null_inputs;
  item.outputs = outputs;
  expect_refused(h, &item, &c, PYSCHED_INVALID_ARGUMENT, "inputs[0] is NULL");

  tctx_reset(&c, 5);
  item = make_titem(&c);
  item.inputs = inputs;
  expect_refused(h, &item, &c, PYSCHED_INVALID_ARGUMENT, "outputs is NULL");

  void *null_outputs[1] = {NULL};
  tctx_reset(&c, 6);
  item = make_titem(&c);
  item.inputs = inputs;
  item.outputs = null_outputs;
  expect_refused(h, &item, &c, PYSCHED_INVALID_ARGUMENT, "output destination 0 is NULL");

  tctx_reset(&c, 7);
  item = make_titem(&c);
  item.inputs = inputs;
  item.outputs = outputs;
  item.flags = 2;
  expect_refused(h, &item, &c, PYSCHED_INVALID_ARGUMENT, "flags");

  /* NULL out_error on the error path: the callbacks still run once. */
  tctx_reset(&c, 8);
  item = make_titem(&c);
  item.inputs = inputs;
  CHECK(pysched_tensor_handler_queue(h, &item, NULL, NULL) == PYSCHED_INVALID_ARGUMENT);
  CHECK_ONCE(&c);

  /* An item without any callback: only its future tells. */
  tctx_reset(&c, 9);
  pysched_tensor_item bare;
  memset(&bare, 0, sizeof bare);
  bare.inputs = inputs;
  bare.outputs = outputs;
  f = NULL;
  CHECK_STATUS(PYSCHED_OK, pysched_tensor_handler_queue(h, &bare, &f, &err));
  wait_ok(f);
  CHECK(take_status(f) == PYSCHED_OK);
  CHECK(take_status(f) == PYSCHED_INVALID_ARGUMENT); /* taken already */
  CHECK(linear_matches(&c));
  pysched_future_free(f);

  /* stats, latency, drain. */
  pysched_stats s;
  pysched_latency l;
  memset(&s, 0xAB, sizeof s);
  memset(&l, 0xAB, sizeof l);
  pysched_stats s_before = s;
  pysched_latency l_before = l;
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_tensor_handler_stats(NULL, &s, &err));
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_tensor_handler_stats(h, NULL, &err));
  CHECK(pysched_tensor_handler_stats(NULL, NULL, NULL) == PYSCHED_INVALID_ARGUMENT);
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_tensor_handler_latency(NULL, &l, &err));
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_tensor_handler_latency(h, NULL, &err));
  CHECK(pysched_tensor_handler_latency(NULL, NULL, NULL) == PYSCHED_INVALID_ARGUMENT);
  CHECK(memcmp(&s, &s_before, sizeof s) == 0 && memcmp(&l, &l_before, sizeof l) == 0);
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_tensor_handler_drain(NULL, &err));
  CHECK(pysched_tensor_handler_drain(NULL, NULL) == PYSCHED_INVALID_ARGUMENT);
  CHECK_STATUS(PYSCHED_OK, pysched_tensor_handler_drain(h, &err));
  CHECK_STATUS(PYSCHED_OK, pysched_tensor_handler_stats(h, &s, &err));
  CHECK_STATUS(PYSCHED_OK, pysched_tensor_handler_latency(h, &l, &err));
  /* Refusals at argument checking count as nothing; the one bare item completed. */
  CHECK(s.completed == 1 && s.failed == 0 && s.total_enqueued == 1);
  CHECK(s.batches == 1);
  CHECK(l.batch_size_p50 >= 1);
  pysched_tensor_handler_free(h);
}

/* --- Paths of an item ---------------------------------------------------------------- */

/* Inputs are copied before queue returns (the caller scribbles over them at once);
 * each item's rows land in its own memory; complete runs without the GIL; a future
 * resolves after complete and drop. */
static void test_copy_in_outputs_into_caller_memory(void) {
  pysched_handler_options o = test_options(32);
  pysched_tensor_handler *h = load_linear("linear", &o);
  enum { N = 300 };
  static tctx ctx[N];
  pysched_future *fut[N];
  for (int i = 0; i < N; i++) {
    tctx_reset(&ctx[i], i);
    REQUIRE(queue_linear(h, &ctx[i], 0, &fut[i]) == PYSCHED_OK);
    for (int k = 0; k < 64; k++) {
      ctx[i].x[k] = NAN; /* copied already: never seen by Python */
    }
  }
  for (int i = 0; i < N; i++) {
    wait_ok(fut[i]);
    CHECK(pysched_future_is_ready(fut[i]));
    CHECK_ONCE(&ctx[i]); /* before the future resolved */
    CHECK(take_status(fut[i]) == PYSCHED_OK);
    CHECK(ctx[i].ok && ctx[i].gil_in_complete == 0);
    CHECK(linear_matches(&ctx[i]));
    pysched_future_free(fut[i]);
  }
  pysched_stats s = stats_of(h);
  CHECK(s.completed == N && s.failed == 0 && s.total_enqueued == N);
  CHECK(s.batches >= N / 32 && s.batches <= N);
  check_counters_add_up(h);
  pysched_tensor_handler_free(h);
}

/* Borrowed inputs are read when the batch is gathered, not at queueing: items queued
 * behind a running batch and changed afterwards are seen changed; copied ones are not. */
static void test_borrowed_inputs(void) {
  pysched_handler_options o = test_options(16);
  pysched_tensor_handler *h = load_sleep_echo(&o);
  tctx blocker;
  pysched_future *bf = start_blocker(h, &blocker, 300);
  enum { N = 16 };
  static tctx ctx[N];
  pysched_future *fut[N];
  for (int i = 0; i < N; i++) {
    tctx_reset(&ctx[i], i);
    ctx[i].v = -1 - i; /* negative: no sleep */
    uint32_t flags = (i % 2 == 0) ? PYSCHED_TENSOR_BORROW_INPUTS : 0;
    REQUIRE(queue_echo(h, &ctx[i], flags, 0, &fut[i]) == PYSCHED_OK);
  }
  for (int i = 0; i < N; i++) {
    ctx[i].v = -1000 - i; /* the batch is gathered after the blocker */
  }
  tsan_release(&test_handoff);
  CHECK(!pysched_future_is_ready(fut[0]));
  for (int i = 0; i < N; i++) {
    wait_ok(fut[i]);
    CHECK(take_status(fut[i]) == PYSCHED_OK);
    CHECK_ONCE(&ctx[i]);
    CHECK(ctx[i].ok);
    CHECK(ctx[i].echoed == ((i % 2 == 0) ? -1000 - i : -1 - i));
    pysched_future_free(fut[i]);
  }
  wait_ok(bf);
  CHECK(take_status(bf) == PYSCHED_OK && blocker.echoed == 300);
  CHECK_ONCE(&blocker);
  pysched_future_free(bf);
  check_counters_add_up(h);
  pysched_tensor_handler_free(h);
}

/* Fill callbacks write the rows in place on a pool thread without the GIL, once per
 * item, before complete; a failing fill fails that item only (PYSCHED_COMMIT), the
 * other items of its batch get their own rows. Two inputs, two outputs. */
static void run_fill_case(uint32_t batch, uint32_t prefetch, int fail_every) {
  pysched_handler_options o = test_options(batch);
  o.prefetch_depth = prefetch;
  o.max_batch_delay_us = 20000;
  pysched_tensor_spec in = spec(PYSCHED_DTYPE_F64, 1, SHAPE_3);
  pysched_tensor_spec outs[2] = {spec(PYSCHED_DTYPE_F64, 1, SHAPE_3), spec(PYSCHED_DTYPE_F64, 0, NULL)};
  pysched_tensor_spec ins[2] = {in, in};
  pysched_tensor_handler *h = load_tensor("add_and_sum", ins, 2, outs, 2, &o);
  enum { N = 96 };
  static tctx ctx[N];
  pysched_future *fut[N];
  for (int i = 0; i < N; i++) {
    tctx_reset(&ctx[i], i);
    ctx[i].fill_kind = FILL_ADD;
    ctx[i].fill_rc = (fail_every && i % fail_every == 1) ? 7 : 0;
    void *outputs[2] = {ctx[i].sum, &ctx[i].total};
    pysched_tensor_item item = make_titem(&ctx[i]);
    item.fill = tctx_fill;
    item.outputs = outputs;
    pysched_error *err = NULL;
    REQUIRE(CHECK_STATUS(PYSCHED_OK, pysched_tensor_handler_queue(h, &item, &fut[i], &err)) ==
            PYSCHED_OK);
  }
  int failed = 0;
  for (int i = 0; i < N; i++) {
    wait_ok(fut[i]);
    pysched_status st = take_status(fut[i]);
    CHECK_ONCE(&ctx[i]);
    CHECK(atomic_load(&ctx[i].fills) == 1);
    CHECK(ctx[i].gil_in_fill == 0);
    if (ctx[i].fill_rc) {
      failed++;
      CHECK(st == PYSCHED_COMMIT && !ctx[i].ok && ctx[i].kind == PYSCHED_COMMIT);
      CHECK_CONTAINS(ctx[i].message, "fill callback failed (returned 7)");
      CHECK(ctx[i].total == -1); /* its outputs untouched */
    } else {
      CHECK(st == PYSCHED_OK && ctx[i].ok);
      for (int k = 0; k < 3; k++) {
        CHECK(ctx[i].sum[k] == (double)(2 * (i * 10 + k) + 100));
      }
      CHECK(ctx[i].total == (double)(3 * i * 10 + 3));
    }
    pysched_future_free(fut[i]);
  }
  pysched_stats s = stats_of(h);
  CHECK(s.failed == (uint64_t)failed && s.completed == (uint64_t)(N - failed));
  check_counters_add_up(h);
  pysched_tensor_handler_free(h);
}

static void test_fill_in_place(void) {
  run_fill_case(8, 2, 0);
  run_fill_case(8, 3, 5);
  run_fill_case(1, 1, 3);
  run_fill_case(32, 1, 2);
}

/* Python raising and wrong results fail every item of the batch with a clear error;
 * complete/drop once each; outputs untouched. */
static void expect_batch_failure(const char *entry, const char *needle) {
  enum { N = 6 };
  pysched_handler_options o = test_options(N + 2);
  o.max_batch_delay_us = 200000; /* one batch */
  pysched_tensor_handler *h = load_linear(entry, &o);
  tctx ctx[N];
  pysched_future *fut[N];
  for (int i = 0; i < N; i++) {
    tctx_reset(&ctx[i], i);
    REQUIRE(queue_linear(h, &ctx[i], 0, &fut[i]) == PYSCHED_OK);
  }
  for (int i = 0; i < N; i++) {
    wait_ok(fut[i]);
    PyObject *obj = SENTINEL;
    pysched_error *err = NULL;
    CHECK(pysched_future_take(fut[i], &obj, &err) == PYSCHED_PYTHON_EXCEPTION);
    CHECK(obj == SENTINEL);
    CHECK(err != NULL && pysched_error_kind(err) == PYSCHED_PYTHON_EXCEPTION);
    CHECK_CONTAINS(err ? pysched_error_message(err) : NULL, needle);
    pysched_error_free(err);
    CHECK_ONCE(&ctx[i]);
    CHECK(!ctx[i].ok && ctx[i].kind == PYSCHED_PYTHON_EXCEPTION);
    CHECK_CONTAINS(ctx[i].message, needle);
    CHECK(ctx[i].y[0] == -12345.0f);
    pysched_future_free(fut[i]);
  }
  pysched_stats s = stats_of(h);
  CHECK(s.failed == N && s.completed == 0);
  check_counters_add_up(h);
  pysched_tensor_handler_free(h);
}

static void test_python_errors_and_wrong_results(void) {
  expect_batch_failure("raises", "ValueError: bad batch of 6");
  expect_batch_failure("wrong_rows", "has shape (7, 16); expected shape (6, 16) float32");
  expect_batch_failure("wrong_dtype", "has dtype float64; expected shape (6, 16) float32");
  expect_batch_failure("wrong_item_shape", "has shape (6, 15); expected shape (6, 16)");
  expect_batch_failure("not_a_tensor", "is a list, not an array or tensor");
}

/* A bounded queue with the reject policy refuses the item: its callbacks ran before
 * the queue call returned, the future is untouched, and it counts as rejected. The
 * block policy with a timeout refuses likewise, after waiting. */
static void test_refusal_at_queueing(void) {
  pysched_handler_options o = test_options(4);
  o.max_queue = 1;
  o.full_policy = PYSCHED_FULL_REJECT;
  pysched_tensor_handler *h = load_sleep_echo(&o);
  tctx blocker, a, b;
  pysched_future *bf = start_blocker(h, &blocker, 300);
  tctx_reset(&a, 1);
  tctx_reset(&b, 2);
  pysched_future *fa = NULL, *fb = SENTINEL;
  CHECK(queue_echo(h, &a, 0, 0, &fa) == PYSCHED_OK);
  CHECK(queue_echo(h, &b, 0, 0, &fb) == PYSCHED_QUEUE_FULL);
  CHECK(fb == SENTINEL);
  CHECK(b.kind == PYSCHED_QUEUE_FULL);
  CHECK_CONTAINS(b.message, "full");
  CHECK_ONCE(&b);
  CHECK(b.echoed == -1);
  wait_ok(fa);
  CHECK(take_status(fa) == PYSCHED_OK && a.ok && a.echoed == 1);
  CHECK_ONCE(&a);
  wait_ok(bf);
  CHECK_ONCE(&blocker);
  pysched_future_free(fa);
  pysched_future_free(bf);
  pysched_stats s = stats_of(h);
  CHECK(s.rejected == 1 && s.total_enqueued == 3 && s.completed == 2);
  check_counters_add_up(h);
  pysched_tensor_handler_free(h);

  /* Under the block policy the queue call waits for room, up to block_timeout_us,
   * then refuses the same way. */
  o.full_policy = PYSCHED_FULL_BLOCK;
  o.block_timeout_us = 100000;
  h = load_sleep_echo(&o);
  bf = start_blocker(h, &blocker, 500);
  tctx_reset(&a, 1);
  tctx_reset(&b, 2);
  fa = NULL;
  fb = SENTINEL;
  CHECK(queue_echo(h, &a, 0, 0, &fa) == PYSCHED_OK);
  uint64_t t0 = now_us();
  CHECK(queue_echo(h, &b, 0, 0, &fb) == PYSCHED_QUEUE_FULL);
  uint64_t blocked = now_us() - t0;
  CHECK(blocked >= 90000 && blocked < 450000);
  CHECK(fb == SENTINEL && b.kind == PYSCHED_QUEUE_FULL);
  CHECK_ONCE(&b);
  wait_ok(fa);
  CHECK(take_status(fa) == PYSCHED_OK && a.echoed == 1);
  CHECK_ONCE(&a);
  wait_ok(bf);
  CHECK_ONCE(&blocker);
  pysched_future_free(fa);
  pysched_future_free(bf);
  check_counters_add_up(h);
  pysched_tensor_handler_free(h);
}

/* A deadline passing while the item waits fails it with PYSCHED_TIMED_OUT, eagerly,
 * with or without a future. */
static void test_deadline(void) {
  pysched_handler_options o = test_options(8);
  pysched_tensor_handler *h = load_sleep_echo(&o);
  tctx blocker;
  pysched_future *bf = start_blocker(h, &blocker, 500);
  enum { N = 20 };
  static tctx ctx[N];
  pysched_future *fut[N];
  uint64_t t0 = now_us();
  for (int i = 0; i < N; i++) {
    tctx_reset(&ctx[i], i);
    ctx[i].v = -1;
    uint64_t timeout = (i % 2) ? 30000 : 60u * 1000000u;
    /* Every fourth item has no future: only its callbacks hear of it. */
    REQUIRE(queue_echo(h, &ctx[i], 0, timeout, (i % 4 == 3) ? NULL : &fut[i]) == PYSCHED_OK);
  }
  pysched_error *err = NULL;
  CHECK_STATUS(PYSCHED_OK, pysched_future_wait_for(fut[1], 450000, &err));
  uint64_t waited = now_us() - t0;
  CHECK(waited >= 25000 && waited < 450000);
  CHECK(!pysched_future_is_ready(bf));
  drain(h);
  for (int i = 0; i < N; i++) {
    CHECK_ONCE(&ctx[i]);
    if (i % 2) {
      CHECK(!ctx[i].ok && ctx[i].kind == PYSCHED_TIMED_OUT);
      CHECK(ctx[i].echoed == -1);
    } else {
      CHECK(ctx[i].ok && ctx[i].echoed == -1);
    }
    if (i % 4 != 3) {
      CHECK(take_status(fut[i]) == ((i % 2) ? PYSCHED_TIMED_OUT : PYSCHED_OK));
      pysched_future_free(fut[i]);
    }
  }
  CHECK_ONCE(&blocker);
  pysched_future_free(bf);
  pysched_stats s = stats_of(h);
  CHECK(s.expired == N / 2 && s.completed == N / 2 + 1);
  check_counters_add_up(h);
  pysched_tensor_handler_free(h);
}

/* Cancel through the future: complete (PYSCHED_CANCELLED) and drop run on the
 * cancelling thread before cancel returns; a running or finished item is not
 * cancelled. Fill items too: a cancelled one is never filled. */
static void test_cancel_through_future(void) {
  pysched_handler_options o = test_options(8);
  pysched_tensor_handler *h = load_sleep_echo(&o);
  tctx blocker;
  pysched_future *bf = start_blocker(h, &blocker, 300);
  enum { N = 8 };
  tctx ctx[N];
  pysched_future *fut[N];
  for (int i = 0; i < N; i++) {
    tctx_reset(&ctx[i], i);
    REQUIRE(queue_echo(h, &ctx[i], 0, 0, &fut[i]) == PYSCHED_OK);
  }
  CHECK(!pysched_future_cancel(bf)); /* running */
  for (int i = 1; i < N; i += 2) {
    CHECK(pysched_future_cancel(fut[i]));
    CHECK(ctx[i].kind == PYSCHED_CANCELLED);
    CHECK_ONCE(&ctx[i]);
    CHECK(pysched_future_is_ready(fut[i]));
    CHECK(!pysched_future_cancel(fut[i]));
  }
  for (int i = 0; i < N; i++) {
    wait_ok(fut[i]);
    pysched_status st = take_status(fut[i]);
    CHECK(st == ((i % 2) ? PYSCHED_CANCELLED : PYSCHED_OK));
    CHECK(ctx[i].echoed == ((i % 2) ? -1 : i));
    CHECK(!pysched_future_cancel(fut[i]));
    CHECK_ONCE(&ctx[i]);
    pysched_future_free(fut[i]);
  }
  CHECK(!pysched_future_cancel(NULL));
  wait_ok(bf);
  CHECK_ONCE(&blocker);
  pysched_future_free(bf);
  pysched_stats s = stats_of(h);
  CHECK(s.cancelled == N / 2 && s.completed == N / 2 + 1);
  check_counters_add_up(h);
  pysched_tensor_handler_free(h);
}

/* Shutdown: freeing the handler drains it; every item, fill or copied, with or without
 * a future, finishes exactly once before free returns; futures outlive the handler. */
static void test_free_drains(void) {
  pysched_handler_options o = test_options(4);
  o.prefetch_depth = 2;
  pysched_tensor_handler *h = load_linear("linear", &o);
  enum { N = 200 };
  static tctx ctx[N];
  pysched_future *fut[N];
  for (int i = 0; i < N; i++) {
    tctx_reset(&ctx[i], i);
    fut[i] = NULL;
    pysched_future **out = (i % 3 == 0) ? &fut[i] : NULL;
    if (i % 2) {
      void *outputs[1] = {ctx[i].y};
      pysched_tensor_item item = make_titem(&ctx[i]);
      item.fill = tctx_fill;
      item.outputs = outputs;
      pysched_error *err = NULL;
      REQUIRE(CHECK_STATUS(PYSCHED_OK, pysched_tensor_handler_queue(h, &item, out, &err)) ==
              PYSCHED_OK);
    } else {
      REQUIRE(queue_linear(h, &ctx[i], 0, out) == PYSCHED_OK);
    }
  }
  pysched_tensor_handler_free(h);
  for (int i = 0; i < N; i++) {
    CHECK_ONCE(&ctx[i]);
    CHECK(ctx[i].ok && linear_matches(&ctx[i]));
    if (fut[i]) {
      CHECK(pysched_future_is_ready(fut[i]));
      CHECK(take_status(fut[i]) == PYSCHED_OK);
      pysched_future_free(fut[i]);
    }
  }
}

/* --- Several producers ------------------------------------------------------------------- */

typedef struct {
  pysched_tensor_handler *h;
  tctx *ctx;
  int n;
  int errors;
} producer_arg;

static void *producer(void *p) {
  producer_arg *a = (producer_arg *)p;
  for (int i = 0; i < a->n; i++) {
    tctx *c = &a->ctx[i];
    pysched_status st;
    switch (i % 3) {
    case 0:
      st = queue_linear(a->h, c, 0, NULL);
      break;
    case 1:
      st = queue_linear(a->h, c, PYSCHED_TENSOR_BORROW_INPUTS, NULL);
      break;
    default: {
      void *outputs[1] = {c->y};
      pysched_tensor_item item = make_titem(c);
      item.fill = tctx_fill;
      item.outputs = outputs;
      st = pysched_tensor_handler_queue(a->h, &item, NULL, NULL);
    }
    }
    if (st != PYSCHED_OK) {
      a->errors++;
    }
  }
  return NULL;
}

static void test_many_producers(void) {
  pysched_handler_options o = test_options(16);
  o.prefetch_depth = 2;
  pysched_tensor_handler *h = load_linear("linear", &o);
  enum { THREADS = 4, PER = 600 };
  static tctx ctx[THREADS][PER];
  pthread_t t[THREADS];
  producer_arg args[THREADS];
  for (int k = 0; k < THREADS; k++) {
    for (int i = 0; i < PER; i++) {
      tctx_reset(&ctx[k][i], k * PER + i);
    }
    args[k] = (producer_arg){h, ctx[k], PER, 0};
  }
  tsan_release(&test_handoff);
  for (int k = 0; k < THREADS; k++) {
    REQUIRE(pthread_create(&t[k], NULL, producer, &args[k]) == 0);
  }
  for (int k = 0; k < THREADS; k++) {
    pthread_join(t[k], NULL);
    CHECK(args[k].errors == 0);
  }
  drain(h);
  for (int k = 0; k < THREADS; k++) {
    for (int i = 0; i < PER; i++) {
      CHECK_ONCE(&ctx[k][i]);
      CHECK(ctx[k][i].ok && linear_matches(&ctx[k][i]));
      CHECK(atomic_load(&ctx[k][i].fills) == (i % 3 == 2));
    }
  }
  pysched_stats s = stats_of(h);
  CHECK(s.total_enqueued == THREADS * PER && s.completed == THREADS * PER);
  CHECK(s.execute_batch_size_ema <= 16.0);
  check_counters_add_up(h);
  pysched_tensor_handler_free(h);
}

int main(void) {
  manager = test_manager();
  test_load_arguments();
  test_queue_and_handler_arguments();
  test_copy_in_outputs_into_caller_memory();
  test_borrowed_inputs();
  test_fill_in_place();
  test_python_errors_and_wrong_results();
  test_refusal_at_queueing();
  test_deadline();
  test_cancel_through_future();
  test_free_drains();
  test_many_producers();
  pysched_manager_free(manager);
  return test_finish("test_tensor");
}
