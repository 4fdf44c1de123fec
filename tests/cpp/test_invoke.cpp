// Synchronous invoke, API.md part A (1) and (2): direct calls on the caller's thread,
// Python exceptions as catchable C++ exceptions, callbacks under the GIL.
#include "test_support.hpp"

#include <pybind11/stl.h>
#include <pyscheduler/pyscheduler.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace pysched_test;
using pyscheduler::ext::PythonError;

class SyncInvoke : public WithManager {};

TEST_F(SyncInvoke, ReturnsTheConvertedResult) {
  auto add = manager.loadPythonModule("pysched_testmod", "add");
  EXPECT_EQ(add.invoke<int64_t>(3000, -1234), 1766);
  EXPECT_EQ(add.invoke<std::string>(std::string("hello"), " world"), "hello world");
  EXPECT_DOUBLE_EQ(add.invoke<double>(0.5, 0.25), 0.75);
}

TEST_F(SyncInvoke, TheGilIsHeldOnlyDuringTheCall) {
  auto add = manager.loadPythonModule("pysched_testmod", "add");
  EXPECT_EQ(PyGILState_Check(), 0);
  bool held_inside = false;
  add.invoke([&](pybind11::object&&) { held_inside = PyGILState_Check() != 0; }, 1, 2);
  EXPECT_TRUE(held_inside);
  EXPECT_EQ(PyGILState_Check(), 0) << "invoke returned with the GIL still held";
  // Another thread can take the GIL right away (it would block forever otherwise).
  std::thread([&] { EXPECT_EQ(add.invoke<int>(2, 2), 4); }).join();
}

TEST_F(SyncInvoke, VoidReturnTypeDiscardsTheResult) {
  auto set_value = manager.loadPythonModule("pysched_cpp_testmod", "set_value");
  auto get_value = manager.loadPythonModule("pysched_cpp_testmod", "get_value");
  set_value.invoke<void>(41);
  EXPECT_EQ(get_value.invoke<int>(), 41);
}

TEST_F(SyncInvoke, PythonExceptionIsACatchableCppException) {
  auto raise_error = manager.loadPythonModule("pysched_testmod", "raise_error");
  try {
    raise_error.invoke<int>("boom");
    FAIL() << "no exception";
  } catch (const PythonError& e) {
    EXPECT_EQ(e.python_type(), "RuntimeError");
    EXPECT_NE(std::string(e.what()).find("RuntimeError: boom"), std::string::npos) << e.what();
    EXPECT_NE(e.traceback().find("Traceback (most recent call last)"), std::string::npos) << e.traceback();
    EXPECT_NE(e.traceback().find("raise_error"), std::string::npos) << e.traceback();
    EXPECT_EQ(e.kind(), pyscheduler::ext::ErrorKind::PythonException);
  }
  // Also catchable as what it derives from.
  EXPECT_THROW(raise_error.invoke<int>("boom"), std::runtime_error);
  EXPECT_THROW(raise_error.invoke<int>("boom"), pyscheduler::ext::Error);
}

TEST_F(SyncInvoke, SystemExitIsAnExceptionNotAnExit) {
  auto call_sys_exit = manager.loadPythonModule("pysched_testmod", "call_sys_exit");
  try {
    call_sys_exit.invoke<int>(0);
    FAIL() << "no exception";
  } catch (const PythonError& e) {
    EXPECT_EQ(e.python_type(), "SystemExit");
  }
  auto add = manager.loadPythonModule("pysched_testmod", "add");
  EXPECT_EQ(add.invoke<int>(1, 2), 3);  // the interpreter is still there
}

TEST_F(SyncInvoke, ExceptionIsSafeToHandleWithoutTheGilOnAnotherThread) {
  auto raise_error = manager.loadPythonModule("pysched_testmod", "raise_error");
  std::exception_ptr stored;
  try {
    raise_error.invoke<int>("kept");
  } catch (...) {
    stored = std::current_exception();
  }
  ASSERT_TRUE(stored);
  std::string type;
  std::string traceback;
  // A thread that never touched Python rethrows, copies and destroys it.
  std::thread([&] {
    try {
      std::rethrow_exception(stored);
    } catch (const PythonError& e) {
      const PythonError copy = e;
      type = copy.python_type();
      traceback = copy.traceback();
    }
    stored = nullptr;
  }).join();
  EXPECT_EQ(type, "RuntimeError");
  EXPECT_FALSE(traceback.empty());
}

