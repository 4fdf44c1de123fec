"""A module that fails to import (tests/cpp: loadPythonModule must report the Python error)."""
raise RuntimeError("pysched_cpp_broken fails to import on purpose")
