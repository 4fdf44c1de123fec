"""Python functions used by the C tests (tests/c) on top of pysched_testmod."""
import time


def sleep_or_double(items):
    """A negative item sleeps for -item milliseconds and yields -item; others double.

    Lets a test put a slow item in front of a handler's queue, so that the items queued
    behind it cannot finish while they are still being queued."""
    out = []
    for x in items:
        if x < 0:
            time.sleep(-x / 1000.0)
            out.append(-x)
        else:
            out.append(2 * x)
    return out
