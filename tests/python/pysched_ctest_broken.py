"""Fails at import time: loading it must give PYSCHED_IMPORT with the Python error."""
raise RuntimeError("pysched_ctest_broken refuses to be imported")
