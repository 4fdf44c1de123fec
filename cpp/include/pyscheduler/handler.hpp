// PyManager::InvokeHandler: a bound Python function with its own queue. Synchronous
// invoke on the caller's thread; queue_invoke through the core's batch pipeline
// (commit -> one Python call per batch -> fan-out to callbacks), bridged to std::future
// (queue_invoke and its variants) or to pyscheduler::Future (queue_invoke_future).
#ifndef PYSCHEDULER_HANDLER_HPP
#define PYSCHEDULER_HANDLER_HPP

#include <pybind11/pybind11.h>

#include <pyscheduler.h>
#include <pyscheduler/detail/handle.hpp>
#include <pyscheduler/detail/queued_call.hpp>
#include <pyscheduler/detail/sync_call.hpp>
#include <pyscheduler/detail/tsan.hpp>
#include <pyscheduler/error.hpp>
#include <pyscheduler/future.hpp>
#include <pyscheduler/manager.hpp>
#include <pyscheduler/options.hpp>
#include <pyscheduler/stats.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <future>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

namespace pyscheduler {

/// Move-only. Destroying or move-assigning over a handler blocks until everything
/// queued on it has run and every future is resolved. A moved-from handler is empty:
/// its calls throw std::logic_error; work queued before the move completes normally.
/// Any number of threads may use one handler at once (except destroying/assigning it).
class PyManager::InvokeHandler {
 public:
  /// An empty handler; assign one from PyManager::loadPythonModule.
  InvokeHandler() noexcept = default;

  /// (1) Calls the function on this thread with `args` converted by pybind11 and
  /// returns the result cast to ReturnType. The GIL is held only for the conversions
  /// and the call. A Python exception throws PythonError.
  /// Works with or without the GIL held by the caller. Blocks for the call.
  template <typename ReturnType, typename... Args>
  ReturnType invoke(Args&&... args) {
    return call_sync(
        [](pybind11::object&& result) -> ReturnType {
          if constexpr (!std::is_void_v<ReturnType>) {
            return std::move(result).template cast<ReturnType>();
          }
        },
        std::forward<Args>(args)...);
  }

  /// (2) As (1), handing the result to `cb` while the GIL is still held; returns what
  /// `cb` returns. An exception thrown by `cb` propagates unchanged (a
  /// pybind11::error_already_set becomes a PythonError).
  template <typename Callback, typename... Args>
  auto invoke(Callback&& cb, Args&&... args) -> std::invoke_result_t<Callback, pybind11::object> {
    return call_sync(std::forward<Callback>(cb), std::forward<Args>(args)...);
  }

  /// (3) Stores `commit`, `cb` and `args` (moved or copied; move-only types work) and
  /// returns at once. Later, on a worker with the GIL held: `commit(args...)` builds the
  /// item's pybind11::object; the function is called ONCE with a Python list of up to
  /// batch_size committed objects and must return a sequence of the same length; then
  /// `cb(result[i])` runs and its value resolves the future (std::future<void> for a
  /// void callback). Errors stay per item: a commit or callback that throws fails only
  /// its own future (with its own exception); a Python exception fails the whole batch
  /// (PythonError). Arguments are passed to commit as rvalues when it accepts them.
  /// Thread-safe. Never blocks (except on a full bounded queue with FullPolicy::Block).
  /// PRECONDITION: copying/moving `args` into the queue is done on this thread; if they
  /// are Python objects, hold the GIL while calling.
  template <typename CommitFn, typename Callback, typename... Args>
  auto queue_invoke(CommitFn&& commit, Callback&& cb, Args&&... args)
      -> std::future<std::invoke_result_t<Callback, pybind11::object>> {
    return enqueue<pysched_detail::promise_completion>(0, nullptr, std::forward<CommitFn>(commit),
                                                       std::forward<Callback>(cb), pysched_detail::no_stage{},
                                                       std::forward<Args>(args)...);
  }

  struct QueueStats {
    size_t commit_queue_size = 0;         // items waiting to be committed
    size_t execute_queue_size = 0;        // committed items waiting to run
    std::int64_t total_enqueued = 0;      // items ever passed to queue_invoke
    double commit_batch_size_ema = 0.0;   // EMA of items per commit phase
    double execute_batch_size_ema = 0.0;  // EMA of items per Python call
    double commit_ns_per_batch_ema = 0.0;
    double execute_ns_per_batch_ema = 0.0;
  };
  /// Thread-safe. Never blocks on Python.
  QueueStats get_queue_stats() const {
    const ext::HandlerStats s = stats();
    QueueStats q;
    q.commit_queue_size = s.commit_queue_size;
    q.execute_queue_size = s.execute_queue_size;
    q.total_enqueued = s.total_enqueued;
    q.commit_batch_size_ema = s.commit_batch_size_ema;
    q.execute_batch_size_ema = s.execute_batch_size_ema;
    q.commit_ns_per_batch_ema = s.commit_ns_per_batch_ema;
    q.execute_ns_per_batch_ema = s.execute_ns_per_batch_ema;
    return q;
  }

