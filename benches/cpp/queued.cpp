// Throughput of queued items: identity items through queue_invoke (std::future),
// queue_invoke_future (pyscheduler::ext::Future), the C ABI with callbacks only and the
// C ABI with a C++20 atomic future, at batch 256 against the inline floor (queued_b256
// _f _c _l), from 4 producers against 1 (producers4, producers4_pb) and at batch 1 against
// a plain pybind11 embedding (queued_b1 _f).
#include "bench.hpp"

#include <latch>
#include <memory>

namespace pysched_bench {

// ---- the workloads --------------------------------------------------------------------

namespace {

// Queues n identity items from this thread with `queue(value)` (which returns the item's
// future) and waits for all futures. Returns ns per item (enqueue of the first to the
// last future resolved); `wrong_values` is the self-check's message.
template <typename Queue>
double queued_identity_through(std::size_t n, long base, const char* wrong_values, Queue&& queue) {
  std::vector<decltype(queue(0L))> futures;
  futures.reserve(n);
  const auto t0 = Clock::now();
  for (std::size_t i = 0; i < n; ++i) {
    futures.push_back(queue(base + static_cast<long>(i)));
  }
  long sum = 0;
  for (auto& f : futures) sum += f.get();
  const auto t1 = Clock::now();
  const long nn = static_cast<long>(n);
  check(sum == nn * base + nn * (nn - 1) / 2, wrong_values);
  return elapsed_ns(t0, t1) / static_cast<double>(n);
}

// Through the drop-in API: one std::promise/std::future pair per item.
double queued_identity_ns(Handler& h, std::size_t n, long base = 0) {
  return queued_identity_through(n, base, "queued identity returned wrong values",
                                 [&](long v) { return h.queue_invoke(kCommitInt, kCastLong, v); });
}

// The same through queue_invoke_future: one pyscheduler::ext::Future (the item's own context,
// shared with the core) per item instead of a std::promise/std::future pair.
double queued_identity_future_ns(Handler& h, std::size_t n, long base = 0) {
  return queued_identity_through(n, base, "queued identity (pyscheduler::ext::Future) returned wrong values",
                                 [&](long v) { return h.queue_invoke_future(kCommitInt, kCastLong, v); });
}

}  // namespace

// The same through the C ABI with fire-and-forget callbacks (no std::future, no heap
// context per item): isolates the core from the wrapper.
std::atomic<long> g_cabi_sum{0};
PyObject* cabi_commit(void* user_data) { return PyLong_FromLong(static_cast<long>(reinterpret_cast<std::intptr_t>(user_data))); }
int cabi_complete(void*, PyObject* result, const pysched_error*) {
  if (result) g_cabi_sum.fetch_add(PyLong_AsLong(result), std::memory_order_relaxed);
  return 0;
}

double queued_identity_cabi_ns(Handler& h, std::size_t n) {
  g_cabi_sum = 0;
  const pysched_handler* ch = h.native_handle();
  const auto t0 = Clock::now();
  for (std::size_t i = 0; i < n; ++i) {
    pysched_item item{};
    item.user_data = reinterpret_cast<void*>(static_cast<std::intptr_t>(i));
    item.commit = &cabi_commit;
    item.complete = &cabi_complete;
    pysched_handler_queue(ch, &item, nullptr, nullptr);
  }
  check(pysched_handler_drain(ch, nullptr) == PYSCHED_OK, "drain");
  const auto t1 = Clock::now();
  const long nn = static_cast<long>(n);
  check(g_cabi_sum.load() == nn * (nn - 1) / 2, "C ABI identity returned wrong values");
  return elapsed_ns(t0, t1) / static_cast<double>(n);
}

namespace {

// The same through the C ABI with a minimal future per item (a heap context holding an
// std::atomic flag and the value; the waiter blocks with C++20 atomic wait, the worker
// stores and notifies, which makes a syscall only when someone waits): what a future
// type without std::promise's per-item costs would reach.
struct LightFuture {
  long input = 0;
  long value = 0;
  std::atomic<int> ready{0};
};
PyObject* light_commit(void* user_data) { return PyLong_FromLong(static_cast<LightFuture*>(user_data)->input); }
int light_complete(void* user_data, PyObject* result, const pysched_error*) {
  auto* f = static_cast<LightFuture*>(user_data);
  f->value = result ? PyLong_AsLong(result) : -1;
  f->ready.store(1, std::memory_order_release);
  f->ready.notify_one();
  return 0;
}

double queued_identity_light_ns(Handler& h, std::size_t n) {
  const pysched_handler* ch = h.native_handle();
  std::vector<std::unique_ptr<LightFuture>> futures;
  futures.reserve(n);
  const auto t0 = Clock::now();
  for (std::size_t i = 0; i < n; ++i) {
    futures.push_back(std::make_unique<LightFuture>());
    futures.back()->input = static_cast<long>(i);
    pysched_item item{};
    item.user_data = futures.back().get();
    item.commit = &light_commit;
    item.complete = &light_complete;
    pysched_handler_queue(ch, &item, nullptr, nullptr);
  }
  long sum = 0;
  for (auto& f : futures) {
    while (f->ready.load(std::memory_order_acquire) == 0) f->ready.wait(0, std::memory_order_acquire);
    sum += f->value;
    f.reset();
  }
  const auto t1 = Clock::now();
  const long nn = static_cast<long>(n);
  check(sum == nn * (nn - 1) / 2, "light-future identity returned wrong values");
  return elapsed_ns(t0, t1) / static_cast<double>(n);
}

// The inline floor: the same lists built with pybind11, passed to the same function and
// unpacked, by this one thread holding the GIL throughout.
double inline_floor_ns(std::size_t n, std::size_t batch) {
  py::gil_scoped_acquire gil;
  const py::object& f = g_py->identity;
  long sum = 0;
  const auto t0 = Clock::now();
  for (std::size_t base = 0; base < n; base += batch) {
    const std::size_t m = std::min(batch, n - base);
    py::list items(m);
    for (std::size_t j = 0; j < m; ++j) items[j] = py::int_(static_cast<long>(base + j));
    py::list results = f(items);
    for (auto r : results) sum += r.cast<long>();
  }
  const auto t1 = Clock::now();
  const long nn = static_cast<long>(n);
  check(sum == nn * (nn - 1) / 2, "inline floor returned wrong values");
  return elapsed_ns(t0, t1) / static_cast<double>(n);
}

// Plain pybind11 embedding, the original's approach: each C++ thread takes the GIL with
// gil_scoped_acquire for every item and calls the function with a one-item list.
double plain_pybind11_ns(std::size_t threads, std::size_t per_thread) {
  std::latch start(static_cast<std::ptrdiff_t>(threads) + 1);
  std::atomic<long> total{0};
  std::vector<std::thread> pool;
  for (std::size_t t = 0; t < threads; ++t) {
    pool.emplace_back([&] {
      start.arrive_and_wait();
      long sum = 0;
      for (std::size_t i = 0; i < per_thread; ++i) {
        py::gil_scoped_acquire gil;
        py::list items(1);
        items[0] = py::int_(static_cast<long>(i));
        py::list results = g_py->identity(items);
        sum += results[0].cast<long>();
      }
      total += sum;
    });
  }
  const auto t0 = Clock::now();
  start.arrive_and_wait();
  for (auto& th : pool) th.join();
  const auto t1 = Clock::now();
  const long n = static_cast<long>(per_thread);
  check(total.load() == static_cast<long>(threads) * n * (n - 1) / 2, "plain pybind11 returned wrong values");
  return elapsed_ns(t0, t1) / static_cast<double>(threads * per_thread);
}

// `producers` threads each queue `per_producer` identity items and wait for their own
// futures. ns per item over all items.
double producers_ns(Handler& h, std::size_t producers, std::size_t per_producer) {
  std::latch start(static_cast<std::ptrdiff_t>(producers) + 1);
  std::atomic<bool> ok{true};
  std::vector<std::thread> pool;
  for (std::size_t p = 0; p < producers; ++p) {
    pool.emplace_back([&, p] {
      std::vector<std::future<long>> futures;
      futures.reserve(per_producer);
      const long base = static_cast<long>(p * per_producer);
      start.arrive_and_wait();
      for (std::size_t i = 0; i < per_producer; ++i) {
        futures.push_back(h.queue_invoke(kCommitInt, kCastLong, base + static_cast<long>(i)));
      }
      long sum = 0;
      for (auto& f : futures) sum += f.get();
      const long n = static_cast<long>(per_producer);
      if (sum != n * base + n * (n - 1) / 2) ok = false;
    });
  }
  const auto t0 = Clock::now();
  start.arrive_and_wait();
  for (auto& th : pool) th.join();
  const auto t1 = Clock::now();
  check(ok.load(), "producers got wrong values");
  return elapsed_ns(t0, t1) / static_cast<double>(producers * per_producer);
}

}  // namespace

// ---- rows -----------------------------------------------------------------------------

void rows_queued_b256(const Config& cfg, PyManager& mgr, std::vector<Row>& rows) {
  Handler h = load(mgr, "identity", 256);
  const std::size_t n = cfg.queued_items;
  queued_identity_ns(h, n / 4);  // warm-up (thread states, allocator pools)
  queued_identity_cabi_ns(h, n / 4);
  queued_identity_light_ns(h, n / 4);
  queued_identity_future_ns(h, n / 4);
  inline_floor_ns(n / 4, 256);
  std::vector<double> floor, std_future, future, cabi, light;
  for (int i = 0; i < cfg.reps; ++i) {
    floor.push_back(inline_floor_ns(n, 256));
    std_future.push_back(queued_identity_ns(h, n));
    future.push_back(queued_identity_future_ns(h, n));
    cabi.push_back(queued_identity_cabi_ns(h, n));
    light.push_back(queued_identity_light_ns(h, n));
  }
  const auto st = h.stats();
  char note[256];
  std::snprintf(note, sizeof note,
                "%zu items/rep through queue_invoke + std::future (commit py::int_, callback cast<long>); "
                "mean batch %.1f",
                n, st.execute_batch_size_ema);
  // Each against the same floor; a target of "-" makes a reference row.
  const struct {
    const char* id;
    const char* workload;
    std::vector<double>& samples;
    const char* target;
    std::string note;
  } subjects[] = {
      {"queued_b256", "queued identity, batch 256, 1 producer", std_future, "<= 3x floor", note},
      {"queued_b256_f", "queued identity, batch 256 via queue_invoke_future (pyscheduler::ext::Future)", future,
       "<= 3x floor",
       "the same items through queue_invoke_future: one heap context per item shared by the core and the "
       "Future (atomic state word, C++20 atomic wait), no std::promise"},
      {"queued_b256_c", "  same through the C ABI (no std::future)", cabi, "-",
       "pysched_handler_queue with C callbacks and pysched_handler_drain: the core alone"},
      {"queued_b256_l", "  same, C ABI + C++20 atomic future", light, "-",
       "a heap context per item with std::atomic<int> + wait/notify instead of std::promise/std::future "
       "(whose set_value makes a futex syscall per item in glibc's pthread_once)"},
  };
  for (const auto& s : subjects) {
    Row r = summarized({.id = s.id,
                        .workload = s.workload,
                        .unit = "ns/item",
                        .ours_samples = s.samples,
                        .baseline_name = "inline floor (GIL held)",
                        .baseline_samples = floor,
                        .ratio_label = "x floor",
                        .target = s.target,
                        .note = s.note},
                       Ratio::kOursOverBaseline);
    if (r.target != "-") r.pass = r.ratio <= 3.0;
    rows.push_back(r);
  }
}

void rows_producers4(const Config& cfg, PyManager& mgr, std::vector<Row>& rows) {
  Handler h = load(mgr, "identity", 32);
  const std::size_t per = cfg.producer_items;
  producers_ns(h, 4, per / 4);  // warm-up
  producers_ns(h, 1, per);
  std::vector<double> four, one, plain;
  for (int i = 0; i < cfg.reps; ++i) {
    one.push_back(producers_ns(h, 1, 4 * per));
    four.push_back(producers_ns(h, 4, per));
    plain.push_back(plain_pybind11_ns(4, cfg.plain_items / 4));
  }
  Row r = summarized({.id = "producers4",
                      .workload = "4 producers x " + std::to_string(per / 1000) + "k items, batch 32",
                      .unit = "ns/item",
                      .ours_samples = four,
                      .baseline_name = "1 producer, same items",
                      .baseline_samples = one,
                      .ratio_label = "x 1 prod.",
                      .target = "<= 1.5x 1 prod.",
                      .note = "mean batch " + fmt(h.stats().execute_batch_size_ema, "") +
                              " (EMA after the last repetition)"},
                     Ratio::kOursOverBaseline);
  r.pass = r.ratio <= 1.5;
  rows.push_back(r);
  rows.push_back(vs_plain_pybind11(r, "producers4_pb", "  vs plain pybind11, 4 threads",
                                   "gil_scoped_acquire+call per item", plain,
                                   "4 C++ threads each take the GIL per item and call identity([x]) (" +
                                       std::to_string(cfg.plain_items) + " items/rep)"));
}

void rows_queued_b1(const Config& cfg, PyManager& mgr, std::vector<Row>& rows) {
  Handler h = load(mgr, "identity", 1);
  const std::size_t n = cfg.batch1_items;
  queued_identity_ns(h, n / 4);
  queued_identity_future_ns(h, n / 4);
  plain_pybind11_ns(1, cfg.plain_items / 4);
  std::vector<double> plain, std_future, future;
  for (int i = 0; i < cfg.reps; ++i) {
    plain.push_back(plain_pybind11_ns(1, cfg.plain_items));
    std_future.push_back(queued_identity_ns(h, n));
    future.push_back(queued_identity_future_ns(h, n));
  }
  const char* plain_name = "plain pybind11, 1 thread, per item";
  Row r = summarized({.id = "queued_b1",
                      .workload = "queued identity, batch 1",
                      .unit = "ns/item",
                      .ours_samples = std_future,
                      .baseline_name = plain_name,
                      .baseline_samples = plain,
                      .ratio_label = "x faster",
                      .target = "<= 2000 ns",
                      .note = "mean batch " + fmt(h.stats().execute_batch_size_ema, "") +
                              "; baseline: one C++ thread, gil_scoped_acquire + identity([x]) per item, "
                              "synchronously"},
                     Ratio::kBaselineOverOurs);
  r.pass = r.ours <= 2000.0;
  rows.push_back(r);
  rows.push_back(summarized({.id = "queued_b1_f",
                             .workload = "  same via queue_invoke_future (pyscheduler::ext::Future)",
                             .unit = "ns/item",
                             .ours_samples = future,
                             .baseline_name = plain_name,
                             .baseline_samples = plain,
                             .ratio_label = "x faster",
                             .target = "-",
                             .note = "the same items, one pyscheduler::ext::Future per item instead of std::future"},
                            Ratio::kBaselineOverOurs));
}

// ---- --profile ------------------------------------------------------------------------

std::optional<int> profile_queued(const Config& cfg, PyManager& mgr) {
  using Path = double (*)(Handler&, std::size_t);
  const struct {
    const char* id;
    std::size_t batch;
    Path once;
  } paths[] = {
      {"queued_b256", 256, [](Handler& h, std::size_t n) { return queued_identity_ns(h, n); }},
      {"queued_b256_f", 256, [](Handler& h, std::size_t n) { return queued_identity_future_ns(h, n); }},
      {"queued_b256_c", 256, queued_identity_cabi_ns},
      {"queued_b256_l", 256, queued_identity_light_ns},
      {"queued_b1", 1, [](Handler& h, std::size_t n) { return queued_identity_ns(h, n); }},
      {"queued_b1_f", 1, [](Handler& h, std::size_t n) { return queued_identity_future_ns(h, n); }},
  };
  for (const auto& p : paths) {
    if (cfg.profile != p.id) continue;
    Handler h = load(mgr, "identity", p.batch);
    const std::size_t n = p.batch == 1 ? cfg.batch1_items : cfg.queued_items;
    return run_profile(cfg, "ns/item", [&] { return p.once(h, n); });
  }
  return std::nullopt;
}

}  // namespace pysched_bench
