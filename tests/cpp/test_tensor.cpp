// Tensor handlers through the C++ wrapper (PyManager::loadTensorFunction, TensorHandler):
// dtypes and item shapes, several inputs and outputs, batch 1 and partial batches, wrong
// results and Python errors failing every item of their batch, kept inputs, every queue
// form (std::future, Future, done callback, owned rows, fill in place, cancellable),
// deadlines, bounded queues, and many producers with every item resolved exactly once.
//
// Python side: tests/python/tensor_testmod.py (numpy).
#include "test_support.hpp"

#include <pyscheduler/pyscheduler.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <future>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace std::chrono_literals;
using pyscheduler::ext::DType;
using pyscheduler::ext::HandlerOptions;
using pyscheduler::ext::TensorHandler;
using pyscheduler::ext::TensorItemOptions;
using pyscheduler::ext::TensorSignature;
using pyscheduler::ext::TensorSpec;
using pyscheduler::ext::tensor_of;

class Tensor : public pysched_test::WithManager {
 protected:
  TensorHandler load(const std::string& function, const TensorSignature& signature, std::size_t batch = 8,
                     HandlerOptions options = {}) {
    options.batch_size = batch;
    return manager.loadTensorFunction("tensor_testmod", function, signature, options);
  }

  /// Items of element type T and per-item `shape` through tensor_testmod.twice, 4 per
  /// batch: each comes back doubled, in its own destination.
  template <typename T>
  void round_trip_twice(std::vector<std::int64_t> shape, std::vector<T> values) {
    TensorSignature sig{{tensor_of<T>(shape)}, {tensor_of<T>(shape)}};
    TensorHandler h = load("twice", sig, 4);
    const std::size_t n = sig.inputs[0].item_elements();
    ASSERT_EQ(values.size() % n, 0u);
    const std::size_t items = values.size() / n;
    std::vector<std::vector<T>> outs(items, std::vector<T>(n));
    std::vector<std::future<void>> futures;
    for (std::size_t i = 0; i < items; ++i) {
      futures.push_back(h.queue({values.data() + i * n}, {outs[i].data()}));
    }
    for (std::size_t i = 0; i < items; ++i) {
      futures[i].get();
      for (std::size_t e = 0; e < n; ++e) {
        EXPECT_EQ(outs[i][e], static_cast<T>(values[i * n + e] * 2)) << "item " << i << " element " << e;
      }
    }
  }
};

// ---- the model of tensor_testmod.linear: x @ W, W[i][j] = ((i*16 + j) % 7 - 3) / 8 ----

TensorSignature linear_signature() { return {{tensor_of<float>({64})}, {tensor_of<float>({16})}}; }

std::vector<float> linear_input(int n) {
  std::vector<float> x(64);
  for (int i = 0; i < 64; ++i) {
    x[i] = static_cast<float>((n * 7 + i) % 13) - 6.0f;
  }
  return x;
}

std::vector<float> linear_reference(const std::vector<float>& x) {
  std::vector<float> y(16, 0.0f);
  for (int j = 0; j < 16; ++j) {
    for (int i = 0; i < 64; ++i) {
      y[j] += x[i] * (static_cast<float>((i * 16 + j) % 7) - 3.0f) / 8.0f;
    }
  }
  return y;
}

bool near_all(const std::vector<float>& got, const std::vector<float>& want) {
  if (got.size() != want.size()) return false;
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (std::abs(got[i] - want[i]) > 1e-3f) return false;
  }
  return true;
}

void expect_near_all(const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (std::size_t i = 0; i < got.size(); ++i) {
    ASSERT_NEAR(got[i], want[i], 1e-3) << what << " [" << i << "]";
  }
}

/// Runs `f` and returns the message of the exception of type E it throws ("" if none).
template <typename E, typename F>
std::string message_of(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  }
  return "";
}

// ---- dtypes and item shapes ------------------------------------------------------------

