// TensorHandler: a Python function bound with a tensor signature (per input and output a
// dtype and a fixed per-item shape). Items are copied into (or filled in place in) one
// contiguous batch tensor per input; the function is called ONCE per batch with those
// tensors, shape (B, *item_shape), and returns one array per output (a tuple for
// several); each item's rows are copied to its destinations without Python.
//
// The queue forms share one per-item heap context (pysched_detail::tensor_call) passed through
// pysched_tensor_item.user_data, with static noexcept trampolines as in queued_call.hpp;
// they differ only in how the outcome reaches the caller: a std::promise
// (queue, queue_owned, queue_fill, queue_cancellable), the item's own light Future
// (queue_future, queue_fill_future), or a callback (queue/queue_fill with `done`).
#ifndef PYSCHEDULER_TENSOR_HANDLER_HPP
#define PYSCHEDULER_TENSOR_HANDLER_HPP

#include <pyscheduler.h>
#include <pyscheduler/detail/core_alloc.hpp>
#include <pyscheduler/detail/future_state.hpp>
#include <pyscheduler/detail/handle.hpp>
#include <pyscheduler/detail/queued_call.hpp>
#include <pyscheduler/detail/tsan.hpp>
#include <pyscheduler/error.hpp>
#include <pyscheduler/future.hpp>
#include <pyscheduler/manager.hpp>
#include <pyscheduler/options.hpp>
#include <pyscheduler/stats.hpp>

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <future>
#include <initializer_list>
#include <limits>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace pyscheduler {
namespace ext {

/// Element type of a tensor; the numbers are the C ABI's `pysched_dtype`.
enum class DType : std::uint32_t {
  Float32 = PYSCHED_DTYPE_F32,
  Float64 = PYSCHED_DTYPE_F64,
  Int64 = PYSCHED_DTYPE_I64,
  Int32 = PYSCHED_DTYPE_I32,
  UInt8 = PYSCHED_DTYPE_U8,
  /// IEEE half precision, passed as raw 16-bit values (std::uint16_t in C++).
  Float16 = PYSCHED_DTYPE_F16,
  /// bfloat16, passed as raw 16-bit values (std::uint16_t in C++).
  BFloat16 = PYSCHED_DTYPE_BF16,
};

/// Bytes per element; 0 for a value outside the enum.
constexpr std::size_t dtype_size(DType dtype) noexcept {
  switch (dtype) {
    case DType::Float32:
    case DType::Int32:
      return 4;
    case DType::Float64:
    case DType::Int64:
      return 8;
    case DType::UInt8:
      return 1;
    case DType::Float16:
    case DType::BFloat16:
      return 2;
  }
  return 0;
}

/// The DType of a C++ element type: float, double, std::int32_t, std::int64_t,
/// std::uint8_t. (Float16/BFloat16 have no C++ type of their own: use std::uint16_t
/// buffers and spell the DType out.)
template <typename T>
inline constexpr DType dtype_of = [] {
  static_assert(sizeof(T) == 0, "pyscheduler: no DType for this element type");
  return DType::Float32;
}();
template <>
inline constexpr DType dtype_of<float> = DType::Float32;
template <>
inline constexpr DType dtype_of<double> = DType::Float64;
template <>
inline constexpr DType dtype_of<std::int32_t> = DType::Int32;
template <>
inline constexpr DType dtype_of<std::int64_t> = DType::Int64;
template <>
inline constexpr DType dtype_of<std::uint8_t> = DType::UInt8;

/// One input or output: its element type and the shape of ONE item (the batch dimension
/// is implicit and leading; an empty shape is one scalar per item).
struct TensorSpec {
  DType dtype = DType::Float32;
  std::vector<std::int64_t> shape;

