"""Python side of the examples: plain functions for synchronous calls, and batch
functions for queued calls (a batch function takes a list and returns one result per
item, in order)."""


def invoke(a, b):
    """Synchronous example of the original README: 3000 + -1234, "hello" + " world"."""
    return a + b


def square(items):
    """Batch function: one square per item."""
    return [x * x for x in items]


def shout(items):
    """Batch function: each string upper-cased with an exclamation mark."""
    return [s.upper() + "!" for s in items]