TEST_F(Tensor, EveryDtypeRoundTripsWithItsOwnShape) {
  // Scalar items, vectors and 3-d items, 7 items through batches of 4 (a partial one).
  round_trip_twice<float>({}, {0.5f, -1.25f, 3.0f, 4.0f, 5.5f, 6.0f, 7.0f});
  round_trip_twice<double>({3}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21});
  std::vector<std::int32_t> i32(2 * 3 * 4 * 5);
  for (std::size_t i = 0; i < i32.size(); ++i) i32[i] = static_cast<std::int32_t>(i) - 50;
  round_trip_twice<std::int32_t>({2, 3, 4}, i32);
  round_trip_twice<std::int64_t>({2}, {std::int64_t{1} << 40, -3, 7, -(std::int64_t{1} << 50), 0, 9});
  // uint8 wraps in numpy as in C++ (200 * 2 = 144).
  std::vector<std::uint8_t> u8{200, 3, 0, 255, 17, 100, 128, 1};
  TensorSignature sig{{tensor_of<std::uint8_t>({4})}, {tensor_of<std::uint8_t>({4})}};
  TensorHandler h = load("twice", sig);
  std::array<std::uint8_t, 4> a{}, b{};
  auto fa = h.queue({u8.data()}, {a.data()});
  auto fb = h.queue({u8.data() + 4}, {b.data()});
  fa.get();
  fb.get();
  EXPECT_EQ(a, (std::array<std::uint8_t, 4>{144, 6, 0, 254}));
  EXPECT_EQ(b, (std::array<std::uint8_t, 4>{34, 200, 0, 2}));
}

TEST_F(Tensor, Float16TravelsAsRawSixteenBitValues) {
  // 1.5 and -2.0 in IEEE half precision; twice: 3.0 and -4.0.
  const std::vector<std::uint16_t> x{0x3E00, 0xC000};
  TensorSignature sig{{TensorSpec{DType::Float16, {2}}}, {TensorSpec{DType::Float16, {2}}}};
  TensorHandler h = load("twice_f16", sig);
  std::vector<std::uint16_t> y(2);
  h.queue({x.data()}, {y.data()}).get();
  EXPECT_EQ(y, (std::vector<std::uint16_t>{0x4200, 0xC400}));
  // queue_owned takes std::uint16_t for a 16-bit float output.
  EXPECT_EQ(h.queue_owned<std::uint16_t>({x.data()}).get(), y);
}

TEST_F(Tensor, ItemShapesReachPythonWithTheBatchDimensionLeading) {
  // item_sums reshapes (B, *item) to (B, -1): right sums prove the layout is C order.
  TensorSignature sig{{tensor_of<std::int32_t>({2, 3, 4})}, {tensor_of<double>()}};
  TensorHandler h = load("item_sums", sig, 3);
  std::vector<std::vector<std::int32_t>> xs(5, std::vector<std::int32_t>(24));
  std::vector<double> sums(5);
  std::vector<std::future<void>> futures;
  for (int n = 0; n < 5; ++n) {
    for (int i = 0; i < 24; ++i) xs[n][i] = n * 100 + i;
    futures.push_back(h.queue({xs[n].data()}, {&sums[n]}));
  }
  for (int n = 0; n < 5; ++n) {
    futures[n].get();
    EXPECT_EQ(sums[n], 24.0 * n * 100 + 23 * 24 / 2) << n;
  }
}

TEST_F(Tensor, SeveralInputsAndOutputsOfDifferentDtypes) {
  TensorSignature sig{{tensor_of<float>({2, 3}), tensor_of<std::int64_t>(), tensor_of<std::uint8_t>({4})},
                      {tensor_of<float>({2, 3}), tensor_of<double>(), tensor_of<std::int32_t>({4})}};
  TensorHandler h = load("mixed", sig, 4);
  struct Item {
    std::array<float, 6> a{};
    std::int64_t b = 0;
    std::array<std::uint8_t, 4> c{};
    std::array<float, 6> out_a{};
    double out_sum = 0;
    std::array<std::int32_t, 4> out_c{};
    std::future<void> done;
  };
  std::vector<Item> items(10);
  for (int n = 0; n < 10; ++n) {
    Item& it = items[n];
    for (int i = 0; i < 6; ++i) it.a[i] = static_cast<float>(n + i) / 4;
    it.b = n - 3;
    for (int i = 0; i < 4; ++i) it.c[i] = static_cast<std::uint8_t>(n * 10 + i);
    it.done = h.queue({it.a.data(), &it.b, it.c.data()}, {it.out_a.data(), &it.out_sum, it.out_c.data()});
  }
  for (int n = 0; n < 10; ++n) {
    Item& it = items[n];
    it.done.get();
    for (int i = 0; i < 6; ++i) EXPECT_FLOAT_EQ(it.out_a[i], it.a[i] * static_cast<float>(it.b)) << n;
    EXPECT_EQ(it.out_sum, 4.0 * n * 10 + 6) << n;
    for (int i = 0; i < 4; ++i) EXPECT_EQ(it.out_c[i], it.c[i] + it.b) << n;
  }
  EXPECT_EQ(h.stats().completed, 10u);
}

