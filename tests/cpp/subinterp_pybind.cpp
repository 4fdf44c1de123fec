// pybind11 commit/callback code running inside own-GIL sub-interpreter replicas
// (CPython 3.12+). The handlers are loaded through PyManager with
// HandlerOptions::subinterpreters, and items are queued with queue_invoke, so the
// wrapper's own trampolines run in the replicas.
//
// What it proves: with pyscheduler::ext::enable_pybind11_in_replicas() called first,
//  - pybind11 conversions, error_already_set, gil_scoped_release/acquire and
//    cpp_function work inside a replica;
//  - pybind11's internals used there belong to the replica's interpreter, not the
//    main one;
//  - every future resolves exactly once with its own value or its own exception.
// Built against Python < 3.12 every test is skipped with a message.
#include <pyscheduler/pyscheduler.hpp>
#include <pyscheduler/subinterp.hpp>

#include <gtest/gtest.h>

#include <chrono>
#include <cstddef>
#include <future>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#ifndef PYSCHED_TEST_PYTHON_DIR
#error "PYSCHED_TEST_PYTHON_DIR must name tests/python"
#endif

namespace py = pybind11;

namespace {

bool replicas_available() {
  if (PY_VERSION_HEX < 0x030C0000 || !pyscheduler::ext::pybind11_supports_replicas) {
    return false;
  }
  return true;
}

#define SKIP_WITHOUT_REPLICAS()                                                                  \
  if (!replicas_available()) {                                                                   \
    GTEST_SKIP() << "own-GIL sub-interpreters need CPython 3.12+ and pybind11 built for it; " \
                 << "this build uses Python " << PY_VERSION;                                    \
  }

/// A handler whose batches run in `replicas` sub-interpreters, loaded through the public
/// API (PyManager::loadPythonModule with HandlerOptions::subinterpreters); destroying it
/// drains it.
class ReplicaHandler {
 public:
  ReplicaHandler(pyscheduler::PyManager& manager, const char* entry, std::size_t replicas, std::size_t batch_size)
      : handler_(manager.loadPythonModule("subinterp_testmod", entry, options(replicas, batch_size))) {}

  /// queue_invoke, whose trampolines then run in the replicas.
  template <typename Commit, typename Callback, typename... Args>
  auto queue(Commit&& commit, Callback&& callback, Args&&... args) {
    return handler_.queue_invoke(std::forward<Commit>(commit), std::forward<Callback>(callback),
                                 std::forward<Args>(args)...);
  }

 private:
  static pyscheduler::ext::HandlerOptions options(std::size_t replicas, std::size_t batch_size) {
    pyscheduler::ext::HandlerOptions o;
    o.batch_size = batch_size;
    o.subinterpreters = replicas;
    return o;
  }

  pyscheduler::PyManager::InvokeHandler handler_;
};

class Replicas : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (replicas_available()) {
      pyscheduler::ext::enable_pybind11_in_replicas();
    }
  }
  // Starts the interpreter; touches pybind11 in the main interpreter first, as a host
  // program that also uses the shared interpreter would.
  Replicas() { manager_.add_path(PYSCHED_TEST_PYTHON_DIR); }
  pyscheduler::PyManager manager_;
};

struct Seen {
  long value = 0;
  bool in_replica = false;
  bool internals_of_this_interpreter = false;
  std::int64_t interpreter_id = -1;
};

