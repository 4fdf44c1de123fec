// PyManager: the entry point. The first PyManager of the process starts (or adopts) the
// one embedded interpreter; every manager and handler shares it and its worker pool.
#ifndef PYSCHEDULER_MANAGER_HPP
#define PYSCHEDULER_MANAGER_HPP

#include <pybind11/pybind11.h>

#include <pyscheduler.h>
#include <pyscheduler/detail/handle.hpp>
#include <pyscheduler/error.hpp>
#include <pyscheduler/options.hpp>

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace pyscheduler {

namespace ext {
// Defined in <pyscheduler/tensor_handler.hpp>.
class TensorHandler;
struct TensorSignature;
}  // namespace ext

namespace pysched_detail {
/// C strings cannot carry NUL bytes: refuse them instead of silently truncating.
inline const char* c_str_arg(const std::string& s, const char* what) {
  if (s.find('\0') != std::string::npos) {
    throw std::invalid_argument(std::string("pyscheduler: ") + what + " contains a NUL byte");
  }
  return s.c_str();
}
}  // namespace pysched_detail

/// Owns a reference to the process-wide interpreter state. Not copyable, not movable.
/// Python's signal handlers are not installed and the interpreter is never finalized.
class PyManager {
 public:
  /// A Python function bound with its own queue (defined in <pyscheduler/handler.hpp>).
  class InvokeHandler;

  /// Starts the interpreter if this is the first manager of the process (thread-safe:
  /// concurrent first constructions race safely), else joins the running one.
  /// PRECONDITION: the GIL is not held, unless the interpreter is already running.
  PyManager() : PyManager(ext::ManagerOptions{}) {}
  /// As PyManager(), choosing the Python environment and the worker pool size (only the
  /// first manager of the process starts the interpreter and the pool).
  explicit PyManager(const ext::ManagerOptions& options) {
    pysched_manager_options c{};
    c.python_executable = options.python_executable.empty()
                              ? nullptr
                              : pysched_detail::c_str_arg(options.python_executable, "python_executable");
    c.add_cwd_to_path = options.add_cwd_to_path;
    c.worker_threads = options.worker_threads;
    pysched_manager* manager = nullptr;
    pysched_detail::call_checked([&](pysched_error** error) { return pysched_manager_new(&c, &manager, error); });
    handle_.reset(manager);
  }
  /// Releases this manager's reference. Handlers it loaded stay valid.
  ~PyManager() = default;

  PyManager(const PyManager&) = delete;
  PyManager& operator=(const PyManager&) = delete;
  PyManager(PyManager&&) = delete;
  PyManager& operator=(PyManager&&) = delete;

  /// Imports `module_name` (once per process) and binds `entry_point` (a dotted path
  /// like "Model.predict" is allowed). `batch_size`: most items per Python call;
  /// `prefetch_depth`: batches committed ahead of execution.
  /// Throws LoadError (a std::invalid_argument carrying the Python error) when the
  /// module cannot be imported or has no such callable; std::invalid_argument for bad
  /// names or sizes.
  InvokeHandler loadPythonModule(const std::string& module_name, const std::string& entry_point = "invoke",
                                 size_t batch_size = 1, size_t prefetch_depth = 1);
  /// As above with every handler option (batch delay, bounded queue, metrics name).
  InvokeHandler loadPythonModule(const std::string& module_name, const std::string& entry_point,
                                 const ext::HandlerOptions& options);

  /// Imports `module_name` and binds `entry_point` as a tensor handler: called once per
  /// batch with one batch tensor per input of `signature` (shape (B, *item_shape)),
  /// returning one array per output. Throws LoadError as loadPythonModule,
  /// std::invalid_argument for a bad signature or options, pyscheduler::ext::Error (kind
  /// Cuda) for a CUDA placement without a usable device. See tensor_handler.hpp.
  ext::TensorHandler loadTensorFunction(const std::string& module_name, const std::string& entry_point,
                                        const ext::TensorSignature& signature, const ext::HandlerOptions& options = {});

  /// Appends `directory` to sys.path unless already there. Empty: std::invalid_argument.
  void add_path(const std::string& directory) {
    if (directory.empty()) {
      throw std::invalid_argument("pyscheduler: add_path: directory must not be empty");
    }
    const char* dir = pysched_detail::c_str_arg(directory, "directory");
    pysched_detail::call_checked(
        [&](pysched_error** error) { return pysched_manager_add_path(handle_.get(), dir, error); });
  }

  /// Address of the process-wide state (equal in every plugin of the process); 0 when
  /// no manager or handler is alive.
  static uintptr_t debug_shared_state_address() {
    return static_cast<uintptr_t>(pysched_debug_shared_state_address());
  }
  /// Live managers plus live handlers, process-wide.
  static uint64_t debug_arc_count() { return pysched_debug_arc_count(); }

  /// Threads in the worker pool shared by all handlers.
  std::uint32_t worker_threads() const noexcept { return pysched_manager_worker_threads(handle_.get()); }
  /// Whether the interpreter was already running when pyscheduler first started.
  bool adopted() const noexcept { return pysched_manager_adopted(handle_.get()); }
  /// The C handle, for code that mixes this wrapper with the C ABI.
  pysched_manager* native_handle() const noexcept { return handle_.get(); }

 private:
  pysched_detail::manager_handle handle_;
};

}  // namespace pyscheduler

// InvokeHandler and the definitions of loadPythonModule.
#include <pyscheduler/handler.hpp>
// TensorHandler and the definition of loadTensorFunction.
#include <pyscheduler/tensor_handler.hpp>

#endif  // PYSCHEDULER_MANAGER_HPP