TEST_F(Tensor, ASignatureWithoutOutputsTakesNoDestinations) {
  TensorSignature sig{{tensor_of<float>({2})}, {}};
  TensorHandler h = load("no_outputs", sig, 4);
  const std::array<float, 2> x{1, 2};
  std::vector<std::future<void>> futures;
  for (int i = 0; i < 6; ++i) futures.push_back(h.queue({x.data()}, {}));
  for (auto& f : futures) f.get();
  EXPECT_EQ(h.stats().completed, 6u);
  // A single output may come back as a 1-tuple.
  TensorHandler one = load("scalar_to_tuple_of_one", {{tensor_of<float>()}, {tensor_of<float>()}});
  const float v = 1.5f;
  float out = 0;
  one.queue({&v}, {&out}).get();
  EXPECT_EQ(out, 3.0f);
}

// ---- batching ------------------------------------------------------------------------------

TEST_F(Tensor, BatchOneAndPartialBatchesSeeTheirRealSize) {
  TensorSignature sig{{tensor_of<std::uint8_t>({2})}, {tensor_of<std::int64_t>()}};
  const std::array<std::uint8_t, 2> x{1, 2};
  {
    TensorHandler h = load("batch_size", sig, 1);
    std::vector<std::future<std::vector<std::int64_t>>> futures;
    for (int i = 0; i < 5; ++i) futures.push_back(h.queue_owned<std::int64_t>({x.data()}));
    for (auto& f : futures) EXPECT_EQ(f.get(), std::vector<std::int64_t>{1});
  }
  // Batches of 8 waiting up to 2 s for a full one: 13 items are one batch of 8, then,
  // after the delay, one of 5 (no padding).
  HandlerOptions waiting;
  waiting.max_batch_delay = 2s;
  TensorHandler h = load("batch_size", sig, 8, waiting);
  std::vector<std::int64_t> sizes(13, -1);
  std::vector<std::future<void>> futures;
  for (int i = 0; i < 13; ++i) futures.push_back(h.queue({x.data()}, {&sizes[i]}));
  for (auto& f : futures) f.get();
  EXPECT_EQ(sizes, (std::vector<std::int64_t>{8, 8, 8, 8, 8, 8, 8, 8, 5, 5, 5, 5, 5}));
  EXPECT_EQ(h.stats().batches, 2u);
}

// ---- wrong results and Python errors fail every item of their batch ------------------

TEST_F(Tensor, WrongResultsFailEveryItemOfTheBatchNamingExpectedAndReceived) {
  struct Case {
    const char* function;
    std::vector<std::string> needles;
  };
  const Case cases[] = {
      {"wrong_rows", {"has shape (5, 16)", "expected shape (4, 16) float32"}},
      {"wrong_dtype", {"has dtype float64", "expected shape (4, 16) float32"}},
      {"wrong_item_shape", {"has shape (4, 15)", "expected shape (4, 16) float32"}},
      {"not_a_tensor", {"is a list, not an array or tensor", "expected shape (4, 16)"}},
      {"raises", {"ValueError: bad batch of 4"}},
  };
  HandlerOptions full_batches;
  full_batches.max_batch_delay = 500ms;  // the 4 items go in ONE batch
  for (const Case& c : cases) {
    TensorHandler h = load(c.function, linear_signature(), 4, full_batches);
    std::vector<std::vector<float>> outs(4, std::vector<float>(16, -7.0f));
    std::vector<std::future<void>> futures;
    const std::vector<float> x = linear_input(1);
    for (int i = 0; i < 4; ++i) futures.push_back(h.queue({x.data()}, {outs[i].data()}));
    for (int i = 0; i < 4; ++i) {
      try {
        futures[i].get();
        ADD_FAILURE() << c.function << ": item " << i << " succeeded";
      } catch (const pyscheduler::ext::PythonError& e) {
        EXPECT_EQ(e.kind(), pyscheduler::ext::ErrorKind::PythonException) << c.function;
        for (const std::string& needle : c.needles) {
          EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << c.function << ": " << e.what();
        }
      }
      // A failed item's destination is left alone.
      EXPECT_EQ(outs[i], std::vector<float>(16, -7.0f)) << c.function;
    }
    // A failed item is counted after its completion ran (its future may resolve first).
    h.drain();
    const auto s = h.stats();
    EXPECT_EQ(s.failed, 4u) << c.function;
    EXPECT_EQ(s.batches, 1u) << c.function;
    // The handler goes on working after a failed batch (the error repeats, same shape).
    EXPECT_THROW(h.queue({x.data()}, {outs[0].data()}).get(), pyscheduler::ext::PythonError) << c.function;
  }
}

