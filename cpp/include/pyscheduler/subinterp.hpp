// Sub-interpreter replicas for C++ users: what pybind11 code needs to run as the commit
// or callback of a handler whose batches execute in own-GIL sub-interpreters (CPython
// 3.12+). Such code runs on a replica's thread with the replica's interpreter current and
// its GIL held, exactly as the C ABI documents for pysched_item's callbacks.
//
// pybind11 (>= 3.0, built against Python >= 3.12 headers, where it defines
// PYBIND11_HAS_SUBINTERPRETER_SUPPORT) keeps its internals (type registry, exception
// translators, the thread-state key behind gil_scoped_acquire) per interpreter, but only
// once it has been told that a non-main interpreter exists in the process; until then
// each shared object uses one process-wide copy that belongs to the main interpreter.
// pybind11 flips that switch itself when it creates a sub-interpreter or initializes a
// module inside one; replicas are created by pyscheduler, so enable_pybind11_in_replicas()
// flips it for the shared object that includes this header.
//
// Rules for commit/callback code of replica handlers (checked by tests/cpp/subinterp_*):
//  - call enable_pybind11_in_replicas() in every shared object whose pybind11 code runs
//    in replicas, before loading the first replica handler;
//  - build Python objects inside commit; queued arguments and captured state must be C++
//    values, never pybind11::object (those belong to the interpreter that made them);
//  - convert the result inside the callback; no Python object leaves the replica;
//  - pybind11-bound C++ classes are registered per interpreter: cast them only after a
//    module registering them (PYBIND11_MODULE with
//    pybind11::multiple_interpreters::per_interpreter_gil()) was imported in the replica;
//  - numpy and torch refuse to import in sub-interpreters: handlers that need them run
//    in the shared interpreter (no replicas).
#ifndef PYSCHEDULER_SUBINTERP_HPP
#define PYSCHEDULER_SUBINTERP_HPP

#include <pybind11/pybind11.h>

#include <stdexcept>

namespace pyscheduler {
namespace ext {

/// Whether pybind11, as compiled into this shared object, can run inside replicas.
#if defined(PYBIND11_HAS_SUBINTERPRETER_SUPPORT)
inline constexpr bool pybind11_supports_replicas = true;
#else
inline constexpr bool pybind11_supports_replicas = false;
#endif

/// Makes pybind11 in this shared object keep per-interpreter internals, so that commit
/// and callback code written with pybind11 works inside replicas. Idempotent; call it
/// before loading the first handler with replicas (later calls change nothing). Throws
/// std::logic_error when pybind11 was built without sub-interpreter support (Python
/// headers older than 3.12), where replica handlers cannot use pybind11.
/// Thread-safe. Never blocks; the GIL may or may not be held.
inline void enable_pybind11_in_replicas() {
#if defined(PYBIND11_HAS_SUBINTERPRETER_SUPPORT)
  // pybind11's own switch (set by subinterpreter::create() and by module init in a
  // sub-interpreter). It only ever goes from false to true, which pybind11 allows at any
  // time: the main interpreter then finds the same internals through its state dict.
  pybind11::detail::has_seen_non_main_interpreter() = true;
#else
  throw std::logic_error(
      "pyscheduler: this pybind11 was built without sub-interpreter support (Python headers "
      "older than 3.12); commit/callback code of replica handlers cannot use pybind11");
#endif
}

/// Whether the calling thread runs in a sub-interpreter (a replica) rather than the main
/// interpreter. PRECONDITION: the calling thread is attached (inside commit/callback).
inline bool in_replica() noexcept { return PyInterpreterState_Get() != PyInterpreterState_Main(); }

}  // namespace ext
}  // namespace pyscheduler

#endif  // PYSCHEDULER_SUBINTERP_HPP