  /// Elements of one item (the product of the shape; 1 for a scalar). Sizes are
  /// validated by loadTensorFunction; this assumes they are positive.
  std::size_t item_elements() const noexcept {
    std::size_t n = 1;
    for (const std::int64_t d : shape) {
      n *= static_cast<std::size_t>(d);
    }
    return n;
  }
  /// Bytes of one item.
  std::size_t item_bytes() const noexcept { return item_elements() * dtype_size(dtype); }
};

/// The spec of an input or output of element type T (float, double, std::int32_t,
/// std::int64_t, std::uint8_t) with per-item shape `item_shape`.
template <typename T>
TensorSpec tensor_of(std::vector<std::int64_t> item_shape = {}) {
  return TensorSpec{dtype_of<T>, std::move(item_shape)};
}

/// A tensor handler's signature: at least one input, any number of outputs, and where
/// the batch tensors live: -1 host memory, >= 0 that CUDA device (pinned staging, one
/// upload per input per batch on the handler's own stream).
struct TensorSignature {
  std::vector<TensorSpec> inputs;
  std::vector<TensorSpec> outputs;
  int device = -1;
};

/// How one item is queued, besides its data.
struct TensorItemOptions {
  /// Fail the item with TimedOutError if it has not started (been taken into a batch)
  /// within this long of queueing; zero: no deadline. Negative: std::invalid_argument.
  std::chrono::microseconds timeout{0};
  /// The input buffers stay valid and unchanged until the item has finished (its
  /// future resolved, its `done` called): they are read when the batch is gathered
  /// instead of copied when queued. Ignored by the fill forms.
  bool borrow_inputs = false;
};

/// One host pointer per input, each to ONE item's bytes of that input (C order, the
/// input's dtype). A non-owning view: a braced list `{a.data(), b.data()}`, a std::span,
/// std::vector or std::array of pointers. Read during the queue call only. Like
/// std::span, it does not keep a braced list alive: pass it as an argument, don't keep
/// one made from a braced list in a variable.
class TensorInputs {
 public:
  TensorInputs() noexcept = default;
  TensorInputs(std::initializer_list<const void*> ptrs) noexcept : ptrs_(ptrs.begin(), ptrs.size()) {}
  TensorInputs(std::span<const void* const> ptrs) noexcept : ptrs_(ptrs) {}
  TensorInputs(const std::vector<const void*>& ptrs) noexcept : ptrs_(ptrs) {}
  template <std::size_t N>
  TensorInputs(const std::array<const void*, N>& ptrs) noexcept : ptrs_(ptrs) {}

  std::span<const void* const> span() const noexcept { return ptrs_; }

 private:
  std::span<const void* const> ptrs_;
};

/// One destination per output, each valid for ONE item's bytes of that output until
/// the item has finished. Same forms as TensorInputs; empty for a signature without
/// outputs. Read during the queue call only.
class TensorOutputs {
 public:
  TensorOutputs() noexcept = default;
  TensorOutputs(std::initializer_list<void*> ptrs) noexcept : ptrs_(ptrs.begin(), ptrs.size()) {}
  TensorOutputs(std::span<void* const> ptrs) noexcept : ptrs_(ptrs) {}
  TensorOutputs(const std::vector<void*>& ptrs) noexcept : ptrs_(ptrs) {}
  template <std::size_t N>
  TensorOutputs(const std::array<void*, N>& ptrs) noexcept : ptrs_(ptrs) {}

  std::span<void* const> span() const noexcept { return ptrs_; }

 private:
  std::span<void* const> ptrs_;
};

}  // namespace ext

namespace pysched_detail {
using namespace ::pyscheduler::ext;  // the public types below, unqualified


// pysched_tensor_item.flags: the inputs are read when the batch is gathered.
inline constexpr std::uint32_t tensor_borrow_inputs = PYSCHED_TENSOR_BORROW_INPUTS;

/// Marks "inputs are copied (or borrowed), not filled".
struct no_fill {};

/// How the no-promise form hears an item's outcome: `done(std::exception_ptr)` (null
/// on success), called from the core's `drop`, right after `complete`.
template <typename Done>
class done_completion {
 protected:
  template <typename Self, typename D>
  done_completion(std::type_identity<Self>, D&& done) : done_(std::forward<D>(done)) {}