TEST_F(Tensor, ATupleOfTheWrongLengthFailsTheBatch) {
  TensorSignature sig{{tensor_of<float>({2, 3}), tensor_of<std::int64_t>(), tensor_of<std::uint8_t>({4})},
                      {tensor_of<float>({2, 3}), tensor_of<double>(), tensor_of<std::int32_t>({4})}};
  TensorHandler h = load("too_few_outputs", sig);
  std::array<float, 6> a{}, oa{};
  std::int64_t b = 0;
  std::array<std::uint8_t, 4> c{};
  double os = 0;
  std::array<std::int32_t, 4> oc{};
  const std::string m = message_of<pyscheduler::ext::PythonError>(
      [&] { h.queue({a.data(), &b, c.data()}, {oa.data(), &os, oc.data()}).get(); });
  EXPECT_NE(m.find("must return a tuple of 3 arrays or tensors (one per output), got 2 of them"), std::string::npos)
      << m;
}

TEST_F(Tensor, StridedResultsAreMadeContiguousAndDlpackInputsImport) {
  // non_contiguous returns every 4th column of x, a strided view: read correctly.
  TensorHandler h = load("non_contiguous", linear_signature(), 4);
  std::vector<float> x(64);
  for (int i = 0; i < 64; ++i) x[i] = static_cast<float>(i);
  std::vector<float> y(16);
  h.queue({x.data()}, {y.data()}).get();
  for (int j = 0; j < 16; ++j) EXPECT_EQ(y[j], static_cast<float>(4 * j));
  // via_dlpack imports the batch with np.from_dlpack; echo returns the input view itself.
  TensorSignature same{{tensor_of<float>({64})}, {tensor_of<float>({64})}};
  for (const char* function : {"echo", "via_dlpack"}) {
    TensorHandler g = load(function, same, 4);
    const float factor = std::string(function) == "echo" ? 1.0f : 2.0f;
    const std::vector<float> got = g.queue_owned<float>({x.data()}).get();
    for (int i = 0; i < 64; ++i) ASSERT_EQ(got[i], x[i] * factor) << function;
  }
}

TEST_F(Tensor, AnInputPythonKeepsIsNeverOverwritten) {
  // keep_input keeps a view of every batch and raises if an earlier one changed.
  TensorSignature sig{{tensor_of<std::int64_t>({4})}, {tensor_of<std::int64_t>()}};
  TensorHandler h = load("keep_input", sig, 4);
  for (std::int64_t round = 0; round < 20; ++round) {
    std::vector<std::array<std::int64_t, 4>> rows(4);
    std::vector<std::int64_t> firsts(4, -1);
    std::vector<std::future<void>> futures;
    for (std::int64_t i = 0; i < 4; ++i) {
      for (std::int64_t j = 0; j < 4; ++j) rows[i][j] = round * 100 + i * 10 + j;
      futures.push_back(h.queue({rows[i].data()}, {&firsts[i]}));
    }
    for (std::int64_t i = 0; i < 4; ++i) {
      futures[i].get();
      EXPECT_EQ(firsts[i], round * 100 + i * 10);
    }
  }
  EXPECT_EQ(h.stats().failed, 0u);
}

// ---- the queue forms ---------------------------------------------------------------------

TEST_F(Tensor, QueueFutureAndOwnedRowsAndBorrowedInputs) {
  TensorHandler h = load("linear", linear_signature(), 16);
  std::vector<std::vector<float>> xs;
  for (int n = 0; n < 40; ++n) xs.push_back(linear_input(n));
  std::vector<std::vector<float>> outs(40, std::vector<float>(16));
  std::vector<pyscheduler::ext::Future<void>> light;
  std::vector<std::future<std::vector<float>>> owned;
  std::vector<std::future<void>> borrowed;
  std::vector<std::vector<float>> borrowed_outs(40, std::vector<float>(16));
  for (int n = 0; n < 40; ++n) {
    light.push_back(h.queue_future({xs[n].data()}, {outs[n].data()}));
    owned.push_back(h.queue_owned<float>({xs[n].data()}));
    // Borrowed: xs[n] stays valid and unchanged until the future resolves.
    borrowed.push_back(h.queue({xs[n].data()}, {borrowed_outs[n].data()}, TensorItemOptions{.borrow_inputs = true}));
  }
  for (int n = 0; n < 40; ++n) {
    const auto want = linear_reference(xs[n]);
    light[n].get();
    EXPECT_FALSE(light[n].valid());
    expect_near_all(outs[n], want, "queue_future");
    expect_near_all(owned[n].get(), want, "queue_owned");
    borrowed[n].get();
    expect_near_all(borrowed_outs[n], want, "borrow_inputs");
  }
  EXPECT_EQ(h.stats().completed, 120u);
}

