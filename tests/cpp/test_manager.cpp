// PyManager, API.md part A: one interpreter per process shared by every manager;
// loadPythonModule errors as std::invalid_argument carrying the Python error; add_path.
#include "test_support.hpp"

#include <pyscheduler/pyscheduler.hpp>

#include <gtest/gtest.h>

#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace pysched_test;
using pyscheduler::PyManager;

class Manager : public WithManager {};

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

TEST_F(Manager, MissingModuleThrowsInvalidArgumentWithThePythonError) {
  try {
    manager.loadPythonModule("pysched_no_such_module", "invoke");
    FAIL() << "no exception";
  } catch (const std::invalid_argument& e) {
    EXPECT_TRUE(contains(e.what(), "ModuleNotFoundError")) << e.what();
    EXPECT_TRUE(contains(e.what(), "pysched_no_such_module")) << e.what();
    const auto* load = dynamic_cast<const pyscheduler::ext::LoadError*>(&e);
    ASSERT_NE(load, nullptr);
    EXPECT_EQ(load->kind(), pyscheduler::ext::ErrorKind::Import);
    EXPECT_EQ(load->python_type(), "ModuleNotFoundError");
  }
}

TEST_F(Manager, ModuleRaisingOnImportThrowsInvalidArgumentWithThePythonError) {
  try {
    manager.loadPythonModule("pysched_cpp_broken", "invoke");
    FAIL() << "no exception";
  } catch (const pyscheduler::ext::LoadError& e) {
    EXPECT_TRUE(contains(e.what(), "RuntimeError: pysched_cpp_broken fails to import on purpose")) << e.what();
    EXPECT_TRUE(contains(e.traceback(), "pysched_cpp_broken.py")) << e.traceback();
  }
}

TEST_F(Manager, MissingAttributeThrowsInvalidArgumentWithThePythonError) {
  try {
    manager.loadPythonModule("pysched_testmod", "no_such_function");
    FAIL() << "no exception";
  } catch (const std::invalid_argument& e) {
    EXPECT_TRUE(contains(e.what(), "AttributeError")) << e.what();
    EXPECT_TRUE(contains(e.what(), "no_such_function")) << e.what();
    const auto* load = dynamic_cast<const pyscheduler::ext::LoadError*>(&e);
    ASSERT_NE(load, nullptr);
    EXPECT_EQ(load->kind(), pyscheduler::ext::ErrorKind::Attribute);
  }
  // The default entry point "invoke" is an attribute like any other.
  EXPECT_THROW(manager.loadPythonModule("pysched_testmod"), std::invalid_argument);
}

TEST_F(Manager, AttributeThatIsNotCallableThrowsInvalidArgument) {
  try {
    manager.loadPythonModule("pysched_testmod", "not_callable");
    FAIL() << "no exception";
  } catch (const std::invalid_argument& e) {
    EXPECT_TRUE(contains(e.what(), "not callable")) << e.what();
  }
}

TEST_F(Manager, InvalidNamesAndSizesThrowInvalidArgument) {
  EXPECT_THROW(manager.loadPythonModule("", "invoke"), std::invalid_argument);
  EXPECT_THROW(manager.loadPythonModule("pysched_testmod", ""), std::invalid_argument);
  EXPECT_THROW(manager.loadPythonModule("pysched_testmod", "add", 0), std::invalid_argument);
  EXPECT_THROW(manager.loadPythonModule("pysched_testmod", "add", 1, 0), std::invalid_argument);
  EXPECT_THROW(manager.loadPythonModule(std::string("pysched_testmod\0x", 17), "add"), std::invalid_argument);
}

TEST_F(Manager, ModuleIsImportedOnceAndShared) {
  auto set_value = manager.loadPythonModule("pysched_cpp_testmod", "set_value");
  auto get_value = manager.loadPythonModule("pysched_cpp_testmod", "get_value");
  set_value.invoke<void>(std::string("shared"));
  EXPECT_EQ(get_value.invoke<std::string>(), "shared");
  // A second manager sees the same module object.
  PyManager other;
  auto get_again = other.loadPythonModule("pysched_cpp_testmod", "get_value");
  EXPECT_EQ(get_again.invoke<std::string>(), "shared");
}

TEST_F(Manager, AddPathIsIdempotent) {
  const std::string dir = PYSCHED_TEST_PYTHON_DIR;
  manager.add_path(dir);
  manager.add_path(dir);
  PyManager other;
  other.add_path(dir);
  auto count = manager.loadPythonModule("pysched_cpp_testmod", "sys_path_count");
  EXPECT_EQ(count.invoke<int>(dir), 1);
}

TEST_F(Manager, AddPathEmptyThrowsInvalidArgument) {
  EXPECT_THROW(manager.add_path(""), std::invalid_argument);
  EXPECT_THROW(manager.add_path(std::string("a\0b", 3)), std::invalid_argument);
}

TEST_F(Manager, OneInterpreterPerProcess) {
  PyManager second;
  EXPECT_NE(PyManager::debug_shared_state_address(), 0u);
  auto id_a = manager.loadPythonModule("pysched_cpp_testmod", "interpreter_id");
  auto id_b = second.loadPythonModule("pysched_cpp_testmod", "interpreter_id");
  EXPECT_EQ(id_a.invoke<long long>(), id_b.invoke<long long>());
  EXPECT_FALSE(manager.adopted());
  EXPECT_EQ(manager.worker_threads(), second.worker_threads());
  EXPECT_GE(manager.worker_threads(), 1u);
}

TEST_F(Manager, SharedStateAddressIsTheSameForEveryManager) {
  const auto address = PyManager::debug_shared_state_address();
  EXPECT_NE(address, 0u);
  {
    PyManager second;
    EXPECT_EQ(PyManager::debug_shared_state_address(), address);
  }
  EXPECT_EQ(PyManager::debug_shared_state_address(), address);
}

TEST_F(Manager, ConcurrentConstructorsShareOneState) {
  const uint64_t base = PyManager::debug_arc_count();
  constexpr int kThreads = 8;
  std::vector<std::unique_ptr<PyManager>> managers(kThreads);
  std::vector<uintptr_t> addresses(kThreads);
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      managers[i] = std::make_unique<PyManager>();
      addresses[i] = PyManager::debug_shared_state_address();
    });
  }
  for (auto& t : threads) {
    t.join();
  }
  EXPECT_EQ(PyManager::debug_arc_count(), base + kThreads);
  for (auto a : addresses) {
    EXPECT_EQ(a, PyManager::debug_shared_state_address());
  }
  managers.clear();
  EXPECT_EQ(PyManager::debug_arc_count(), base);
}

TEST_F(Manager, ExtrasVersionAndOptions) {
  EXPECT_STRNE(pyscheduler::ext::version(), "");
  pyscheduler::ext::ManagerOptions options;
  options.add_cwd_to_path = false;
  PyManager with_options(options);  // joins the running interpreter
  EXPECT_EQ(with_options.worker_threads(), manager.worker_threads());
  EXPECT_NE(with_options.native_handle(), nullptr);
}

}  // namespace
