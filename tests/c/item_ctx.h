/* Per-item bookkeeping for queued items: C callbacks that build the item with the
 * CPython C-API and record every call, so tests can prove that `complete` and `drop`
 * run exactly once per item, in that order, on every path.
 *
 * Include after <Python.h> and "test_util.h". */
#ifndef PYSCHED_TEST_ITEM_CTX_H
#define PYSCHED_TEST_ITEM_CTX_H

#include <stdatomic.h>

enum commit_mode {
  COMMIT_INT = 0,          /* PyLong of `value` */
  COMMIT_FAIL = 1,         /* NULL with a ValueError set */
  COMMIT_FAIL_NO_EXC = 2,  /* NULL without an exception */
  COMMIT_OBJECT = 3,       /* `object` (a new reference to it) */
};

typedef struct item_ctx {
  /* Inputs. */
  long value;
  int commit_mode;
  int prepare_rc;        /* returned by prepare */
  int complete_rc;       /* returned by complete on success */
  PyObject *object;      /* for COMMIT_OBJECT (a reference owned by the test) */
  pysched_handler *free_in_complete; /* freed from inside complete (re-entrancy) */
  /* Observations. */
  atomic_int commits;
  atomic_int prepares;
  atomic_int completes;
  atomic_int drops;
  atomic_int bad_calls;  /* a callback saw something that breaks the contract */
  int complete_seq;
  int drop_seq;
  int gil_in_prepare;
  int gil_in_commit;
  int ok;                /* complete saw a result */
  long result;
  pysched_status kind;   /* complete saw an error of this kind */
  char message[512];
  char python_type[64];
  int has_traceback;
} item_ctx;

static atomic_int item_seq = 1;

static inline PyObject *item_commit(void *user_data) {
  item_ctx *c = (item_ctx *)user_data;
  tsan_acquire(&test_handoff);
  atomic_fetch_add(&c->commits, 1);
  c->gil_in_commit = PyGILState_Check();
  PyObject *obj = NULL;
  switch (c->commit_mode) {
  case COMMIT_FAIL:
    PyErr_Format(PyExc_ValueError, "commit refused %ld", c->value);
    break;
  case COMMIT_FAIL_NO_EXC:
    break;
  case COMMIT_OBJECT:
    Py_INCREF(c->object);
    obj = c->object;
    break;
  default:
    obj = PyLong_FromLong(c->value);
  }
  tsan_release(&test_handoff);
  return obj;
}

static inline int item_prepare(void *user_data) {
  item_ctx *c = (item_ctx *)user_data;
  tsan_acquire(&test_handoff);
  atomic_fetch_add(&c->prepares, 1);
  c->gil_in_prepare = PyGILState_Check();
  if (atomic_load(&c->commits) != 0) {
    atomic_fetch_add(&c->bad_calls, 1); /* prepare must come before commit */
  }
  int rc = c->prepare_rc;
  tsan_release(&test_handoff);
  return rc;
}

static inline void copy_str(char *dst, size_t cap, const char *src) {
  snprintf(dst, cap, "%s", src ? src : "(null)");
}

static inline int item_complete_body(item_ctx *c, PyObject *result,
                                     const pysched_error *error) {
  if (atomic_fetch_add(&c->completes, 1) != 0) {
    atomic_fetch_add(&c->bad_calls, 1);
  }
  c->complete_seq = atomic_fetch_add(&item_seq, 1);
  if ((result == NULL) == (error == NULL)) {
    atomic_fetch_add(&c->bad_calls, 1); /* exactly one of them is set */
    return 0;
  }
  if (result != NULL) {
    /* Success: on a worker, with the GIL held. */
    if (!PyGILState_Check()) {
      atomic_fetch_add(&c->bad_calls, 1);
    }
    c->ok = 1;
    if (PyLong_Check(result)) {
      c->result = PyLong_AsLong(result);
    } else {
      c->result = -999999;
    }
    if (c->free_in_complete) {
      pysched_handler *h = c->free_in_complete;
      c->free_in_complete = NULL;
      pysched_handler_free(h);
    }
    return c->complete_rc;
  }
  c->kind = pysched_error_kind(error);
  copy_str(c->message, sizeof c->message, pysched_error_message(error));
  copy_str(c->python_type, sizeof c->python_type, pysched_error_python_type(error));
  c->has_traceback = pysched_error_traceback(error)[0] != '\0';
  return 0;
}

static inline int item_complete(void *user_data, PyObject *result,
                                const pysched_error *error) {
  tsan_acquire(&test_handoff);
  int rc = item_complete_body((item_ctx *)user_data, result, error);
  tsan_release(&test_handoff);
  return rc;
}

static inline void item_drop(void *user_data) {
  item_ctx *c = (item_ctx *)user_data;
  tsan_acquire(&test_handoff);
  c->drop_seq = atomic_fetch_add(&item_seq, 1);
  tsan_release(&test_handoff);
  if (atomic_fetch_add(&c->drops, 1) != 0) {
    atomic_fetch_add(&c->bad_calls, 1);
  }
}

static inline void item_reset(item_ctx *c, long value) {
  memset(c, 0, sizeof *c);
  c->value = value;
}

/* Waits until the item's commit has run: its batch's Python call starts right after,
 * under the same GIL hold. Ends the program if that takes over 10 s. */
static inline void wait_item_started(item_ctx *c) {
  uint64_t give_up = now_us() + 10000000u;
  while (atomic_load(&c->commits) == 0 && now_us() < give_up) {
    sleep_us(200);
  }
  REQUIRE(atomic_load(&c->commits) == 1);
}

/* The item's callbacks for `c`. Publishes `c` for the worker (TSan). */
static inline pysched_item make_item(item_ctx *c) {
  tsan_release(&test_handoff);
  pysched_item item;
  memset(&item, 0, sizeof item);
  item.user_data = c;
  item.commit = item_commit;
  item.complete = item_complete;
  item.drop = item_drop;
  return item;
}

/* complete and drop each ran exactly once, complete first, with nothing odd seen. */
#define CHECK_ONCE(c)                                                             \
  do {                                                                            \
    tsan_acquire(&test_handoff);                                                  \
    const item_ctx *cc_ = (c);                                                    \
    if (atomic_load(&cc_->completes) != 1 || atomic_load(&cc_->drops) != 1 ||     \
        atomic_load(&cc_->bad_calls) != 0 || cc_->complete_seq >= cc_->drop_seq) { \
      fprintf(stderr,                                                             \
              "%s:%d: item %ld: completes=%d drops=%d bad_calls=%d "              \
              "complete_seq=%d drop_seq=%d\n",                                    \
              __FILE__, __LINE__, cc_->value, atomic_load(&cc_->completes),       \
              atomic_load(&cc_->drops), atomic_load(&cc_->bad_calls),             \
              cc_->complete_seq, cc_->drop_seq);                                  \
      test_failures++;                                                            \
    }                                                                             \
  } while (0)

#endif /* PYSCHED_TEST_ITEM_CTX_H */