TEST_F(Tensor, CopiedInputsMayChangeRightAfterQueueing) {
  HandlerOptions waiting;
  waiting.max_batch_delay = 200ms;  // the item waits in the queue while x changes
  TensorHandler h = load("linear", linear_signature(), 64, waiting);
  std::vector<float> x = linear_input(3);
  const auto want = linear_reference(x);
  std::vector<float> y(16);
  auto f = h.queue({x.data()}, {y.data()});
  std::fill(x.begin(), x.end(), 1e6f);
  f.get();
  expect_near_all(y, want, "copied input");
}

TEST_F(Tensor, DoneCallbackHearsEachOutcomeOnceWithoutTheGil) {
  TensorHandler h = load("linear", linear_signature(), 32);
  constexpr int kItems = 300;
  std::vector<std::vector<float>> xs, outs(kItems, std::vector<float>(16));
  for (int n = 0; n < kItems; ++n) xs.push_back(linear_input(n));
  std::vector<std::atomic<int>> calls(kItems);
  std::atomic<int> with_gil{0}, errors{0}, finished{0};
  for (int n = 0; n < kItems; ++n) {
    h.queue({xs[n].data()}, {outs[n].data()}, [&, n](std::exception_ptr e) {
      if (pyscheduler::pysched_detail::gil_held()) ++with_gil;
      if (e) ++errors;
      calls[n].fetch_add(1);
      finished.fetch_add(1, std::memory_order_release);
    });
  }
  h.drain();
  EXPECT_EQ(finished.load(std::memory_order_acquire), kItems);
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(with_gil.load(), 0);
  for (int n = 0; n < kItems; ++n) {
    EXPECT_EQ(calls[n].load(), 1) << n;
    expect_near_all(outs[n], linear_reference(xs[n]), "done");
  }
  // A failure reaches done with the item's exception.
  TensorHandler bad = load("raises", linear_signature(), 4);
  std::promise<std::exception_ptr> heard;
  std::vector<float> y(16);
  bad.queue({xs[0].data()}, {y.data()}, [&](std::exception_ptr e) { heard.set_value(e); });
  const std::exception_ptr e = heard.get_future().get();
  bad.drain();  // `done` has returned (set_value may still be running when get() returns)
  ASSERT_TRUE(e);
  EXPECT_THROW(std::rethrow_exception(e), pyscheduler::ext::PythonError);
}

TEST_F(Tensor, FillWritesRowsInPlaceOnPoolThreadsWithoutTheGil) {
  TensorSignature sig{{tensor_of<double>({3}), tensor_of<double>({3})}, {tensor_of<double>({3}), tensor_of<double>()}};
  HandlerOptions options;
  options.prefetch_depth = 2;
  TensorHandler h = load("add_and_sum", sig, 8, options);
  constexpr int kItems = 50;
  std::vector<std::array<double, 3>> sums(kItems);
  std::vector<double> totals(kItems);
  std::atomic<int> fills_with_gil{0};
  std::vector<std::future<void>> futures;
  for (int n = 0; n < kItems; ++n) {
    futures.push_back(h.queue_fill(
        [n, &fills_with_gil](std::span<void* const> slots) {
          if (pyscheduler::pysched_detail::gil_held()) ++fills_with_gil;
          EXPECT_EQ(slots.size(), 2u);
          for (std::size_t k = 0; k < slots.size(); ++k) {
            auto* row = static_cast<double*>(slots[k]);
            for (int i = 0; i < 3; ++i) row[i] = n * 10 + static_cast<int>(k) * 100 + i;
          }
        },
        {sums[n].data(), &totals[n]}));
  }
  for (int n = 0; n < kItems; ++n) {
    futures[n].get();
    for (int i = 0; i < 3; ++i) EXPECT_EQ(sums[n][i], 2.0 * (n * 10 + i) + 100) << n;
    EXPECT_EQ(totals[n], 3.0 * n * 10 + 3) << n;
  }
  EXPECT_EQ(fills_with_gil.load(), 0);
  // The other fill forms: a light Future, and a done callback.
  std::array<double, 3> s{};
  double t = 0;
  auto fill_ones = [](std::span<void* const> slots) {
    for (void* slot : slots) std::fill_n(static_cast<double*>(slot), 3, 1.0);
  };
  h.queue_fill_future(fill_ones, {s.data(), &t}).get();
  EXPECT_EQ(s, (std::array<double, 3>{2, 2, 2}));
  EXPECT_EQ(t, 3.0);
  std::promise<std::exception_ptr> heard;
  t = 0;
  h.queue_fill(fill_ones, {s.data(), &t}, [&](std::exception_ptr e) { heard.set_value(e); });
  EXPECT_FALSE(heard.get_future().get());
  h.drain();  // `done` has returned before `heard` goes
  EXPECT_EQ(t, 3.0);
}

