/* GIL-free staging overlaps Python execution: with prefetch_depth > 1, items queued
 * while a batch runs are prepared (on another worker, without the GIL) before that
 * batch finishes -- the point of prepare for decoding and GPU uploads (API.md part C;
 * the header: "ahead of execution (up to prefetch_depth batches)"). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "test_util.h"
#include "item_ctx.h"

static void run_case(uint32_t prefetch, uint32_t concurrency, int queue_before_start) {
  pysched_manager *m = test_manager();
  pysched_handler_options o = test_options(4);
  o.prefetch_depth = prefetch;
  o.concurrency = concurrency;
  pysched_handler *h = test_load(m, "pysched_ctest", "sleep_or_double", &o);
  item_ctx blocker;
  item_reset(&blocker, -400);
  pysched_item item = make_item(&blocker);
  pysched_future *bf = NULL;
  pysched_error *err = NULL;
  enum { N = 8 };
  static item_ctx ctx[N];
  REQUIRE(CHECK_STATUS(PYSCHED_OK, pysched_handler_queue(h, &item, &bf, &err)) == PYSCHED_OK);
  if (!queue_before_start) {
    wait_item_started(&blocker);
  }
  for (int i = 0; i < N; i++) {
    item_reset(&ctx[i], i);
    item = make_item(&ctx[i]);
    item.prepare = item_prepare;
    REQUIRE(CHECK_STATUS(PYSCHED_OK, pysched_handler_queue(h, &item, NULL, &err)) ==
            PYSCHED_OK);
  }
  /* Give a worker 200 ms (of the blocker's 400) to prepare the first batch. */
  uint64_t give_up = now_us() + 200000;
  while (atomic_load(&ctx[0].prepares) == 0 && now_us() < give_up) {
    sleep_us(500);
  }
  int prepared = atomic_load(&ctx[0].prepares);
  int blocker_done = pysched_future_is_ready(bf);
  if (!prepared || blocker_done) {
    fprintf(stderr,
            "prefetch %u, concurrency %u, items queued %s the batch started: nothing was "
            "prepared while the batch ran (prepared=%d, batch finished=%d)\n",
            prefetch, concurrency, queue_before_start ? "before" : "after", prepared,
            blocker_done);
    test_failures++;
  }
  CHECK_STATUS(PYSCHED_OK, pysched_handler_drain(h, &err));
  for (int i = 0; i < N; i++) {
    CHECK(ctx[i].ok && ctx[i].result == 2 * i && ctx[i].gil_in_prepare == 0);
    CHECK_ONCE(&ctx[i]);
  }
  pysched_future_free(bf);
  pysched_handler_free(h);
  pysched_manager_free(m);
}

int main(void) {
  run_case(2, 1, 0);
  run_case(2, 1, 1);
  run_case(3, 2, 0);
  return test_finish("test_prefetch");
}
