# Install rules: the libraries, the C header, the C++ headers, the CMake package
# (lib/cmake/pyscheduler: config, version, targets) and lib/pkgconfig/pyscheduler.pc.
include_guard(GLOBAL)
include(CMakePackageConfigHelpers)

set(PYSCHEDULER_INSTALL_CMAKEDIR "${CMAKE_INSTALL_LIBDIR}/cmake/pyscheduler"
    CACHE STRING "Where the CMake package files are installed (relative to the prefix)")

# The cdylib keeps its RUNPATH to libpython's directory (set by build.rs), so it loads
# the interpreter it was built against without LD_LIBRARY_PATH.
install(PROGRAMS "${PYSCHEDULER_SHARED_LIBRARY}" DESTINATION "${CMAKE_INSTALL_LIBDIR}")
install(FILES "${PYSCHEDULER_STATIC_LIBRARY}" DESTINATION "${CMAKE_INSTALL_LIBDIR}")
install(FILES "${PROJECT_SOURCE_DIR}/include/pyscheduler.h" DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}")
if(IS_DIRECTORY "${PROJECT_SOURCE_DIR}/cpp/include/pyscheduler")
  install(DIRECTORY "${PROJECT_SOURCE_DIR}/cpp/include/pyscheduler"
          DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}"
          FILES_MATCHING PATTERN "*.hpp" PATTERN "*.h")
else()
  message(WARNING "pyscheduler: cpp/include/pyscheduler does not exist; the C++ headers are not installed")
endif()

# The targets file is written by hand (cargo's outputs are IMPORTED targets here, which
# install(EXPORT) cannot export); it locates the prefix relative to its own directory, so
# the installed tree can be moved.
file(RELATIVE_PATH PYSCHEDULER_CMAKEDIR_TO_PREFIX
     "/prefix/${PYSCHEDULER_INSTALL_CMAKEDIR}" "/prefix")
string(REGEX REPLACE "/$" "" PYSCHEDULER_CMAKEDIR_TO_PREFIX "${PYSCHEDULER_CMAKEDIR_TO_PREFIX}")
string(JOIN ";" PYSCHEDULER_STATIC_SYSTEM_LIBS_STR ${PYSCHEDULER_STATIC_SYSTEM_LIBS})
configure_file("${PROJECT_SOURCE_DIR}/cmake/pyschedulerTargets.cmake.in"
               "${PROJECT_BINARY_DIR}/pyschedulerTargets.cmake" @ONLY)
configure_package_config_file(
  "${PROJECT_SOURCE_DIR}/cmake/pyschedulerConfig.cmake.in"
  "${PROJECT_BINARY_DIR}/pyschedulerConfig.cmake"
  INSTALL_DESTINATION "${PYSCHEDULER_INSTALL_CMAKEDIR}")
# 0.x: minor versions may break the API, so only the same major.minor is compatible.
write_basic_package_version_file(
  "${PROJECT_BINARY_DIR}/pyschedulerConfigVersion.cmake"
  COMPATIBILITY SameMinorVersion)
install(FILES
  "${PROJECT_BINARY_DIR}/pyschedulerConfig.cmake"
  "${PROJECT_BINARY_DIR}/pyschedulerConfigVersion.cmake"
  "${PROJECT_BINARY_DIR}/pyschedulerTargets.cmake"
  DESTINATION "${PYSCHEDULER_INSTALL_CMAKEDIR}")

# pkg-config for C users: the C ABI plus the Python headers and libpython that building
# PyObject arguments needs. The rpath entries make the programs find both at run time.
set(PYSCHEDULER_PC_PYTHON_CFLAGS "")
foreach(_dir IN LISTS Python3_INCLUDE_DIRS)
  string(APPEND PYSCHEDULER_PC_PYTHON_CFLAGS " -I${_dir}")
endforeach()
set(PYSCHEDULER_PC_PYTHON_LIBS "")
foreach(_lib IN LISTS Python3_LIBRARIES)
  if(IS_ABSOLUTE "${_lib}")
    get_filename_component(_libdir "${_lib}" DIRECTORY)
    get_filename_component(_libname "${_lib}" NAME)
    string(REGEX REPLACE "^lib(.*)\\.(so|a)(\\..*)?$" "\\1" _libname "${_libname}")
    string(APPEND PYSCHEDULER_PC_PYTHON_LIBS " -L${_libdir} -Wl,-rpath,${_libdir} -l${_libname}")
  elseif(NOT _lib MATCHES "^(optimized|debug|general)$")
    string(APPEND PYSCHEDULER_PC_PYTHON_LIBS " -l${_lib}")
  endif()
endforeach()
file(RELATIVE_PATH PYSCHEDULER_PCDIR_TO_PREFIX
     "/prefix/${CMAKE_INSTALL_LIBDIR}/pkgconfig" "/prefix")
string(REGEX REPLACE "/$" "" PYSCHEDULER_PCDIR_TO_PREFIX "${PYSCHEDULER_PCDIR_TO_PREFIX}")
configure_file("${PROJECT_SOURCE_DIR}/pyscheduler.pc.in" "${PROJECT_BINARY_DIR}/pyscheduler.pc" @ONLY)
install(FILES "${PROJECT_BINARY_DIR}/pyscheduler.pc" DESTINATION "${CMAKE_INSTALL_LIBDIR}/pkgconfig")