TEST_F(Tensor, AFillThatThrowsFailsOnlyItsItemWithItsOwnException) {
  TensorSignature sig{{tensor_of<double>({3}), tensor_of<double>({3})}, {tensor_of<double>({3}), tensor_of<double>()}};
  TensorHandler h = load("add_and_sum", sig, 8);
  std::vector<std::array<double, 3>> sums(6);
  std::vector<double> totals(6);
  std::vector<std::future<void>> futures;
  for (int n = 0; n < 6; ++n) {
    futures.push_back(h.queue_fill(
        [n](std::span<void* const> slots) {
          if (n == 2) throw std::out_of_range("no data for item 2");
          for (void* slot : slots) std::fill_n(static_cast<double*>(slot), 3, static_cast<double>(n));
        },
        {sums[n].data(), &totals[n]}));
  }
  for (int n = 0; n < 6; ++n) {
    if (n == 2) {
      EXPECT_EQ(message_of<std::out_of_range>([&] { futures[n].get(); }), "no data for item 2");
    } else {
      futures[n].get();
      EXPECT_EQ(totals[n], 3.0 * n) << n;
    }
  }
  h.drain();
  const auto s = h.stats();
  EXPECT_EQ(s.completed, 5u);
  EXPECT_EQ(s.failed, 1u);
}

// ---- deadlines, cancel, bounded queues ----------------------------------------------------

TEST_F(Tensor, DeadlinesAndCancelResolveItemsExactlyOnce) {
  TensorSignature sig{{tensor_of<std::uint8_t>({2})}, {tensor_of<std::int64_t>()}};
  HandlerOptions waiting;
  waiting.max_batch_delay = 300ms;
  TensorHandler h = load("batch_size", sig, 64, waiting);
  const std::array<std::uint8_t, 2> x{1, 2};
  std::int64_t a = -1, b = -1, c = -1, d = -1;
  auto expired = h.queue({x.data()}, {&a}, TensorItemOptions{.timeout = 1us});
  auto cancelled = h.queue_cancellable({x.data()}, {&b});
  EXPECT_TRUE(cancelled.cancel());
  EXPECT_FALSE(cancelled.cancel());  // once
  auto kept = h.queue({x.data()}, {&c}, TensorItemOptions{.timeout = 10s});
  auto kept_cancellable = h.queue_cancellable({x.data()}, {&d});
  EXPECT_THROW(expired.get(), pyscheduler::ext::TimedOutError);
  EXPECT_THROW(cancelled.get(), pyscheduler::ext::CancelledError);
  kept.get();
  kept_cancellable.get();
  EXPECT_FALSE(kept_cancellable.cancel());  // it ran
  EXPECT_EQ(a, -1);
  EXPECT_EQ(b, -1);
  EXPECT_EQ(c, 2);  // the batch held the two live items
  EXPECT_EQ(d, 2);
  h.drain();
  const auto s = h.stats();
  EXPECT_EQ(s.completed, 2u);
  EXPECT_EQ(s.cancelled, 1u);
  EXPECT_EQ(s.expired, 1u);
}