  /// Drains: blocks until everything queued has run and every future is resolved.
  ~InvokeHandler() = default;
  InvokeHandler(InvokeHandler&&) noexcept = default;
  /// Drains the handler being replaced first (see the destructor).
  InvokeHandler& operator=(InvokeHandler&&) noexcept = default;
  InvokeHandler(const InvokeHandler&) = delete;
  InvokeHandler& operator=(const InvokeHandler&) = delete;

  // ---- Extensions (not in the original API) -------------------------------------

  /// As queue_invoke; the item fails with TimedOutError if it has not started (been
  /// taken into a batch) within `timeout` of queueing. A zero timeout expires at once
  /// unless the item is taken immediately.
  template <typename Rep, typename Period, typename CommitFn, typename Callback, typename... Args>
  auto queue_invoke_with_timeout(std::chrono::duration<Rep, Period> timeout, CommitFn&& commit, Callback&& cb,
                                 Args&&... args) -> std::future<std::invoke_result_t<Callback, pybind11::object>> {
    return enqueue<pysched_detail::promise_completion>(timeout_us(timeout), nullptr,
                                                       std::forward<CommitFn>(commit), std::forward<Callback>(cb),
                                                       pysched_detail::no_stage{}, std::forward<Args>(args)...);
  }

  /// As queue_invoke, returning a future whose item can be cancelled before it starts.
  /// The item's Python result is kept alive until the CancellableFuture is destroyed.
  template <typename CommitFn, typename Callback, typename... Args>
  auto queue_invoke_cancellable(CommitFn&& commit, Callback&& cb, Args&&... args)
      -> ext::CancellableFuture<std::invoke_result_t<Callback, pybind11::object>> {
    pysched_future* item = nullptr;
    auto future = enqueue<pysched_detail::promise_completion>(0, &item, std::forward<CommitFn>(commit),
                                                              std::forward<Callback>(cb), pysched_detail::no_stage{},
                                                              std::forward<Args>(args)...);
    return {std::move(future), item};
  }

  /// GIL-free staging: `stage(args...) -> T` runs on a pool thread WITHOUT the GIL,
  /// ahead of execution (up to prefetch_depth batches: decoding, GPU uploads), then
  /// `commit(T&&) -> pybind11::object` (or `commit()` when T is void) with the GIL, then
  /// the call and `cb` as in queue_invoke. A stage that throws fails only its item, with
  /// its own exception.
  template <typename StageFn, typename CommitFn, typename Callback, typename... Args>
  auto queue_invoke_staged(StageFn&& stage, CommitFn&& commit, Callback&& cb, Args&&... args)
      -> std::future<std::invoke_result_t<Callback, pybind11::object>> {
    return enqueue<pysched_detail::promise_completion>(0, nullptr, std::forward<CommitFn>(commit),
                                                       std::forward<Callback>(cb), std::forward<StageFn>(stage),
                                                       std::forward<Args>(args)...);
  }

  /// As queue_invoke (same commit, callback and argument rules, same errors), returning
  /// a pyscheduler::Future instead of a std::future: one allocation per item (shared
  /// with the core) instead of three, and no system call per item unless the caller is
  /// already blocked waiting for it. See Future in future.hpp.
  /// Thread-safe. Never blocks (except on a full bounded queue with FullPolicy::Block).
  template <typename CommitFn, typename Callback, typename... Args>
  auto queue_invoke_future(CommitFn&& commit, Callback&& cb, Args&&... args)
      -> ext::Future<std::invoke_result_t<Callback, pybind11::object>> {
    return enqueue<pysched_detail::future_completion>(0, nullptr, std::forward<CommitFn>(commit),
                                                      std::forward<Callback>(cb), pysched_detail::no_stage{},
                                                      std::forward<Args>(args)...);
  }

  /// Blocks until everything queued so far has run and every future is resolved (and
  /// the stats account for it). The handler stays usable.
  void drain() {
    const pysched_handler* h = checked();
    pysched_detail::call_checked([h](pysched_error** error) { return pysched_handler_drain(h, error); });
  }

  /// Queue sizes, counters of every outcome and moving averages. Never blocks on Python.
  ext::HandlerStats stats() const {
    const pysched_handler* h = checked();
    pysched_stats s{};
    pysched_detail::call_checked([h, &s](pysched_error** error) { return pysched_handler_stats(h, &s, error); });
    return pysched_detail::from_c(s);
  }

  /// p50/p99 of batch sizes, queue wait, commit, execute and GIL wait times.
  ext::LatencySummary latency() const {
    const pysched_handler* h = checked();
    pysched_latency l{};
    pysched_detail::call_checked([h, &l](pysched_error** error) { return pysched_handler_latency(h, &l, error); });
    return pysched_detail::from_c(l);
  }