  template <typename Self>
  static void finish(Self* self) noexcept {
    std::exception_ptr error;
    try {
      self->outcome_.take();  // void: returns, or rethrows the stored exception
    } catch (...) {
      error = std::current_exception();
    }
    try {
      std::invoke(self->done_, std::move(error));
    } catch (...) {
      // Nobody is left to hear it: `done` is documented as not throwing.
    }
    delete self;
  }

  outcome<void> outcome_;

 private:
  Done done_;
};

/// The rows queue_owned's result owns (none for the other forms).
template <typename Owned>
struct owned_rows {
  using type = std::vector<Owned>;
};
template <>
struct owned_rows<void> {
  using type = no_fill;
};

/// One queued tensor item: how its outcome reaches the caller (`Completion`, whose
/// value type is `R`: void, or std::vector<Owned> for queue_owned), its fill (or
/// no_fill), and for queue_owned the rows the result will own.
///
/// Threads: constructed on the queueing thread; fill runs on a pool thread without the
/// GIL; complete on a worker (without the GIL on success) or, on failure, on any thread
/// (the queueing thread when the queue refuses the item); drop right after complete.
/// Each trampoline acquires and releases the context for TSan: the hand-offs happen
/// inside the uninstrumented core.
template <typename Completion, typename R, typename Fill, typename Owned>
class tensor_call final : public Completion {
  static constexpr bool has_fill = !std::is_same_v<Fill, no_fill>;
  static constexpr bool owns_rows = !std::is_void_v<Owned>;
  using Rows = typename owned_rows<Owned>::type;

 public:
  using result_type = R;

  template <typename... CompletionArgs>
  tensor_call(std::uint32_t n_inputs, std::optional<Fill> fill, std::size_t owned_elements,
              CompletionArgs&&... completion_args)
      : Completion(std::type_identity<tensor_call>{}, std::forward<CompletionArgs>(completion_args)...),
        fill_(std::move(fill)),
        n_inputs_(n_inputs) {
    if constexpr (owns_rows) {
      rows_.resize(owned_elements);
    } else {
      (void)owned_elements;
    }
  }

  // One allocation per item from the core's allocator (see core_alloc.hpp).
  static void* operator new(std::size_t size) { return core_allocate(size, alignof(tensor_call)); }
  static void operator delete(void* p, std::size_t size) noexcept { core_free(p, size, alignof(tensor_call)); }

  /// Where queue_owned's single output goes.
  void* owned_destination() noexcept {
    if constexpr (owns_rows) {
      return rows_.data();
    } else {
      return nullptr;
    }
  }

  /// The C item for this context (it takes ownership of the context once queued).
  pysched_tensor_item item(const void* const* inputs, void* const* outputs, std::uint64_t timeout_us,
                           bool borrow_inputs) noexcept {
    pysched_tensor_item item{};
    item.user_data = this;
    item.inputs = has_fill ? nullptr : inputs;
    item.fill = has_fill ? &tensor_call::fill_trampoline : nullptr;
    item.outputs = outputs;
    item.complete = &tensor_call::complete_trampoline;
    item.drop = &tensor_call::drop_trampoline;
    item.timeout_us = timeout_us;
    item.flags = (borrow_inputs && !has_fill) ? tensor_borrow_inputs : 0u;
    return item;
  }

