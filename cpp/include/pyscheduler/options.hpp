// Options beyond the original API: how the process's interpreter and worker pool start
// (PyManager(const ManagerOptions&)) and how a handler batches and queues
// (loadPythonModule(module, entry, const HandlerOptions&)).
#ifndef PYSCHEDULER_OPTIONS_HPP
#define PYSCHEDULER_OPTIONS_HPP

#include <pyscheduler.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>

namespace pyscheduler {
namespace ext {

/// What a bounded queue does when it is full.
enum class FullPolicy : std::uint32_t {
  /// queue_invoke waits for room (up to HandlerOptions::block_timeout when non-zero);
  /// on timeout the item's future fails with QueueFullError.
  Block = PYSCHED_FULL_BLOCK,
  /// The item's future fails at once with QueueFullError.
  Reject = PYSCHED_FULL_REJECT,
};

/// Options of PyManager's constructor. Only the first manager of the process starts the
/// interpreter and the worker pool, so only its python_executable and worker_threads
/// apply; add_cwd_to_path applies to every manager.
struct ManagerOptions {
  /// Python executable whose environment (a virtualenv's site-packages) the interpreter
  /// sees. Empty: `$VIRTUAL_ENV/bin/python` when set, else the interpreter pyscheduler
  /// was built against.
  std::string python_executable;
  /// Threads of the worker pool shared by all handlers; 0: the number of CPUs (at least 4).
  std::uint32_t worker_threads = 0;
  /// Put the current working directory on sys.path.
  bool add_cwd_to_path = false;
};

/// Options of one handler. The defaults are the original's behaviour: batch 1,
/// prefetch 1, opportunistic batching, unbounded queue.
struct HandlerOptions {
  /// Most items per Python call (1..1000000).
  std::size_t batch_size = 1;
  /// Batches that may be committed/prepared ahead of execution (1..4096).
  std::size_t prefetch_depth = 1;
  /// Wait up to this long after the oldest queued item for a fuller batch; 0: take
  /// whatever is queued (opportunistic batching). At most 60 s.
  std::chrono::microseconds max_batch_delay{0};
  /// Most items waiting to be batched; 0: unbounded.
  std::size_t max_queue = 0;
  FullPolicy full_policy = FullPolicy::Block;
  /// For FullPolicy::Block: give up after this long; 0 waits indefinitely.
  std::chrono::microseconds block_timeout{0};
  /// Label for metrics; empty: "module.entry_point".
  std::string name;
  /// Batches that may execute at once (1..1024). Above 1, batches start in order but may
  /// finish out of order: for functions that release the GIL, or free-threaded CPython.
  std::size_t concurrency = 1;
  /// Own-GIL sub-interpreter replicas (CPython 3.12+) that run this handler, each on a
  /// thread of its own; 0: the main interpreter. Commit and callback then run with the
  /// replica's interpreter current: pybind11 code there needs
  /// pyscheduler::ext::enable_pybind11_in_replicas() (pyscheduler/subinterp.hpp), and queued
  /// arguments must not be Python objects.
  std::size_t subinterpreters = 0;
};

}  // namespace ext

namespace pysched_detail {

template <typename To, typename From>
To checked_narrow(From value, const char* what) {
  if (value > static_cast<std::uintmax_t>(std::numeric_limits<To>::max())) {
    throw std::invalid_argument(std::string("pyscheduler: ") + what + " is out of range");
  }
  return static_cast<To>(value);
}

inline std::uint64_t checked_micros(std::chrono::microseconds d, const char* what) {
  if (d.count() < 0) {
    throw std::invalid_argument(std::string("pyscheduler: ") + what + " must not be negative");
  }
  return static_cast<std::uint64_t>(d.count());
}

/// The C view of `o`; `name` points into `o`, which must outlive the returned struct.
inline pysched_handler_options to_c(const ext::HandlerOptions& o) {
  pysched_handler_options c = pysched_handler_options_default();
  c.batch_size = checked_narrow<std::uint32_t>(o.batch_size, "batch_size");
  c.prefetch_depth = checked_narrow<std::uint32_t>(o.prefetch_depth, "prefetch_depth");
  c.max_batch_delay_us = checked_micros(o.max_batch_delay, "max_batch_delay");
  c.max_queue = checked_narrow<std::uint64_t>(o.max_queue, "max_queue");
  c.full_policy = static_cast<std::uint32_t>(o.full_policy);
  c.block_timeout_us = checked_micros(o.block_timeout, "block_timeout");
  if (o.name.find('\0') != std::string::npos) {
    throw std::invalid_argument("pyscheduler: HandlerOptions::name contains a NUL byte");
  }
  c.name = o.name.empty() ? nullptr : o.name.c_str();
  c.concurrency = checked_narrow<std::uint32_t>(o.concurrency, "concurrency");
  c.subinterpreters = checked_narrow<std::uint32_t>(o.subinterpreters, "subinterpreters");
  return c;
}

}  // namespace pysched_detail
}  // namespace pyscheduler

#endif  // PYSCHEDULER_OPTIONS_HPP
