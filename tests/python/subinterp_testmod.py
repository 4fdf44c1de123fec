"""Functions the sub-interpreter replica tests call (pure Python: importable in an
own-GIL sub-interpreter)."""
import sys
import time


def double(items):
    return [x * 2 for x in items]


def interpreter_marker(items):
    """Each item gets a number that differs between interpreters alive at the same time."""
    time.sleep(0.002)
    return [id(sys.modules)] * len(items)


def raise_for_negative(items):
    if any(x < 0 for x in items):
        raise ValueError("negative item in a batch of %d" % len(items))
    return list(items)


def wrong_length(items):
    return list(items) + [None]


def not_a_sequence(items):
    return 42


def returns_tuple(items):
    return tuple(x + 1 for x in items)


def returns_generator(items):
    return (x for x in items)


def call_sys_exit(items):
    sys.exit(3)


class Model:
    scale = 3

    @classmethod
    def predict(cls, items):
        return [x * cls.scale for x in items]


not_callable = 7


def call_each(items):
    """Each item is a callable (a C++ function bound by pybind11, say); returns its result."""
    return [f() for f in items]


def batch_size(items):
    """Each item gets the size of the batch it travelled in."""
    return [len(items)] * len(items)


def sleep_ms(items):
    """Sleeps for the sum of the items (milliseconds); returns them."""
    time.sleep(sum(items) / 1000.0)
    return list(items)
