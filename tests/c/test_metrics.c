/* Stats, latency quantiles and the Prometheus text through the C ABI: zero before the
 * first item, consistent after a drain, and a text exposition that a scraper accepts
 * (TYPE lines, metric and label syntax, escaping, cumulative histogram buckets ending
 * in +Inf == _count, counters equal to the stats), with snprintf-style truncation. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "test_util.h"

#include <ctype.h>

static pysched_manager *manager;

static PyObject *commit_int(void *user_data) {
  return PyLong_FromLong((long)(intptr_t)user_data);
}

static void queue_n(pysched_handler *h, int n) {
  for (int i = 0; i < n; i++) {
    pysched_item item;
    memset(&item, 0, sizeof item);
    item.user_data = (void *)(intptr_t)i;
    item.commit = commit_int;
    pysched_error *err = NULL;
    REQUIRE(CHECK_STATUS(PYSCHED_OK, pysched_handler_queue(h, &item, NULL, &err)) ==
            PYSCHED_OK);
  }
  pysched_error *err = NULL;
  CHECK_STATUS(PYSCHED_OK, pysched_handler_drain(h, &err));
}

static char *metrics(pysched_handler *h) {
  size_t len = pysched_handler_metrics_text(h, NULL, 0);
  char *buf = malloc(len + 1);
  REQUIRE(buf != NULL);
  memset(buf, 'x', len + 1);
  size_t again = pysched_handler_metrics_text(h, buf, len + 1);
  CHECK(again == len);
  CHECK(buf[len] == '\0' && strlen(buf) == len);
  return buf;
}

/* One exposition, parsed line by line. */
typedef struct {
  char family[128];
  char type[32];
  double last_bucket;
  double last_le;
  double inf_bucket;
  int saw_inf;
  int lines;
} parse_state;

static int valid_metric_name(const char *s, size_t n) {
  if (n == 0 || !(isalpha((unsigned char)s[0]) || s[0] == '_' || s[0] == ':')) {
    return 0;
  }
  for (size_t i = 1; i < n; i++) {
    if (!(isalnum((unsigned char)s[i]) || s[i] == '_' || s[i] == ':')) {
      return 0;
    }
  }
  return 1;
}

static int ends_with(const char *s, size_t n, const char *suffix) {
  size_t k = strlen(suffix);
  return n >= k && memcmp(s + n - k, suffix, k) == 0;
}

/* Checks a `{name="value",...}` label set; returns the index after '}' or 0. Copies
 * the `le` label's value into `le` when present. */
static size_t parse_labels(const char *s, char *le, size_t le_cap, int *has_handler) {
  size_t i = 1;
  le[0] = '\0';
  for (;;) {
    size_t start = i;
    while (isalnum((unsigned char)s[i]) || s[i] == '_') {
      i++;
    }
    if (i == start || s[i] != '=' || s[i + 1] != '"') {
      return 0;
    }
    int is_le = (i - start == 2 && memcmp(s + start, "le", 2) == 0);
    *has_handler |= (i - start == 7 && memcmp(s + start, "handler", 7) == 0);
    i += 2;
    size_t v = 0;
    while (s[i] != '"') {
      if (s[i] == '\0' || s[i] == '\n') {
        return 0;
      }
      if (s[i] == '\\') {
        if (s[i + 1] != '\\' && s[i + 1] != '"' && s[i + 1] != 'n') {
          return 0; /* only these escapes are valid in label values */
        }
        i++;
      }
      if (is_le && v + 1 < le_cap) {
        le[v++] = s[i];
      }
      i++;
    }
    if (is_le) {
      le[v] = '\0';
    }
    i++;
    if (s[i] == '}') {
      return i + 1;
    }
    if (s[i] != ',') {
      return 0;
    }
    i++;
  }
}

/* Validates one exposition; returns the number of problems. `expect` holds
 * (metric, value) pairs that must appear. */
