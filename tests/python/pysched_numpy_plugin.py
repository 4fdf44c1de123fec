"""Used by tests/c/plugin_numpy.c: a module whose import pulls in numpy's C extensions,
which only works when libpython's symbols are global in the process."""
import numpy as np


def sums(items):
    """Each item is a list of integers; returns each list's sum computed by numpy."""
    return [int(np.asarray(x, dtype=np.int64).sum()) for x in items]


def numpy_version():
    return np.__version__