TEST_F(SyncInvoke, CallbackGetsTheResultWithTheGilHeld) {
  auto add = manager.loadPythonModule("pysched_testmod", "add");
  bool gil_held = false;
  auto to_string = [&](const pybind11::object& obj) {
    gil_held = PyGILState_Check() != 0;
    return obj.cast<std::string>();
  };
  const std::string result = add.invoke(to_string, "hello", " world");
  EXPECT_EQ(result, "hello world");
  EXPECT_TRUE(gil_held);
  // The callback's return type is what invoke returns, whatever it is.
  const std::vector<int> v = add.invoke([](pybind11::object&& o) { return std::vector<int>(o.cast<int>(), 7); }, 1, 2);
  EXPECT_EQ(v, std::vector<int>(3, 7));
  // A void callback.
  int seen = 0;
  add.invoke([&](pybind11::object o) { seen = o.cast<int>(); }, 20, 22);
  EXPECT_EQ(seen, 42);
}

TEST_F(SyncInvoke, CallbackExceptionPropagatesUnchanged) {
  auto add = manager.loadPythonModule("pysched_testmod", "add");
  EXPECT_THROW(add.invoke([](pybind11::object&&) -> int { throw std::out_of_range("from the callback"); }, 1, 2),
               std::out_of_range);
}

TEST_F(SyncInvoke, PythonErrorInsideTheCallbackBecomesPythonError) {
  auto add = manager.loadPythonModule("pysched_testmod", "add");
  try {
    add.invoke([](pybind11::object&& o) { return o.attr("no_such_attribute").cast<int>(); }, 1, 2);
    FAIL() << "no exception";
  } catch (const PythonError& e) {
    EXPECT_EQ(e.python_type(), "AttributeError");
    EXPECT_EQ(e.kind(), pyscheduler::ext::ErrorKind::Callback);
  }
}

TEST_F(SyncInvoke, ResultOfTheWrongTypeThrowsACastError) {
  auto add = manager.loadPythonModule("pysched_testmod", "add");
  EXPECT_THROW(add.invoke<int>("a", "b"), pybind11::cast_error);
  EXPECT_THROW(add.invoke<int>("a", "b"), std::runtime_error);
}

TEST_F(SyncInvoke, WorksWhileTheCallerHoldsTheGil) {
  auto add = manager.loadPythonModule("pysched_testmod", "add");
  ASSERT_EQ(add.invoke<int>(1, 1), 2);  // this thread now has its persistent thread state
  pybind11::gil_scoped_acquire gil;
  pybind11::object big = pybind11::cast(40);
  EXPECT_EQ(add.invoke<int>(big, 2), 42);  // a Python object as argument, GIL held
}

TEST_F(SyncInvoke, ManyThreadsAtOnce) {
  auto add = manager.loadPythonModule("pysched_testmod", "add");
  constexpr int kThreads = 8;
  constexpr int kCalls = 300;
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kCalls; ++i) {
        if (add.invoke<int>(t * 100000, i) != t * 100000 + i) {
          ++wrong;
        }
      }
    });
  }
  for (auto& t : threads) {
    t.join();
  }
  EXPECT_EQ(wrong.load(), 0);
}

TEST_F(SyncInvoke, DefaultEntryPointIsInvoke) {
  auto h = manager.loadPythonModule("pysched_cpp_testmod");
  EXPECT_EQ(h.invoke<int>(2, 3), 5);
}

TEST_F(SyncInvoke, DottedEntryPoint) {
  auto predict = manager.loadPythonModule("pysched_testmod", "Model.predict");
  EXPECT_EQ(predict.invoke<std::vector<int>>(std::vector<int>{1, 2}), (std::vector<int>{3, 6}));
}

}  // namespace
