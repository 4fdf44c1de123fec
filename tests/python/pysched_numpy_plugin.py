"""Used by tests/c/plugin_numpy.c: a module whose import pulls in numpy's C extensions,
which only works when libpython's symbols are global in the process."""
import numpy as np


def sums(items):
    """Each item is a list of integers; returns each list's sum computed by numpy."""
    return [int(np.asarray(x, dtype=np.int64).sum()) for x in items]


def numpy_version():
    return np.__version__


def torch_info():
    """Imports torch (more C extensions, and CUDA where present) and sums on its device."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    total = int(torch.arange(101, device=device).sum().item())
    assert total == 5050, total
    return "torch %s on %s" % (torch.__version__, device)