 private:
  // A pool thread WITHOUT the GIL, once, ahead of the batch's call. An exception fails
  // the item with that exception (kept here; the core reports a generic commit error).
  static int fill_trampoline(void* user_data, void* const* slots) noexcept {
    auto* self = static_cast<tensor_call*>(user_data);
    tsan_acquire(self);
    int rc = 0;
    if constexpr (has_fill) {
      // The rows are reused batch after batch by fills on other threads; the core's
      // buffer pool orders them, invisibly to TSan: state it per row.
      for (std::uint32_t k = 0; k < self->n_inputs_; ++k) {
        tsan_acquire(slots[k]);
      }
      try {
        std::invoke(std::move(*self->fill_), std::span<void* const>(slots, self->n_inputs_));
      } catch (...) {
        self->outcome_.set_error(std::current_exception());
        rc = 1;
      }
      self->fill_.reset();
      for (std::uint32_t k = 0; k < self->n_inputs_; ++k) {
        tsan_release(slots[k]);
      }
    } else {
      (void)slots;
    }
    tsan_release(self);
    return rc;
  }

  // `error` NULL: every output row is in place. Else borrowed, valid during the call.
  static void complete_trampoline(void* user_data, const pysched_error* error) noexcept {
    auto* self = static_cast<tensor_call*>(user_data);
    tsan_acquire(self);
    if (error == nullptr) {
      try {
        if constexpr (owns_rows) {
          self->outcome_.set_value_from([self]() noexcept { return std::move(self->rows_); });
        } else {
          self->outcome_.set_value_from([]() noexcept {});
        }
      } catch (...) {
        self->outcome_.set_error(std::current_exception());
      }
    } else if (self->outcome_.empty()) {
      // A fill that threw already stored its own exception, not the core's summary.
      self->outcome_.set_error(exception_for(error));
    }
    tsan_release(self);
  }

  // Exactly once, after complete, on every path. Hands the outcome over; frees `self`.
  static void drop_trampoline(void* user_data) noexcept {
    auto* self = static_cast<tensor_call*>(user_data);
    tsan_acquire(self);
    if (self->outcome_.empty()) {
      self->outcome_.set_error(outcome<R>::lost());  // complete never ran
    }
    self->fill_.reset();  // never ran (cancelled, expired, refused)
    tensor_call::finish(self);
  }

  [[no_unique_address]] std::optional<Fill> fill_;
  [[no_unique_address]] Rows rows_;
  std::uint32_t n_inputs_;
};

/// What a queue form returns for its completion: std::future<R>, Future<R>, or nothing.
template <typename Completion, typename R>
using tensor_queue_result_t =
    std::conditional_t<std::is_same_v<Completion, promise_completion<R>>, std::future<R>,
                       std::conditional_t<std::is_same_v<Completion, future_completion<R>>, Future<R>, void>>;

inline std::uint64_t tensor_timeout_us(std::chrono::microseconds timeout) {
  if (timeout.count() < 0) {
    throw std::invalid_argument("pyscheduler: TensorItemOptions::timeout must not be negative");
  }
  return static_cast<std::uint64_t>(timeout.count());
}

/// The C view of a spec; points into `spec`, which must outlive it.
inline pysched_tensor_spec to_c(const TensorSpec& spec) {
  pysched_tensor_spec c{};
  c.dtype = static_cast<std::uint32_t>(spec.dtype);
  c.ndim = checked_narrow<std::uint32_t>(spec.shape.size(), "a TensorSpec's number of dimensions");
  c.shape = spec.shape.empty() ? nullptr : spec.shape.data();
  return c;
}

using tensor_handler_handle = unique_handle<pysched_tensor_handler, &pysched_tensor_handler_free>;

}  // namespace pysched_detail