  /// This handler's metrics in Prometheus text exposition format.
  std::string metrics_text() const {
    const pysched_handler* h = checked();
    std::string text(pysched_handler_metrics_text(h, nullptr, 0), '\0');
    for (;;) {
      const std::size_t n = pysched_handler_metrics_text(h, text.data(), text.size() + 1);
      if (n <= text.size()) {
        text.resize(n);
        return text;
      }
      text.assign(n, '\0');  // grew between the two calls
    }
  }

  /// "module.entry_point", or HandlerOptions::name.
  std::string name() const { return pysched_handler_name(checked()); }

  /// False for an empty (default-constructed or moved-from) handler.
  bool valid() const noexcept { return handle_ != nullptr; }
  explicit operator bool() const noexcept { return valid(); }
  /// The C handle, for code that mixes this wrapper with the C ABI.
  pysched_handler* native_handle() const noexcept { return handle_.get(); }

 private:
  friend class PyManager;
  explicit InvokeHandler(pysched_handler* handler) noexcept : handle_(handler) {}

  const pysched_handler* checked() const {
    if (!handle_) {
      throw std::logic_error("pyscheduler: this InvokeHandler is empty (moved-from or default-constructed)");
    }
    return handle_.get();
  }

  template <typename OnResult, typename... Args>
  auto call_sync(OnResult&& on_result, Args&&... args) -> std::invoke_result_t<OnResult, pybind11::object> {
    return pysched_detail::sync_call<OnResult, Args...>(checked(), std::forward<OnResult>(on_result),
                                                std::forward<Args>(args)...)
        .run();
  }

  // C, Cb, S are the forwarding types of commit, callback and stage: the context calls
  // each with the value category the user passed. Completion: pysched_detail::promise_completion
  // (returns a std::future) or pysched_detail::future_completion (returns a pyscheduler::Future).
  template <template <typename> class Completion, typename C, typename Cb, typename S, typename... Args>
  auto enqueue(std::uint64_t timeout_us, pysched_future** out_future, C&& commit, Cb&& cb, S&& stage, Args&&... args) {
    using Call = pysched_detail::queued_call<Completion, C, Cb, S, std::decay_t<Args>...>;
    using R = typename Call::result_type;
    const pysched_handler* handler = checked();
    auto call = std::make_unique<Call>(std::forward<C>(commit), std::forward<Cb>(cb), std::forward<S>(stage),
                                       std::forward<Args>(args)...);
    auto future = [&] {
      if constexpr (std::is_same_v<Completion<R>, pysched_detail::future_completion<R>>) {
        // The Future is the context's second owner, besides the core.
        return pysched_detail::future_access::adopt<R>(call.get());
      } else {
        return call->get_future();
      }
    }();
    const pysched_item item = call->item(timeout_us);
    // From here the core owns the context: complete and drop run exactly once, also
    // when the queue refuses the item (then before pysched_handler_queue returns), so
    // the future always resolves through the trampolines and the status adds nothing.
    Call* raw = call.release();
    pysched_detail::tsan_release(raw);
    (void)pysched_handler_queue(handler, &item, out_future, nullptr);
    return future;
  }

  template <typename Rep, typename Period>
  static std::uint64_t timeout_us(std::chrono::duration<Rep, Period> timeout) {
    // Beyond ~31 years a deadline means "never"; clamp before converting.
    if (std::chrono::duration<double>(timeout).count() >= 1e9) {
      return std::uint64_t{1} << 62;
    }
    const auto us = std::chrono::ceil<std::chrono::microseconds>(timeout).count();
    return us <= 0 ? 1 : static_cast<std::uint64_t>(us);  // 0 would mean "no deadline"
  }

  pysched_detail::handler_handle handle_;
};

inline PyManager::InvokeHandler PyManager::loadPythonModule(const std::string& module_name,
                                                            const std::string& entry_point, size_t batch_size,
                                                            size_t prefetch_depth) {
  ext::HandlerOptions options;
  options.batch_size = batch_size;
  options.prefetch_depth = prefetch_depth;
  return loadPythonModule(module_name, entry_point, options);
}

inline PyManager::InvokeHandler PyManager::loadPythonModule(const std::string& module_name,
                                                            const std::string& entry_point,
                                                            const ext::HandlerOptions& options) {
  const pysched_handler_options c = pysched_detail::to_c(options);
  const char* module = pysched_detail::c_str_arg(module_name, "module_name");
  const char* entry = pysched_detail::c_str_arg(entry_point, "entry_point");
  pysched_handler* handler = nullptr;
  pysched_detail::call_checked([&](pysched_error** error) {
    return pysched_manager_load(handle_.get(), module, entry, &c, &handler, error);
  });
  return InvokeHandler(handler);
}

}  // namespace pyscheduler

#endif  // PYSCHEDULER_HANDLER_HPP
