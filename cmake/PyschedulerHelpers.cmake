# Helpers of pyscheduler's own build (not installed).
include_guard(GLOBAL)

# System libraries the Rust staticlib needs besides libpython and threads
# (`cargo rustc -- --print native-static-libs`: -lutil -lrt -lpthread -lm -ldl -lc).
set(PYSCHEDULER_STATIC_SYSTEM_LIBS ${CMAKE_DL_LIBS} m rt util)

# pyscheduler_resolve_python(<hint> <out_var>)
# Resolves the CPython to build against to the interpreter's own sys.executable, so that a
# pyenv shim or a symlink becomes the real interpreter (a venv's python stays the venv's).
# <hint>: an executable path or name; empty means python3 on PATH.
function(pyscheduler_resolve_python hint out_var)
  if(hint STREQUAL "")
    find_program(_pysched_python3_on_path NAMES python3 NO_CACHE)
    if(NOT _pysched_python3_on_path)
      message(FATAL_ERROR "pyscheduler: no python3 on PATH; set PYSCHEDULER_PYTHON to a CPython >= 3.9")
    endif()
    set(hint "${_pysched_python3_on_path}")
  elseif(NOT IS_ABSOLUTE "${hint}")
    find_program(_pysched_python_named NAMES "${hint}" NO_CACHE)
    if(NOT _pysched_python_named)
      message(FATAL_ERROR "pyscheduler: PYSCHEDULER_PYTHON='${hint}' is not on PATH")
    endif()
    set(hint "${_pysched_python_named}")
  endif()
  execute_process(
    COMMAND "${hint}" -c "import sys; print(sys.executable); print('%d.%d' % sys.version_info[:2])"
    OUTPUT_VARIABLE _out RESULT_VARIABLE _rc ERROR_VARIABLE _err
    OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(NOT _rc EQUAL 0)
    message(FATAL_ERROR "pyscheduler: cannot run the Python '${hint}': ${_err}")
  endif()
  string(REPLACE "\n" ";" _out "${_out}")
  list(GET _out 0 _exe)
  list(GET _out 1 _version)
  if(_version VERSION_LESS 3.9)
    message(FATAL_ERROR "pyscheduler: ${_exe} is Python ${_version}; 3.9 or newer is required")
  endif()
  set(${out_var} "${_exe}" PARENT_SCOPE)
endfunction()

# pyscheduler_pin_python3_cache(<executable>)
# FindPython caches what it found; when the chosen interpreter changes in an existing build
# directory, forget those entries so headers and libpython follow the new interpreter.
function(pyscheduler_pin_python3_cache exe)
  if(DEFINED CACHE{_PYSCHEDULER_PYTHON_USED} AND NOT "$CACHE{_PYSCHEDULER_PYTHON_USED}" STREQUAL "${exe}")
    message(STATUS "pyscheduler: Python changed ($CACHE{_PYSCHEDULER_PYTHON_USED} -> ${exe}); forgetting the cached Python3 and pybind11 entries")
    get_cmake_property(_cached CACHE_VARIABLES)
    foreach(_var IN LISTS _cached)
      if(_var MATCHES "^_?Python3_" OR _var STREQUAL "pybind11_DIR")
        unset(${_var} CACHE)
      endif()
    endforeach()
  endif()
  set(_PYSCHEDULER_PYTHON_USED "${exe}" CACHE INTERNAL "The Python of the last configure")
endfunction()

# pyscheduler_pybind11_cmakedir(<python> <out_var>)
# Where the Python's pybind11 package keeps its CMake config (empty when not installed).
function(pyscheduler_pybind11_cmakedir python out_var)
  execute_process(
    COMMAND "${python}" -m pybind11 --cmakedir
    OUTPUT_VARIABLE _dir RESULT_VARIABLE _rc ERROR_QUIET
    OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(_rc EQUAL 0 AND IS_DIRECTORY "${_dir}")
    set(${out_var} "${_dir}" PARENT_SCOPE)
  else()
    set(${out_var} "" PARENT_SCOPE)
  endif()
endfunction()

# pyscheduler_add_subdirectory_if_present(<dir>)
# Adds <dir> when it has a CMakeLists.txt; says so when it does not (the tree grows
# while several people work on it), so a missing layer is visible, not silent.
function(pyscheduler_add_subdirectory_if_present dir)
  if(EXISTS "${PROJECT_SOURCE_DIR}/${dir}/CMakeLists.txt")
    add_subdirectory("${dir}")
  else()
    message(STATUS "pyscheduler: ${dir}/CMakeLists.txt does not exist; ${dir} skipped")
  endif()
endfunction()
