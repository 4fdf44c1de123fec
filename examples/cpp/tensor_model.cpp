// A small numpy model served through a tensor handler: several threads queue feature
// vectors (16 float32 each); the handler gathers them into ONE (B, 16) batch tensor per
// Python call, and copies each item's (4,) scores row straight into the caller's memory.
// Every score is checked against the same model computed in C++.
//
// Python side: examples/python/tensor_mlp.py (predict: relu(x @ W1 + b1) @ W2 + b2).
#include <pyscheduler/pyscheduler.hpp>

#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <exception>
#include <future>
#include <iostream>
#include <thread>
#include <vector>

#ifndef PYSCHEDULER_EXAMPLES_PYTHON_DIR
#error "PYSCHEDULER_EXAMPLES_PYTHON_DIR must name the directory of the example Python modules"
#endif

namespace {

constexpr int kIn = 16, kHidden = 32, kOut = 4;
constexpr int kThreads = 4;
constexpr int kItemsPerThread = 2000;

using Features = std::array<float, kIn>;
using Scores = std::array<float, kOut>;

Features features_of(int n) {
  Features x{};
  for (int i = 0; i < kIn; ++i) x[i] = static_cast<float>((n * 31 + i * 17) % 23) / 23.0f - 0.5f;
  return x;
}

// The model of tensor_mlp.py, weights from the same formulas.
Scores reference(const Features& x) {
  std::array<float, kHidden> hidden{};
  for (int j = 0; j < kHidden; ++j) {
    float h = static_cast<float>(j % 5 - 2) / 10.0f;
    for (int i = 0; i < kIn; ++i) h += x[i] * static_cast<float>((i * 7 + j * 3) % 11 - 5) / 10.0f;
    hidden[j] = h > 0 ? h : 0;
  }
  Scores y{};
  for (int o = 0; o < kOut; ++o) {
    float s = static_cast<float>(o) / 10.0f;
    for (int j = 0; j < kHidden; ++j) s += hidden[j] * static_cast<float>((j * 5 + o * 2) % 7 - 3) / 10.0f;
    y[o] = s;
  }
  return y;
}

bool close(const Scores& a, const Scores& b) {
  for (int o = 0; o < kOut; ++o) {
    if (std::abs(a[o] - b[o]) > 1e-4f * (1 + std::abs(b[o]))) return false;
  }
  return true;
}

}  // namespace

int main() {
  try {
    pyscheduler::PyManager manager;
    manager.add_path(PYSCHEDULER_EXAMPLES_PYTHON_DIR);

    // One float32 input of 16 features per item, one float32 output of 4 scores.
    const pyscheduler::ext::TensorSignature signature{{pyscheduler::ext::tensor_of<float>({kIn})},
                                                 {pyscheduler::ext::tensor_of<float>({kOut})}};
    pyscheduler::ext::HandlerOptions options;
    options.batch_size = 256;
    pyscheduler::ext::TensorHandler model = manager.loadTensorFunction("tensor_mlp", "predict", signature, options);

    std::atomic<int> wrong{0};
    const auto start = std::chrono::steady_clock::now();
    std::vector<std::thread> producers;
    for (int t = 0; t < kThreads; ++t) {
      producers.emplace_back([&, t] {
        std::vector<Features> xs(kItemsPerThread);
        std::vector<Scores> scores(kItemsPerThread);
        std::vector<std::future<void>> done;
        done.reserve(kItemsPerThread);
        for (int i = 0; i < kItemsPerThread; ++i) {
          xs[i] = features_of(t * kItemsPerThread + i);
          // The features are copied before queue returns; the scores land in scores[i]
          // before the future resolves.
          done.push_back(model.queue({xs[i].data()}, {scores[i].data()}));
        }
        for (int i = 0; i < kItemsPerThread; ++i) {
          done[i].get();
          if (!close(scores[i], reference(xs[i]))) ++wrong;
        }
      });
    }
    for (auto& p : producers) p.join();
    const auto elapsed = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start);

    // The same model, one item, its scores owned by the result.
    const Features x = features_of(7);
    const std::vector<float> owned = model.queue_owned<float>({x.data()}).get();
    const Scores want = reference(x);
    std::cout << "item 7: scores";
    for (float s : owned) std::cout << ' ' << s;
    std::cout << " (C++ reference";
    for (float s : want) std::cout << ' ' << s;
    std::cout << ")\n";
    if (!close(Scores{owned[0], owned[1], owned[2], owned[3]}, want)) ++wrong;

    const auto stats = model.stats();
    const int total = kThreads * kItemsPerThread + 1;
    std::cout << kThreads << " threads queued " << total << " items in " << elapsed.count() << " ms: "
              << stats.batches << " Python calls, " << stats.execute_batch_size_ema
              << " items per call on average (moving average); " << wrong.load()
              << " items differ from the C++ reference\n";
    return wrong.load() == 0 && stats.completed == static_cast<std::uint64_t>(total) ? EXIT_SUCCESS : EXIT_FAILURE;
  } catch (const std::exception& e) {
    std::cerr << "tensor_model: " << e.what() << '\n';
    return EXIT_FAILURE;
  }
}