namespace ext {

/// A Python function bound with a tensor signature (PyManager::loadTensorFunction).
///
/// Move-only. Destroying or move-assigning over a handler blocks until everything queued
/// on it has finished and every future is resolved. A moved-from handler is empty: its
/// calls throw std::logic_error. Any number of threads may queue on one handler at once.
///
/// Every queue form copies what it is given before it returns (the inputs unless
/// TensorItemOptions::borrow_inputs; the pointer lists always), checks the counts and
/// pointers against the signature (std::invalid_argument, nothing queued), and resolves
/// the item exactly once. An item fails with:
///   PythonError      the function raised, or returned something that is not one array
///                    per output of shape (B, *item_shape) and the declared dtype (the
///                    message names what was expected and what was received); every
///                    item of that batch fails alike;
///   TimedOutError    its deadline passed before it started; CancelledError: cancelled;
///   QueueFullError   a bounded queue refused it; ShutDownError: the handler is closing;
///   the exception its fill threw (fill forms).
/// The sizes of the buffers behind the pointers cannot be checked: each must hold one
/// item of its spec (TensorSpec::item_bytes).
class TensorHandler {
 public:
  /// An empty handler; assign one from PyManager::loadTensorFunction.
  TensorHandler() noexcept = default;
  /// Drains: blocks until everything queued has finished.
  ~TensorHandler() = default;
  TensorHandler(TensorHandler&&) noexcept = default;
  /// Drains the handler being replaced first.
  TensorHandler& operator=(TensorHandler&&) noexcept = default;
  TensorHandler(const TensorHandler&) = delete;
  TensorHandler& operator=(const TensorHandler&) = delete;

  /// Queues one item: its inputs copied now, its rows of each output written to
  /// `outputs` before the future resolves. Besides the item's context, a std::promise:
  /// its shared state is a second allocation per item, and setting it costs a system
  /// call on glibc (made after the batch's GIL hold, on the worker).
  /// Thread-safe. Never blocks (except on a full bounded queue with FullPolicy::Block).
  std::future<void> queue(TensorInputs inputs, TensorOutputs outputs, const TensorItemOptions& options = {}) {
    return enqueue<pysched_detail::promise_completion<void>, void, pysched_detail::no_fill, void>(
        inputs.span(), outputs.span(), options, nullptr, std::nullopt, 0);
  }

  /// The fastest form: no future. `done(std::exception_ptr)` (null on success, after the
  /// rows are written) is called exactly once: on success on a worker WITHOUT the GIL
  /// right after the batch's call; on failure on a worker, or on this thread before
  /// queue returns when the queue refuses the item. It must not throw (an exception
  /// from it is discarded) and must not own Python objects (it is destroyed without
  /// the GIL). Keep it short: it runs on the worker that serves the next batch. When
  /// queue throws (bad arguments), nothing was queued and `done` is never called.
  template <typename Done>
    requires std::is_invocable_v<std::decay_t<Done>&, std::exception_ptr>
  void queue(TensorInputs inputs, TensorOutputs outputs, Done&& done, const TensorItemOptions& options = {}) {
    enqueue<pysched_detail::done_completion<std::decay_t<Done>>, void, pysched_detail::no_fill, void>(
        inputs.span(), outputs.span(), options, nullptr, std::nullopt, 0, std::forward<Done>(done));
  }

  /// As queue, returning the item's own light Future (future.hpp): one allocation per
  /// item shared with the core, no system call unless the caller is already waiting.
  Future<void> queue_future(TensorInputs inputs, TensorOutputs outputs, const TensorItemOptions& options = {}) {
    return enqueue<pysched_detail::future_completion<void>, void, pysched_detail::no_fill, void>(inputs.span(), outputs.span(),
                                                                                 options, nullptr, std::nullopt, 0);
  }

  /// As queue, returning a future whose item can be cancelled before it starts (a C
  /// future handle more per item).
  CancellableFuture<void> queue_cancellable(TensorInputs inputs, TensorOutputs outputs,
                                            const TensorItemOptions& options = {}) {
    pysched_future* item = nullptr;
    auto future = enqueue<pysched_detail::promise_completion<void>, void, pysched_detail::no_fill, void>(
        inputs.span(), outputs.span(), options, &item, std::nullopt, 0);
    return {std::move(future), item};
  }