TEST_F(Tensor, ABoundedQueueRefusesItemsThroughEveryForm) {
  HandlerOptions bounded;
  bounded.max_queue = 1;
  bounded.full_policy = pyscheduler::ext::FullPolicy::Reject;
  TensorSignature sig{{tensor_of<float>()}, {tensor_of<float>()}};
  TensorHandler h = load("slow_twice", sig, 1, bounded);
  const float x = 2.0f;
  std::vector<float> outs(40, 0.0f);
  std::vector<std::future<void>> futures;
  std::atomic<int> done_calls{0}, done_full{0};
  for (int i = 0; i < 20; ++i) futures.push_back(h.queue({&x}, {&outs[i]}));
  for (int i = 20; i < 40; ++i) {
    h.queue({&x}, {&outs[i]}, [&](std::exception_ptr e) {
      if (e) {
        try {
          std::rethrow_exception(e);
        } catch (const pyscheduler::ext::QueueFullError&) {
          ++done_full;
        } catch (...) {
        }
      }
      ++done_calls;
    });
  }
  int full = 0, ok = 0;
  for (int i = 0; i < 20; ++i) {
    try {
      futures[i].get();
      EXPECT_EQ(outs[i], 4.0f);
      ++ok;
    } catch (const pyscheduler::ext::QueueFullError&) {
      EXPECT_EQ(outs[i], 0.0f);
      ++full;
    }
  }
  h.drain();
  EXPECT_EQ(done_calls.load(), 20);
  EXPECT_GT(full, 0);
  EXPECT_GT(done_full.load(), 0);
  EXPECT_GT(ok, 0);
  EXPECT_EQ(h.stats().rejected, static_cast<std::uint64_t>(full + done_full.load()));
}

// ---- many producers ------------------------------------------------------------------------

TEST_F(Tensor, ManyProducersEveryItemResolvedOnceWithItsOwnRows) {
  HandlerOptions options;
  options.prefetch_depth = 2;
  TensorHandler h = load("linear", linear_signature(), 64, options);
  constexpr int kThreads = 4;
  constexpr int kItems = 400;  // per thread, per form
  std::atomic<int> wrong{0}, resolved{0};
  std::vector<std::thread> producers;
  for (int t = 0; t < kThreads; ++t) {
    producers.emplace_back([&, t] {
      std::vector<std::vector<float>> xs, outs(kItems, std::vector<float>(16)), cb_outs(kItems, std::vector<float>(16));
      for (int n = 0; n < kItems; ++n) xs.push_back(linear_input(t * kItems + n));
      std::vector<std::future<void>> futures;
      std::vector<std::future<std::vector<float>>> owned;
      auto calls = std::make_unique<std::atomic<int>[]>(kItems);
      std::atomic<int> cb_done{0};
      for (int n = 0; n < kItems; ++n) {
        // Three forms interleaved on one handler.
        futures.push_back(h.queue({xs[n].data()}, {outs[n].data()}));
        owned.push_back(h.queue_owned<float>({xs[n].data()}));
        h.queue({xs[n].data()}, {cb_outs[n].data()}, [&calls, &cb_done, n](std::exception_ptr e) {
          calls[n].fetch_add(e ? 100 : 1);
          cb_done.fetch_add(1, std::memory_order_release);
        });
      }
      for (int n = 0; n < kItems; ++n) {
        const auto want = linear_reference(xs[n]);
        futures[n].get();
        if (!near_all(outs[n], want)) ++wrong;
        if (!near_all(owned[n].get(), want)) ++wrong;
        resolved += 2;
      }
      // The callbacks may finish after the futures: wait for this thread's.
      while (cb_done.load(std::memory_order_acquire) < kItems) std::this_thread::yield();
      for (int n = 0; n < kItems; ++n) {
        if (calls[n].load() != 1) ++wrong;
        if (!near_all(cb_outs[n], linear_reference(xs[n]))) ++wrong;
        ++resolved;
      }
    });
  }
  for (auto& p : producers) p.join();
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_EQ(resolved.load(), kThreads * kItems * 3);
  h.drain();
  const auto s = h.stats();
  EXPECT_EQ(s.completed, static_cast<std::uint64_t>(kThreads * kItems * 3));
  EXPECT_EQ(s.total_enqueued, kThreads * kItems * 3);
  EXPECT_EQ(s.commit_queue_size + s.execute_queue_size, 0u);
}

// ---- arguments, loading, lifetime ----------------------------------------------------------