TEST_F(Replicas, PybindCommitAndCallbackRunInTheReplicas) {
  SKIP_WITHOUT_REPLICAS();
  {
    py::gil_scoped_acquire gil;
    ASSERT_EQ(py::detail::get_internals().istate, PyInterpreterState_Main());
  }
  ReplicaHandler handler(manager_, "double", 3, 4);
  std::vector<std::future<Seen>> futures;
  for (long v = 0; v < 300; ++v) {
    futures.push_back(handler.queue([](long x) { return py::cast(x); },
                                    [](py::object result) {
                                      Seen seen;
                                      seen.value = result.cast<long>();
                                      seen.in_replica = pyscheduler::ext::in_replica();
                                      seen.internals_of_this_interpreter =
                                          py::detail::get_internals().istate == PyInterpreterState_Get();
                                      seen.interpreter_id = PyInterpreterState_GetID(PyInterpreterState_Get());
                                      return seen;
                                    },
                                    v));
  }
  std::set<std::int64_t> interpreters;
  for (long v = 0; v < 300; ++v) {
    const Seen seen = futures[static_cast<std::size_t>(v)].get();
    EXPECT_EQ(seen.value, 2 * v);
    EXPECT_TRUE(seen.in_replica);
    EXPECT_TRUE(seen.internals_of_this_interpreter) << "pybind11 used another interpreter's internals";
    interpreters.insert(seen.interpreter_id);
  }
  EXPECT_EQ(interpreters.count(0), 0u) << "interpreter 0 is the main one";
  EXPECT_GE(interpreters.size(), 1u);
  EXPECT_LE(interpreters.size(), 3u);
  {
    py::gil_scoped_acquire gil;
    EXPECT_EQ(py::detail::get_internals().istate, PyInterpreterState_Main()) << "main keeps its own internals";
  }
}

TEST_F(Replicas, CppFunctionsBoundInTheReplicaAreCalledByPython) {
  SKIP_WITHOUT_REPLICAS();
  ReplicaHandler handler(manager_, "call_each", 2, 8);
  std::vector<std::future<long>> futures;
  for (long v = 0; v < 100; ++v) {
    futures.push_back(handler.queue([](long x) { return py::cpp_function([x] { return 3 * x; }); },
                                    [](py::object result) { return result.cast<long>(); }, v));
  }
  for (long v = 0; v < 100; ++v) {
    EXPECT_EQ(futures[static_cast<std::size_t>(v)].get(), 3 * v);
  }
}

TEST_F(Replicas, GilReleaseInsideACommit) {
  SKIP_WITHOUT_REPLICAS();
  ReplicaHandler handler(manager_, "double", 2, 2);
  std::vector<std::future<long>> futures;
  for (long v = 0; v < 40; ++v) {
    futures.push_back(handler.queue(
        [](long x) {
          {
            py::gil_scoped_release nogil;  // the replica's GIL, not the main one
            std::this_thread::sleep_for(std::chrono::microseconds(200));
          }
          return py::cast(x);
        },
        [](py::object result) { return result.cast<long>(); }, v));
  }
  for (long v = 0; v < 40; ++v) {
    EXPECT_EQ(futures[static_cast<std::size_t>(v)].get(), 2 * v);
  }
}

TEST_F(Replicas, ErrorsStayWithTheirItem) {
  SKIP_WITHOUT_REPLICAS();
  ReplicaHandler handler(manager_, "double", 2, 4);
  std::vector<std::future<long>> futures;
  for (long v = 0; v < 60; ++v) {
    futures.push_back(handler.queue(
        [](long x) -> py::object {
          if (x % 3 == 1) {
            py::module_::import("no_such_module_in_a_replica");  // throws error_already_set
          }
          return py::cast(x);
        },
        [](py::object result) -> long {
          const long r = result.cast<long>();
          if (r % 5 == 0 && r != 0) {
            throw py::value_error("callback refused " + std::to_string(r));
          }
          return r;
        },
        v));
  }
  for (long v = 0; v < 60; ++v) {
    auto& f = futures[static_cast<std::size_t>(v)];
    if (v % 3 == 1) {
      try {
        f.get();
        ADD_FAILURE() << v << ": commit error expected";
      } catch (const pyscheduler::ext::PythonError& e) {
        EXPECT_EQ(e.kind(), pyscheduler::ext::ErrorKind::Commit) << e.what();
        EXPECT_EQ(e.python_type(), "ModuleNotFoundError") << e.what();
        EXPECT_NE(std::string(e.what()).find("no_such_module_in_a_replica"), std::string::npos) << e.what();
      }
    } else if ((2 * v) % 5 == 0 && v != 0) {
      EXPECT_THROW(f.get(), py::value_error) << v;
    } else {
      EXPECT_EQ(f.get(), 2 * v);
    }
  }
}

}  // namespace