static int check_exposition(const char *text, const char *const *names,
                            const double *values, size_t n_expect) {
  int problems = 0;
  int found[32] = {0};
  parse_state st;
  memset(&st, 0, sizeof st);
  const char *line = text;
  while (*line) {
    const char *nl = strchr(line, '\n');
    if (nl == NULL) {
      fprintf(stderr, "metrics: last line not terminated: %s\n", line);
      return problems + 1;
    }
    size_t len = (size_t)(nl - line);
    char buf[1024];
    if (len >= sizeof buf) {
      fprintf(stderr, "metrics: line too long\n");
      return problems + 1;
    }
    memcpy(buf, line, len);
    buf[len] = '\0';
    st.lines++;
    if (buf[0] == '#') {
      char family[128], type[32];
      if (sscanf(buf, "# TYPE %127s %31s", family, type) != 2 ||
          !valid_metric_name(family, strlen(family)) ||
          (strcmp(type, "counter") && strcmp(type, "gauge") && strcmp(type, "histogram"))) {
        fprintf(stderr, "metrics: bad comment line: %s\n", buf);
        problems++;
      }
      if (strcmp(st.type, "histogram") == 0 && !st.saw_inf) {
        fprintf(stderr, "metrics: histogram %s has no +Inf bucket\n", st.family);
        problems++;
      }
      snprintf(st.family, sizeof st.family, "%s", family);
      snprintf(st.type, sizeof st.type, "%s", type);
      st.last_bucket = 0;
      st.last_le = -1;
      st.saw_inf = 0;
      if (strcmp(type, "counter") == 0 && !ends_with(family, strlen(family), "_total")) {
        fprintf(stderr, "metrics: counter %s does not end in _total\n", family);
        problems++;
      }
    } else {
      size_t name_len = strcspn(buf, "{ ");
      char le[64] = "";
      int has_handler = 0;
      size_t after = name_len;
      if (!valid_metric_name(buf, name_len)) {
        fprintf(stderr, "metrics: bad metric name: %s\n", buf);
        problems++;
        line = nl + 1;
        continue;
      }
      if (buf[name_len] == '{') {
        size_t k = parse_labels(buf + name_len, le, sizeof le, &has_handler);
        if (k == 0) {
          fprintf(stderr, "metrics: bad labels: %s\n", buf);
          problems++;
          line = nl + 1;
          continue;
        }
        after = name_len + k;
      }
      if (!has_handler) {
        fprintf(stderr, "metrics: sample without a handler label: %s\n", buf);
        problems++;
      }
      char *end = NULL;
      if (buf[after] != ' ') {
        fprintf(stderr, "metrics: no value: %s\n", buf);
        problems++;
        line = nl + 1;
        continue;
      }
      double value = strtod(buf + after + 1, &end);
      if (end == buf + after + 1 || *end != '\0') {
        fprintf(stderr, "metrics: bad value: %s\n", buf);
        problems++;
      }
      /* The sample belongs to the family of the last TYPE line. */
      size_t fl = strlen(st.family);
      int belongs = name_len == fl && memcmp(buf, st.family, fl) == 0;
      if (strcmp(st.type, "histogram") == 0 && name_len > fl &&
          memcmp(buf, st.family, fl) == 0) {
        const char *suffix = buf + fl;
        size_t sl = name_len - fl;
        if (sl == 7 && memcmp(suffix, "_bucket", 7) == 0) {
          belongs = 1;
          if (strcmp(le, "+Inf") == 0) {
            st.saw_inf = 1;
            st.inf_bucket = value;
          } else {
            double bound = strtod(le, &end);
            if (le[0] == '\0' || *end != '\0' || bound <= st.last_le) {
              fprintf(stderr, "metrics: bad or unordered le: %s\n", buf);
              problems++;
            }
            st.last_le = bound;
            if (st.saw_inf) {
              fprintf(stderr, "metrics: bucket after +Inf: %s\n", buf);
              problems++;
            }
          }
          if (value < st.last_bucket) {
            fprintf(stderr, "metrics: buckets not cumulative: %s\n", buf);
            problems++;
          }
          st.last_bucket = value;
        } else if ((sl == 4 && memcmp(suffix, "_sum", 4) == 0)) {
          belongs = 1;
        } else if (sl == 6 && memcmp(suffix, "_count", 6) == 0) {
          belongs = 1;
          if (!st.saw_inf || value != st.inf_bucket) {
            fprintf(stderr, "metrics: _count differs from the +Inf bucket: %s\n", buf);
            problems++;
          }
        }
      }
      if (!belongs) {
        fprintf(stderr, "metrics: sample outside its TYPE family %s: %s\n", st.family, buf);
        problems++;
      }
      for (size_t k = 0; k < n_expect; k++) {
        if (name_len == strlen(names[k]) && memcmp(buf, names[k], name_len) == 0) {
          found[k]++;
          if (value != values[k]) {
            fprintf(stderr, "metrics: %s is %g, stats say %g\n", names[k], value,
                    values[k]);
            problems++;
          }
        }
      }
    }
    line = nl + 1;
  }
  for (size_t k = 0; k < n_expect; k++) {
    if (found[k] != 1) {
      fprintf(stderr, "metrics: %s appears %d times\n", names[k], found[k]);
      problems++;
    }
  }
  if (st.lines == 0) {
    problems++;
  }
  return problems;
}