TEST_F(Tensor, BadArgumentsThrowBeforeAnythingIsQueued) {
  TensorHandler h = load("linear", linear_signature());
  std::vector<float> x(64), y(16);
  EXPECT_THROW(h.queue({}, {y.data()}), std::invalid_argument);
  EXPECT_THROW(h.queue({x.data(), x.data()}, {y.data()}), std::invalid_argument);
  EXPECT_THROW(h.queue({nullptr}, {y.data()}), std::invalid_argument);
  EXPECT_THROW(h.queue({x.data()}, {}), std::invalid_argument);
  EXPECT_THROW(h.queue({x.data()}, {nullptr}), std::invalid_argument);
  EXPECT_THROW(h.queue({x.data()}, {y.data()}, TensorItemOptions{.timeout = -1ms}), std::invalid_argument);
  bool called = false;
  EXPECT_THROW(h.queue({nullptr}, {y.data()}, [&](std::exception_ptr) { called = true; }), std::invalid_argument);
  EXPECT_FALSE(called);  // nothing was queued, so done is never called
  EXPECT_THROW(h.queue_owned<double>({x.data()}), std::invalid_argument);  // float32 output
  EXPECT_THROW(h.queue_fill([](std::span<void* const>) {}, {nullptr}), std::invalid_argument);
  const std::string m = message_of<std::invalid_argument>([&] { h.queue({x.data()}, {y.data(), y.data()}); });
  EXPECT_NE(m.find("2 output destinations given, the signature has 1 outputs"), std::string::npos) << m;
  TensorHandler two = load("add_and_sum", {{tensor_of<double>({3}), tensor_of<double>({3})},
                                          {tensor_of<double>({3}), tensor_of<double>()}});
  EXPECT_THROW(two.queue_owned<double>({x.data(), x.data()}), std::invalid_argument);  // two outputs
  EXPECT_EQ(h.stats().total_enqueued, 0);
  EXPECT_EQ(two.stats().total_enqueued, 0);
}

TEST_F(Tensor, BadSignaturesAndModulesAreRefusedAtLoad) {
  EXPECT_THROW(load("linear", {{}, {tensor_of<float>({16})}}), std::invalid_argument);  // no input
  EXPECT_THROW(load("linear", {{tensor_of<float>({0})}, {}}), std::invalid_argument);   // size 0
  EXPECT_THROW(load("linear", {{tensor_of<float>({-3})}, {}}), std::invalid_argument);  // negative
  EXPECT_THROW(load("linear", {{TensorSpec{static_cast<DType>(99), {2}}}, {}}), std::invalid_argument);
  EXPECT_THROW(load("linear", {{tensor_of<float>({64})}, {}, -2}), std::invalid_argument);  // device
  EXPECT_THROW(manager.loadTensorFunction("no_such_module_here", "f", linear_signature()), pyscheduler::ext::LoadError);
  EXPECT_THROW(load("no_such_function", linear_signature()), pyscheduler::ext::LoadError);
  HandlerOptions replicas;
  replicas.subinterpreters = 2;
  try {
    load("linear", linear_signature(), 4, replicas);
    ADD_FAILURE() << "tensor handlers in sub-interpreters were accepted";
  } catch (const pyscheduler::ext::Error& e) {
    EXPECT_EQ(e.kind(), pyscheduler::ext::ErrorKind::Unsupported);
  }
}

TEST_F(Tensor, NameSignatureMovesAndDrainingDestruction) {
  TensorHandler h = load("linear", linear_signature(), 16);
  EXPECT_EQ(h.name(), "tensor_testmod.linear");
  EXPECT_EQ(h.signature().inputs[0].item_bytes(), 64u * 4);
  HandlerOptions named;
  named.name = "scores";
  EXPECT_EQ(load("linear", linear_signature(), 4, named).name(), "scores");

  std::vector<std::vector<float>> xs, outs(100, std::vector<float>(16));
  for (int n = 0; n < 100; ++n) xs.push_back(linear_input(n));
  std::vector<std::future<void>> futures;
  for (int n = 0; n < 50; ++n) futures.push_back(h.queue({xs[n].data()}, {outs[n].data()}));
  TensorHandler moved = std::move(h);
  EXPECT_FALSE(h.valid());
  EXPECT_THROW(h.queue({xs[0].data()}, {outs[0].data()}), std::logic_error);
  EXPECT_THROW(h.stats(), std::logic_error);
  for (int n = 50; n < 100; ++n) futures.push_back(moved.queue({xs[n].data()}, {outs[n].data()}));
  moved = TensorHandler();  // drains, then frees
  for (int n = 0; n < 100; ++n) {
    ASSERT_TRUE(pysched_test::is_ready(futures[n])) << n;
    futures[n].get();
    expect_near_all(outs[n], linear_reference(xs[n]), "drained");
  }
}

}  // namespace
