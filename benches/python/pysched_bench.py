"""Python side of pyscheduler_bench (benches/cpp/): the functions each row calls.

Batched entry points take a list and return a list of the same length, as queue_invoke
requires. Keep them trivial: the benchmark measures pyscheduler, not Python.
"""
import time


def identity(items):
    """The queued-throughput workload (the same function as the original's benchmark)."""
    return list(items)


def add(a, b):
    """The synchronous invoke<int> workload."""
    return a + b


def sleep_10ms_per_item(items):
    """Releases the GIL for 10 ms per item: two handlers should run in parallel."""
    time.sleep(0.010 * len(items))
    return list(items)


def spin(items):
    """Busy Python work HOLDING the GIL: sum(items) loop iterations (each item carries its
    share, calibrated by the benchmark to a number of microseconds)."""
    n = 0
    for x in items:
        n += x
    acc = 0
    for i in range(n):
        acc += i
    return list(items)