  /// For a signature with exactly one output, of element type T (std::uint16_t for
  /// Float16/BFloat16): the result owns the item's rows (item_elements() values).
  /// Throws std::invalid_argument for another output count or element type.
  template <typename T>
  std::future<std::vector<T>> queue_owned(TensorInputs inputs, const TensorItemOptions& options = {}) {
    const TensorSpec& out = owned_output<T>();
    return enqueue<pysched_detail::promise_completion<std::vector<T>>, std::vector<T>, pysched_detail::no_fill, T>(
        inputs.span(), {}, options, nullptr, std::nullopt, out.item_elements());
  }

  /// Queues one item whose inputs `fill(std::span<void* const> slots)` writes in place
  /// (`slots[k]`: the item's row of input k, TensorSpec::item_bytes of it), on a pool
  /// thread WITHOUT the GIL, ahead of the batch's call (up to prefetch_depth batches;
  /// the items of a batch spread over idle workers). An exception from fill fails the
  /// item with that exception. fill must not own Python objects. Rows go to `outputs`.
  template <typename Fill>
    requires std::is_invocable_v<std::decay_t<Fill>&&, std::span<void* const>>
  std::future<void> queue_fill(Fill&& fill, TensorOutputs outputs, const TensorItemOptions& options = {}) {
    return enqueue<pysched_detail::promise_completion<void>, void, std::decay_t<Fill>, void>(
        {}, outputs.span(), options, nullptr, std::optional<std::decay_t<Fill>>(std::forward<Fill>(fill)), 0);
  }

  /// queue_fill with the completion of queue(inputs, outputs, done): no future.
  template <typename Fill, typename Done>
    requires std::is_invocable_v<std::decay_t<Fill>&&, std::span<void* const>> &&
             std::is_invocable_v<std::decay_t<Done>&, std::exception_ptr>
  void queue_fill(Fill&& fill, TensorOutputs outputs, Done&& done, const TensorItemOptions& options = {}) {
    enqueue<pysched_detail::done_completion<std::decay_t<Done>>, void, std::decay_t<Fill>, void>(
        {}, outputs.span(), options, nullptr, std::optional<std::decay_t<Fill>>(std::forward<Fill>(fill)),
        0, std::forward<Done>(done));
  }

  /// queue_fill returning the item's own light Future (see queue_future).
  template <typename Fill>
    requires std::is_invocable_v<std::decay_t<Fill>&&, std::span<void* const>>
  Future<void> queue_fill_future(Fill&& fill, TensorOutputs outputs, const TensorItemOptions& options = {}) {
    return enqueue<pysched_detail::future_completion<void>, void, std::decay_t<Fill>, void>(
        {}, outputs.span(), options, nullptr, std::optional<std::decay_t<Fill>>(std::forward<Fill>(fill)), 0);
  }

  /// Blocks until everything queued so far has finished (every completion ran).
  void drain() {
    const pysched_tensor_handler* h = checked();
    pysched_detail::call_checked([h](pysched_error** error) { return pysched_tensor_handler_drain(h, error); });
  }

  /// Queue sizes, counters of every outcome and moving averages. Never blocks on Python.
  HandlerStats stats() const {
    const pysched_tensor_handler* h = checked();
    pysched_stats s{};
    pysched_detail::call_checked([h, &s](pysched_error** error) { return pysched_tensor_handler_stats(h, &s, error); });
    return pysched_detail::from_c(s);
  }

  /// p50/p99 of batch sizes, queue wait, execute and GIL wait times.
  LatencySummary latency() const {
    const pysched_tensor_handler* h = checked();
    pysched_latency l{};
    pysched_detail::call_checked([h, &l](pysched_error** error) { return pysched_tensor_handler_latency(h, &l, error); });
    return pysched_detail::from_c(l);
  }

  /// "module.entry_point", or HandlerOptions::name.
  const std::string& name() const noexcept { return name_; }
  /// The signature it was loaded with.
  const TensorSignature& signature() const noexcept { return signature_; }

