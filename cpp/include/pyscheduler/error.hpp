// Errors of the C++ wrapper. Every exception here owns plain strings only: it can be
// caught, copied, stored in a std::future and destroyed on any thread without the GIL.
//
//   std::runtime_error
//     pyscheduler::ext::Error            kind() says which pysched_status it came from
//       pyscheduler::ext::PythonError    a Python exception: python_type(), traceback()
//       pyscheduler::ext::CancelledError the item was cancelled before it started
//       pyscheduler::ext::TimedOutError  the item's deadline passed before it started
//       pyscheduler::ext::QueueFullError a bounded queue refused the item
//       pyscheduler::ext::ShutDownError  the handler was shutting down
//   std::invalid_argument
//     pyscheduler::ext::LoadError        import or attribute failure of loadPythonModule
//
// Invalid arguments (an empty add_path, a zero batch_size, ...) are plain
// std::invalid_argument. Exceptions thrown by user code (commit, callback, stage) reach
// the future unchanged, except pybind11::error_already_set, which becomes a PythonError
// (it owns Python objects and could not be destroyed safely without the GIL).
#ifndef PYSCHEDULER_ERROR_HPP
#define PYSCHEDULER_ERROR_HPP

#include <pyscheduler.h>

#include <exception>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>

namespace pyscheduler {

// Beyond the original's API (see pyscheduler.hpp): kept out of namespace pyscheduler
// itself, so that `using namespace pyscheduler;` brings in only the original's names.
namespace ext {

/// Why something failed; the numbers are the C ABI's `pysched_status` values.
enum class ErrorKind : int {
  InvalidArgument = PYSCHED_INVALID_ARGUMENT,
  Import = PYSCHED_IMPORT,
  Attribute = PYSCHED_ATTRIBUTE,
  PythonException = PYSCHED_PYTHON_EXCEPTION,
  Cancelled = PYSCHED_CANCELLED,
  TimedOut = PYSCHED_TIMED_OUT,
  QueueFull = PYSCHED_QUEUE_FULL,
  ShutDown = PYSCHED_SHUT_DOWN,
  Internal = PYSCHED_INTERNAL,
  NotReady = PYSCHED_NOT_READY,
  Cuda = PYSCHED_CUDA,
  Unsupported = PYSCHED_UNSUPPORTED,
  Commit = PYSCHED_COMMIT,
  Callback = PYSCHED_CALLBACK,
};

/// A short static name ("python_exception", "queue_full", ...). Never NULL.
inline const char* to_string(ErrorKind kind) noexcept {
  return pysched_status_name(static_cast<int32_t>(kind));
}

/// Base of the failures reported by pyscheduler itself.
class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  ErrorKind kind() const noexcept { return kind_; }

 private:
  ErrorKind kind_;
};

/// A Python exception raised by the bound function, by a conversion, or by Python code
/// run from a commit or callback. what() is "context: Type: message".
class PythonError : public Error {
 public:
  PythonError(const std::string& message, std::string python_type, std::string traceback,
              ErrorKind kind = ErrorKind::PythonException)
      : Error(kind, message),
        details_(std::make_shared<const Details>(Details{std::move(python_type), std::move(traceback)})) {}

  /// Qualified name of the exception type ("ValueError"). Empty when the error was found
  /// by pyscheduler rather than raised (e.g. the function returned a result of the
  /// wrong length for its batch).
  const std::string& python_type() const noexcept { return details_->python_type; }
  /// "Traceback (most recent call last): ..." as the traceback module formats it, or "".
  const std::string& traceback() const noexcept { return details_->traceback; }

 private:
  struct Details {
    std::string python_type;
    std::string traceback;
  };
  // Shared so that copying the exception (std::exception_ptr, catch by value) cannot throw.
  std::shared_ptr<const Details> details_;
};

class CancelledError : public Error {
 public:
  explicit CancelledError(const std::string& message) : Error(ErrorKind::Cancelled, message) {}
};

class TimedOutError : public Error {
 public:
  explicit TimedOutError(const std::string& message) : Error(ErrorKind::TimedOut, message) {}
};

class QueueFullError : public Error {
 public:
  explicit QueueFullError(const std::string& message) : Error(ErrorKind::QueueFull, message) {}
};

class ShutDownError : public Error {
 public:
  explicit ShutDownError(const std::string& message) : Error(ErrorKind::ShutDown, message) {}
};

/// loadPythonModule could not import the module (kind() == Import) or bind the entry
/// point (kind() == Attribute). what() carries the Python error, e.g.
/// "cannot import module \"nope\": ModuleNotFoundError: No module named 'nope'".
class LoadError : public std::invalid_argument {
 public:
  LoadError(ErrorKind kind, const std::string& message, std::string python_type, std::string traceback)
      : std::invalid_argument(message),
        kind_(kind),
        details_(std::make_shared<const Details>(Details{std::move(python_type), std::move(traceback)})) {}
  ErrorKind kind() const noexcept { return kind_; }
  const std::string& python_type() const noexcept { return details_->python_type; }
  const std::string& traceback() const noexcept { return details_->traceback; }

