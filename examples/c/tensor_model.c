/* A numpy model served from C through a tensor handler (include/pyscheduler.h): four
 * threads queue items of 8 float32 features each; pyscheduler gathers the items of a
 * batch into ONE (B, 8) float32 tensor, makes ONE Python call per batch, and copies
 * each item's rows of the two outputs (3 float32 scores, one int64 class) straight into
 * the item's own memory. No Python object is made per item, and this file needs no
 * Python.h. Every item is checked against the same model computed here in C.
 *
 * Python side: examples/python/tensor_model.py (classify). */
#include <pyscheduler.h>

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#ifndef PYSCHEDULER_EXAMPLES_PYTHON_DIR
#error "PYSCHEDULER_EXAMPLES_PYTHON_DIR must name the directory of the example Python modules"
#endif

enum { FEATURES = 8, HIDDEN = 16, CLASSES = 3, THREADS = 4, PER_THREAD = 500 };

/* One request: its features, and where its outputs go. The outputs are written by a
 * pool thread before `complete` runs; the drain (or a future) orders them before the
 * reads in main. That ordering is made inside the Rust core, which ThreadSanitizer
 * cannot see, so the field the callback writes is an atomic. */
struct request {
  float features[FEATURES];
  float scores[CLASSES];
  int64_t class_id;
  atomic_int outcome; /* 0: pending, 1: done, -1: failed */
};

static struct request requests[THREADS][PER_THREAD];
static atomic_int drops = 0;

static float feature(int t, int i, int f) { return (float)((t * 31 + i * 7 + f * 3) % 17) / 4.0f - 2.0f; }

/* examples/python/tensor_model.py, in C. */
static void reference(const float *x, float *scores) {
  float hidden[HIDDEN];
  for (int j = 0; j < HIDDEN; j++) {
    float acc = (float)(j % 4 - 1.5) / 4.0f;
    for (int i = 0; i < FEATURES; i++) {
      acc += x[i] * (float)((i * 5 + j * 3) % 11 - 5) / 10.0f;
    }
    hidden[j] = acc > 0 ? acc : 0;
  }
  const float b2[CLASSES] = {0.25f, -0.5f, 0.125f};
  for (int k = 0; k < CLASSES; k++) {
    float acc = b2[k];
    for (int j = 0; j < HIDDEN; j++) {
      acc += hidden[j] * (float)((j * 7 + k * 2) % 9 - 4) / 8.0f;
    }
    scores[k] = acc;
  }
}

/* The item's outcome: its rows are in place when `error` is NULL. Called once, on a
 * pool thread without the GIL (or on the queueing thread if the item is refused). */
static void on_complete(void *user_data, const pysched_error *error) {
  struct request *r = user_data;
  if (error != NULL) {
    fprintf(stderr, "an item failed: %s\n", pysched_error_message(error));
  }
  atomic_store_explicit(&r->outcome, error == NULL ? 1 : -1, memory_order_release);
}

/* Called exactly once per item, after on_complete, on every path. The requests live in
 * a static array here; a heap request would be freed in this callback. */
static void on_drop(void *user_data) {
  (void)user_data;
  atomic_fetch_add(&drops, 1);
}

struct producer {
  const pysched_tensor_handler *handler;
  int thread;
  int refused;
};

static void *produce(void *arg) {
  struct producer *p = arg;
  for (int i = 0; i < PER_THREAD; i++) {
    struct request *r = &requests[p->thread][i];
    for (int f = 0; f < FEATURES; f++) {
      r->features[f] = feature(p->thread, i, f);
    }
    const void *inputs[1] = {r->features};      /* copied before queue returns */
    void *outputs[2] = {r->scores, &r->class_id}; /* written before on_complete */
    pysched_tensor_item item;
    memset(&item, 0, sizeof item);
    item.user_data = r;
    item.inputs = inputs;
    item.outputs = outputs;
    item.complete = on_complete;
    item.drop = on_drop;
    pysched_error *error = NULL;
    if (pysched_tensor_handler_queue(p->handler, &item, NULL, &error) != PYSCHED_OK) {
      fprintf(stderr, "queue: %s\n", pysched_error_message(error)); /* on_complete ran too */
      pysched_error_free(error);
      p->refused++;
    }
  }
  return NULL;
}