  /// False for an empty (default-constructed or moved-from) handler.
  bool valid() const noexcept { return handle_ != nullptr; }
  explicit operator bool() const noexcept { return valid(); }
  /// The C handle, for code that mixes this wrapper with the C ABI.
  pysched_tensor_handler* native_handle() const noexcept { return handle_.get(); }

 private:
  friend class ::pyscheduler::PyManager;
  TensorHandler(pysched_tensor_handler* handle, TensorSignature signature, std::string name) noexcept
      : handle_(handle), signature_(std::move(signature)), name_(std::move(name)) {}

  const pysched_tensor_handler* checked() const {
    if (!handle_) {
      throw std::logic_error("pyscheduler: this TensorHandler is empty (moved-from or default-constructed)");
    }
    return handle_.get();
  }

  template <typename T>
  const TensorSpec& owned_output() const {
    checked();
    if (signature_.outputs.size() != 1) {
      throw std::invalid_argument("pyscheduler: " + name_ + ": queue_owned needs a signature with one output, it has " +
                                  std::to_string(signature_.outputs.size()));
    }
    const TensorSpec& out = signature_.outputs[0];
    const bool raw16 = (out.dtype == DType::Float16 || out.dtype == DType::BFloat16) && std::is_same_v<T, std::uint16_t>;
    bool same = raw16;
    if constexpr (!std::is_same_v<T, std::uint16_t>) {
      same = dtype_of<T> == out.dtype;
    }
    if (!same) {
      throw std::invalid_argument("pyscheduler: " + name_ +
                                  ": queue_owned<T>: T does not match the output's dtype (" +
                                  std::to_string(static_cast<std::uint32_t>(out.dtype)) + ")");
    }
    return out;
  }

  void check_pointers(std::span<const void* const> inputs, std::span<void* const> outputs, bool fill,
                      bool owned) const {
    if (!fill) {
      if (inputs.size() != signature_.inputs.size()) {
        throw std::invalid_argument("pyscheduler: " + name_ + ": " + std::to_string(inputs.size()) +
                                    " inputs given, the signature has " + std::to_string(signature_.inputs.size()));
      }
      for (std::size_t k = 0; k < inputs.size(); ++k) {
        if (inputs[k] == nullptr) {
          throw std::invalid_argument("pyscheduler: " + name_ + ": input " + std::to_string(k) + " is NULL");
        }
      }
    }
    if (!owned) {
      if (outputs.size() != signature_.outputs.size()) {
        throw std::invalid_argument("pyscheduler: " + name_ + ": " + std::to_string(outputs.size()) +
                                    " output destinations given, the signature has " +
                                    std::to_string(signature_.outputs.size()) + " outputs");
      }
      for (std::size_t k = 0; k < outputs.size(); ++k) {
        if (outputs[k] == nullptr) {
          throw std::invalid_argument("pyscheduler: " + name_ + ": output destination " + std::to_string(k) +
                                      " is NULL");
        }
      }
    }
  }