 private:
  struct Details {
    std::string python_type;
    std::string traceback;
  };
  ErrorKind kind_;
  std::shared_ptr<const Details> details_;
};

}  // namespace ext

namespace pysched_detail {

// The implementation names the extensions unqualified; users never name this namespace.
using namespace ext;

/// Builds the exception for `status` with the details of `error` (which may be NULL) and
/// hands it to `sink` as a concrete exception object. Never touches Python.
template <typename Sink>
decltype(auto) with_exception_for(pysched_status status, const pysched_error* error, Sink&& sink) {
  if (error != nullptr) {
    status = pysched_error_kind(error);
  }
  const auto kind = static_cast<ErrorKind>(status);
  std::string message = error != nullptr ? pysched_error_message(error) : "";
  if (message.empty()) {
    message = std::string("pyscheduler: ") + to_string(kind);
  }
  std::string python_type = error != nullptr ? pysched_error_python_type(error) : "";
  std::string traceback = error != nullptr ? pysched_error_traceback(error) : "";
  switch (kind) {
    case ErrorKind::InvalidArgument:
      return sink(std::invalid_argument(message));
    case ErrorKind::Import:
    case ErrorKind::Attribute:
      return sink(LoadError(kind, message, std::move(python_type), std::move(traceback)));
    case ErrorKind::Cancelled:
      return sink(CancelledError(message));
    case ErrorKind::TimedOut:
      return sink(TimedOutError(message));
    case ErrorKind::QueueFull:
      return sink(QueueFullError(message));
    case ErrorKind::ShutDown:
      return sink(ShutDownError(message));
    default:
      break;
  }
  if (kind == ErrorKind::PythonException || !python_type.empty()) {
    return sink(PythonError(message, std::move(python_type), std::move(traceback), kind));
  }
  return sink(Error(kind, message));
}

/// The exception for an error passed to a completion callback (borrowed).
inline std::exception_ptr exception_for(const pysched_error* error) noexcept {
  try {
    return with_exception_for(PYSCHED_INTERNAL, error,
                              [](auto&& e) { return std::make_exception_ptr(std::forward<decltype(e)>(e)); });
  } catch (...) {
    return std::current_exception();  // std::bad_alloc while copying the strings
  }
}

/// Throws the exception for a failed call; releases `error` (owned, may be NULL).
[[noreturn]] inline void throw_error(pysched_status status, pysched_error* error) {
  const std::unique_ptr<pysched_error, void (*)(pysched_error*)> owned(error, &pysched_error_free);
  with_exception_for(status, error, [](auto&& e) -> int { throw std::forward<decltype(e)>(e); });
  std::terminate();  // unreachable: the sink always throws
}

/// Throws unless `status` is PYSCHED_OK; releases `error` either way (and clears it).
/// `error` is taken by reference, so `check(f(..., &error), error)` reads it after f ran
/// (argument evaluation order is unspecified; a copy could be taken before the call).
inline void check(pysched_status status, pysched_error*& error) {
  pysched_error* owned = std::exchange(error, nullptr);
  if (status != PYSCHED_OK) {
    throw_error(status, owned);
  }
  pysched_error_free(owned);
}

/// Runs `c_call(&error)`, a C ABI call whose last parameter is `pysched_error**
/// out_error`, and throws the exception for its error, if any.
template <typename CCall>
void call_checked(CCall&& c_call) {
  pysched_error* error = nullptr;
  const pysched_status status = std::forward<CCall>(c_call)(&error);
  check(status, error);
}

}  // namespace pysched_detail
}  // namespace pyscheduler

#endif  // PYSCHEDULER_ERROR_HPP
