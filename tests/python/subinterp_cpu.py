"""A CPU-bound pure-Python handler for the sub-interpreter benchmark: each item is a
loop count; no C extension, no I/O, no GIL release."""


def work(n):
    acc = 0
    for i in range(n):
        acc = (acc * 31 + i) % 1000003
    return acc


def invoke(items):
    return [work(n) for n in items]