  // Completion: how the outcome is handed over (promise, Future, done); R its value
  // type; Fill the fill callable or pysched_detail::no_fill; Owned the element type of
  // queue_owned's rows, else void. Returns std::future<R>, Future<R> or void.
  template <typename Completion, typename R, typename Fill, typename Owned, typename... CompletionArgs>
  pysched_detail::tensor_queue_result_t<Completion, R> enqueue(std::span<const void* const> inputs, std::span<void* const> outputs, const TensorItemOptions& options,
               pysched_future** out_future, std::optional<Fill> fill, std::size_t owned_elements,
               CompletionArgs&&... completion_args) {
    using Call = pysched_detail::tensor_call<Completion, R, Fill, Owned>;
    constexpr bool has_fill = !std::is_same_v<Fill, pysched_detail::no_fill>;
    constexpr bool owned = !std::is_void_v<Owned>;
    const pysched_tensor_handler* handler = checked();
    check_pointers(inputs, outputs, has_fill, owned);
    const std::uint64_t timeout_us = pysched_detail::tensor_timeout_us(options.timeout);
    auto call = std::make_unique<Call>(static_cast<std::uint32_t>(signature_.inputs.size()), std::move(fill),
                                       owned_elements, std::forward<CompletionArgs>(completion_args)...);
    void* owned_dest[1] = {call->owned_destination()};
    void* const* dests = owned ? owned_dest : (outputs.empty() ? nullptr : outputs.data());
    using Result = pysched_detail::tensor_queue_result_t<Completion, R>;
    auto result = [&] {
      if constexpr (std::is_same_v<Result, Future<R>>) {
        // The Future is the context's second owner, besides the core.
        return pysched_detail::future_access::adopt<R>(call.get());
      } else if constexpr (std::is_same_v<Result, std::future<R>>) {
        return call->get_future();
      } else {
        return 0;  // done_completion: nothing to return
      }
    }();
    const pysched_tensor_item item = call->item(inputs.data(), dests, timeout_us, options.borrow_inputs);
    // From here the core owns the context: complete and drop run exactly once, also when
    // the queue refuses the item (then before pysched_tensor_handler_queue returns), so
    // the outcome always travels through the trampolines and the status adds nothing.
    Call* raw = call.release();
    pysched_detail::tsan_release(raw);
    (void)pysched_tensor_handler_queue(handler, &item, out_future, nullptr);
    if constexpr (!std::is_void_v<Result>) {
      return result;
    }
  }

  pysched_detail::tensor_handler_handle handle_;
  TensorSignature signature_;
  std::string name_;
};

}  // namespace ext

inline ext::TensorHandler PyManager::loadTensorFunction(const std::string& module_name,
                                                        const std::string& entry_point,
                                                        const ext::TensorSignature& signature,
                                                        const ext::HandlerOptions& options) {
  using namespace ::pyscheduler::ext;
  const pysched_handler_options c_options = pysched_detail::to_c(options);
  const char* module = pysched_detail::c_str_arg(module_name, "module_name");
  const char* entry = pysched_detail::c_str_arg(entry_point, "entry_point");
  std::vector<pysched_tensor_spec> specs;
  specs.reserve(signature.inputs.size() + signature.outputs.size());
  for (const TensorSpec& s : signature.inputs) {
    specs.push_back(pysched_detail::to_c(s));
  }
  for (const TensorSpec& s : signature.outputs) {
    specs.push_back(pysched_detail::to_c(s));
  }
  pysched_tensor_signature c_signature{};
  c_signature.n_inputs = pysched_detail::checked_narrow<std::uint32_t>(signature.inputs.size(), "the number of inputs");
  c_signature.n_outputs = pysched_detail::checked_narrow<std::uint32_t>(signature.outputs.size(), "the number of outputs");
  c_signature.inputs = c_signature.n_inputs == 0 ? nullptr : specs.data();
  c_signature.outputs = c_signature.n_outputs == 0 ? nullptr : specs.data() + c_signature.n_inputs;
  c_signature.device = signature.device;
  pysched_tensor_handler* handler = nullptr;
  pysched_detail::call_checked([&](pysched_error** error) {
    return pysched_manager_load_tensor(handle_.get(), module, entry, &c_signature, &c_options, &handler, error);
  });
  // Owned from here: a throwing copy below frees (drains) the fresh handler.
  pysched_detail::tensor_handler_handle owner(handler);
  std::string name = options.name.empty() ? module_name + "." + entry_point : options.name;
  TensorHandler result(nullptr, signature, std::move(name));
  result.handle_ = std::move(owner);
  return result;
}

}  // namespace pyscheduler

#endif  // PYSCHEDULER_TENSOR_HANDLER_HPP
