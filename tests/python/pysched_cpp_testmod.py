"""Python functions used by the C++ wrapper tests (tests/cpp) on top of pysched_testmod."""
import sys
import threading
import time

# --- A gate: lets a test hold a handler's worker inside a Python call (without the GIL)
# while it queues more items, so that batch composition is deterministic.
_gate = threading.Event()
_gate.set()


def close_gate():
    _gate.clear()


def open_gate():
    _gate.set()


def gated(items):
    """Waits for the gate, then tags each item with the size of its batch: (x, len).

    A batch containing a negative item raises ValueError (failing the whole batch)."""
    if not _gate.wait(timeout=60):
        raise TimeoutError("the test never opened the gate")
    if any(x < 0 for x in items):
        raise ValueError("negative item in a batch of %d" % len(items))
    return [(x, len(items)) for x in items]


def batch_type(items):
    """Each item gets the type name of the batch container it arrived in."""
    return [type(items).__name__] * len(items)


def sizes(items):
    return [len(items)] * len(items)


def sleep_ms_each(items):
    """Sleeps (releasing the GIL) the sum of the items in milliseconds; echoes them."""
    time.sleep(sum(items) / 1000.0)
    return list(items)


def invoke(a, b):
    """The default entry point ("invoke")."""
    return a + b


# --- Process-wide state, to prove that every manager, handler and plugin shares one
# interpreter and one copy of this module.
value = None
counter = 0
_counter_lock = threading.Lock()


def set_value(v):
    global value
    value = v
    return v


def get_value():
    return value


def bump(items=None):
    """Increments the module's counter; with a batch, once per item."""
    global counter
    n = 1 if items is None else len(items)
    with _counter_lock:
        counter += n
        now = counter
    return now if items is None else [now] * n


def interpreter_id():
    """Identifies the interpreter: the address of its sys module."""
    return id(sys)


def sys_path_count(directory):
    return sys.path.count(directory)


def numpy_sum(n):
    """Imports numpy (a C extension) and sums range(n) with it."""
    import numpy

    return int(numpy.arange(n).sum())


def have_numpy():
    """Whether numpy is installed, found without importing it: a failing import (the
    RTLD_LOCAL "undefined symbol" ImportError) must reach the test as a failure of
    numpy_sum, not as "numpy is not installed"."""
    import importlib.util

    return importlib.util.find_spec("numpy") is not None