static int check_against_stats(pysched_handler *h) {
  pysched_stats s;
  pysched_error *err = NULL;
  CHECK_STATUS(PYSCHED_OK, pysched_handler_stats(h, &s, &err));
  const char *names[] = {
      "pyscheduler_items_enqueued_total",  "pyscheduler_items_completed_total",
      "pyscheduler_items_failed_total",    "pyscheduler_items_cancelled_total",
      "pyscheduler_items_expired_total",   "pyscheduler_items_rejected_total",
      "pyscheduler_commit_queue_size",     "pyscheduler_execute_queue_size",
      "pyscheduler_batch_size_count"};
  const double values[] = {
      (double)s.total_enqueued, (double)s.completed, (double)s.failed,
      (double)s.cancelled,      (double)s.expired,   (double)s.rejected,
      (double)s.commit_queue_size, (double)s.execute_queue_size, (double)s.batches};
  char *text = metrics(h);
  int problems = check_exposition(text, names, values, sizeof names / sizeof names[0]);
  if (problems) {
    fprintf(stderr, "---- exposition ----\n%s--------------------\n", text);
  }
  free(text);
  return problems;
}

static void test_zero_before_first_item(void) {
  pysched_handler *h = test_load(manager, "pysched_testmod", "double", NULL);
  pysched_stats s;
  pysched_latency l;
  pysched_error *err = NULL;
  memset(&s, 0xff, sizeof s);
  memset(&l, 0xff, sizeof l);
  CHECK_STATUS(PYSCHED_OK, pysched_handler_stats(h, &s, &err));
  CHECK_STATUS(PYSCHED_OK, pysched_handler_latency(h, &l, &err));
  CHECK(s.commit_queue_size == 0 && s.execute_queue_size == 0 && s.total_enqueued == 0);
  CHECK(s.completed == 0 && s.failed == 0 && s.cancelled == 0 && s.expired == 0 &&
        s.rejected == 0 && s.batches == 0);
  CHECK(s.commit_batch_size_ema == 0.0 && s.execute_batch_size_ema == 0.0 &&
        s.commit_ns_per_batch_ema == 0.0 && s.execute_ns_per_batch_ema == 0.0);
  CHECK(l.batch_size_p50 == 0 && l.batch_size_p99 == 0 && l.queue_wait_ns_p50 == 0 &&
        l.queue_wait_ns_p99 == 0 && l.commit_ns_p50 == 0 && l.commit_ns_p99 == 0 &&
        l.execute_ns_p50 == 0 && l.execute_ns_p99 == 0 && l.gil_wait_ns_p50 == 0 &&
        l.gil_wait_ns_p99 == 0);
  CHECK(check_against_stats(h) == 0);
  pysched_handler_free(h);
}