static int report(const char *what, pysched_status status, pysched_error *error) {
  fprintf(stderr, "%s failed (%s): %s\n", what, pysched_status_name(status), pysched_error_message(error));
  pysched_error_free(error);
  return 1;
}

int main(void) {
  pysched_manager *manager = NULL;
  pysched_error *error = NULL;
  pysched_status status = pysched_manager_new(NULL, &manager, &error);
  if (status != PYSCHED_OK) {
    return report("pysched_manager_new", status, error);
  }
  status = pysched_manager_add_path(manager, PYSCHEDULER_EXAMPLES_PYTHON_DIR, &error);
  if (status != PYSCHED_OK) {
    return report("pysched_manager_add_path", status, error);
  }

  /* classify: (float32[8]) -> (float32[3], int64 scalar), host batch tensors. */
  const int64_t features_shape[1] = {FEATURES};
  const int64_t scores_shape[1] = {CLASSES};
  const pysched_tensor_spec inputs[1] = {{PYSCHED_DTYPE_F32, 1, features_shape}};
  const pysched_tensor_spec outputs[2] = {{PYSCHED_DTYPE_F32, 1, scores_shape}, {PYSCHED_DTYPE_I64, 0, NULL}};
  const pysched_tensor_signature signature = {inputs, 1, outputs, 2, -1};
  pysched_handler_options options = pysched_handler_options_default();
  options.batch_size = 64;
  pysched_tensor_handler *handler = NULL;
  status = pysched_manager_load_tensor(manager, "tensor_model", "classify", &signature, &options, &handler,
                                       &error);
  if (status != PYSCHED_OK) {
    return report("pysched_manager_load_tensor", status, error);
  }

  pthread_t threads[THREADS];
  struct producer producers[THREADS];
  for (int t = 0; t < THREADS; t++) {
    producers[t] = (struct producer){handler, t, 0};
    pthread_create(&threads[t], NULL, produce, &producers[t]);
  }
  int refused = 0;
  for (int t = 0; t < THREADS; t++) {
    pthread_join(threads[t], NULL);
    refused += producers[t].refused;
  }
  status = pysched_tensor_handler_drain(handler, &error); /* every on_complete has run */
  if (status != PYSCHED_OK) {
    return report("pysched_tensor_handler_drain", status, error);
  }

  int wrong = 0;
  for (int t = 0; t < THREADS; t++) {
    for (int i = 0; i < PER_THREAD; i++) {
      struct request *r = &requests[t][i];
      float want[CLASSES];
      reference(r->features, want);
      int best = 0;
      for (int k = 0; k < CLASSES; k++) {
        if (fabsf(r->scores[k] - want[k]) > 1e-4f) {
          wrong++;
        }
        if (r->scores[k] > r->scores[best]) {
          best = k;
        }
      }
      if (atomic_load_explicit(&r->outcome, memory_order_acquire) != 1 || r->class_id != best) {
        wrong++;
      }
    }
  }
  pysched_stats stats;
  pysched_tensor_handler_stats(handler, &stats, NULL);
  printf("%d items from %d threads in %llu Python calls (%.1f items per call); %d wrong, %d refused\n",
         THREADS * PER_THREAD, THREADS, (unsigned long long)stats.batches,
         (double)stats.completed / (double)(stats.batches ? stats.batches : 1), wrong, refused);
  printf("item 0: scores %.4f %.4f %.4f -> class %lld\n", requests[0][0].scores[0], requests[0][0].scores[1],
         requests[0][0].scores[2], (long long)requests[0][0].class_id);

  pysched_tensor_handler_free(handler);
  pysched_manager_free(manager);
  int ok = wrong == 0 && refused == 0 && atomic_load(&drops) == THREADS * PER_THREAD &&
           stats.completed == (uint64_t)(THREADS * PER_THREAD);
  printf(ok ? "C tensor example: all results as expected\n" : "C tensor example: UNEXPECTED RESULTS\n");
  return ok ? 0 : 1;
}
