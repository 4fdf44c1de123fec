# pybind11 commit/callback code inside own-GIL sub-interpreter replicas
# (subinterp_pybind.cpp); included by tests/cpp/CMakeLists.txt. Replicas need CPython
# 3.12+: built against an older Python the program still builds, its tests skip
# themselves, and CTest reports the test as skipped (the reason is in its output).
pysched_cpp_test(cpp_subinterp_pybind subinterp_pybind.cpp)
if(Python3_VERSION VERSION_LESS 3.12)
  message(STATUS "pyscheduler: cpp_subinterp_pybind will be skipped: Python ${Python3_VERSION} "
                 "has no own-GIL sub-interpreters (3.12+); configure with --python <CPython 3.12+> to run it")
  set_tests_properties(cpp_subinterp_pybind PROPERTIES SKIP_REGULAR_EXPRESSION "\\[  SKIPPED \\]")
endif()