static void test_after_drain(void) {
  pysched_handler_options o = test_options(8);
  pysched_handler *h = test_load(manager, "pysched_testmod", "double", &o);
  queue_n(h, 500);
  pysched_stats s;
  pysched_latency l;
  pysched_error *err = NULL;
  CHECK_STATUS(PYSCHED_OK, pysched_handler_stats(h, &s, &err));
  CHECK_STATUS(PYSCHED_OK, pysched_handler_latency(h, &l, &err));
  CHECK(s.total_enqueued == 500 && s.completed == 500 && s.failed == 0);
  CHECK(s.commit_queue_size == 0 && s.execute_queue_size == 0);
  CHECK(s.batches >= 500 / 8 && s.batches <= 500);
  CHECK(s.commit_batch_size_ema > 0.0 && s.commit_batch_size_ema <= 8.0);
  CHECK(s.execute_batch_size_ema >= 1.0 && s.execute_batch_size_ema <= 8.0);
  CHECK(s.commit_ns_per_batch_ema > 0.0 && s.execute_ns_per_batch_ema > 0.0);
  CHECK(l.batch_size_p50 >= 1 && l.batch_size_p50 <= l.batch_size_p99);
  CHECK(l.batch_size_p99 <= 15); /* bucket upper bound that holds 8 */
  CHECK(l.execute_ns_p50 > 0 && l.execute_ns_p50 <= l.execute_ns_p99);
  CHECK(l.commit_ns_p50 <= l.commit_ns_p99);
  CHECK(l.queue_wait_ns_p50 <= l.queue_wait_ns_p99);
  CHECK(l.gil_wait_ns_p50 <= l.gil_wait_ns_p99);
  CHECK(check_against_stats(h) == 0);

  /* snprintf-style truncation. */
  size_t len = pysched_handler_metrics_text(h, NULL, 0);
  CHECK(len > 100);
  char *full = metrics(h);
  char small[16];
  memset(small, 'x', sizeof small);
  CHECK(pysched_handler_metrics_text(h, small, 1) == len);
  CHECK(small[0] == '\0' && small[1] == 'x');
  memset(small, 'x', sizeof small);
  CHECK(pysched_handler_metrics_text(h, small, 10) == len);
  CHECK(strlen(small) == 9 && memcmp(small, full, 9) == 0 && small[10] == 'x');
  char *exact = malloc(len);
  CHECK(pysched_handler_metrics_text(h, exact, len) == len);
  CHECK(strlen(exact) == len - 1 && memcmp(exact, full, len - 1) == 0);
  /* A non-NULL buffer with capacity 0 is left alone. */
  small[0] = 'q';
  CHECK(pysched_handler_metrics_text(h, small, 0) == len);
  CHECK(small[0] == 'q');
  free(exact);
  free(full);
  pysched_handler_free(h);
}

static void test_failures_are_counted(void) {
  /* One batch, held back by the batch delay until all items are queued: no item can
   * fail inside pysched_handler_queue (see test_queue_edge.c). */
  pysched_handler_options o = test_options(64);
  o.max_batch_delay_us = 300000;
  pysched_handler *h = test_load(manager, "pysched_testmod", "raise_value_error", &o);
  queue_n(h, 40);
  pysched_stats s;
  pysched_error *err = NULL;
  CHECK_STATUS(PYSCHED_OK, pysched_handler_stats(h, &s, &err));
  CHECK(s.failed == 40 && s.completed == 0 && s.total_enqueued == 40);
  CHECK(check_against_stats(h) == 0);
  pysched_handler_free(h);
}

static void test_label_escaping(void) {
  pysched_handler_options o = test_options(2);
  o.name = "we\"ird\\na\nme {x=\"1\"}";
  pysched_handler *h = test_load(manager, "pysched_testmod", "double", &o);
  CHECK(strcmp(pysched_handler_name(h), o.name) == 0);
  queue_n(h, 10);
  CHECK(check_against_stats(h) == 0);
  char *text = metrics(h);
  CHECK_CONTAINS(text, "handler=\"we\\\"ird\\\\na\\nme {x=\\\"1\\\"}\"");
  free(text);
  pysched_handler_free(h);
}

int main(void) {
  manager = test_manager();
  test_zero_before_first_item();
  test_after_drain();
  test_failures_are_counted();
  test_label_escaping();
  pysched_manager_free(manager);
  return test_finish("test_metrics");
}
