"""Functions the tensor-handler tests of every layer bind: numpy in, numpy out."""
import time

import numpy as np

W = (np.arange(64 * 16, dtype=np.float32).reshape(64, 16) % 7 - 3) / 8


def linear(x):
    """(B, 64) float32 -> (B, 16) float32: x @ W."""
    return np.asarray(x) @ W


def echo(x):
    """Returns its input view itself (read back through the buffer protocol)."""
    return x


def add_and_sum(a, b):
    """(B, 3) f64, (B, 3) f64 -> (B, 3) f64 a+b, (B,) f64 row sums of a."""
    a = np.asarray(a)
    b = np.asarray(b)
    return a + b, a.sum(axis=1)


def batch_size(x):
    """Any input -> (B,) int64: each item gets the size of its batch."""
    n = len(x)
    return np.full((n,), n, dtype=np.int64)


def wrong_rows(x):
    return np.zeros((len(x) + 1, 16), dtype=np.float32)


def wrong_dtype(x):
    return np.zeros((len(x), 16), dtype=np.float64)


def wrong_item_shape(x):
    return np.zeros((len(x), 15), dtype=np.float32)


def not_a_tensor(x):
    return [0.0] * len(x)


def non_contiguous(x):
    """(B, 64) -> (B, 16) float32 as a strided view: every 4th column of x."""
    return np.asarray(x)[:, ::4]


def raises(x):
    raise ValueError("bad batch of %d" % len(x))


def two_outputs_one_given(a, b):
    return np.asarray(a)


kept = []


def keep_input(x):
    """Keeps a view of every batch; returns x[:, 0] and checks the earlier views."""
    v = np.asarray(x)
    for old, copy in kept:
        if not np.array_equal(old, copy):
            raise AssertionError("a kept input was overwritten")
    kept.append((v, v.copy()))
    return v[:, 0].copy()


def via_dlpack(x):
    """Imports the input through DLPack (np.from_dlpack) rather than the buffer protocol."""
    return np.from_dlpack(x) * 2


# Calls of sleep_echo so far (tests wait for a call to have started).
calls = 0


def sleep_echo(x):
    """(B,) int64 -> (B,) int64: returns x after sleeping max(x) ms (the GIL released)
    when that is positive; counts the call first."""
    global calls
    calls += 1
    v = np.array(x)
    time.sleep(max(int(v.max()), 0) / 1000.0)
    return v


def sleep_size_base(x):
    """(B,) int64 -> (B,) int64 batch sizes, (B,) int64 the address of the batch's first
    row: sleeps max(x) ms first (the GIL released), counting the call in `calls`."""
    global calls
    calls += 1
    v = np.asarray(x)
    time.sleep(max(int(v.max()), 0) / 1000.0)
    n = len(v)
    base = v.__array_interface__["data"][0]
    return np.full((n,), n, dtype=np.int64), np.full((n,), base, dtype=np.int64)


def half(x):
    """(B, 4) float16 -> (B, 4) float16: x / 2 computed in float16 (numpy format 'e')."""
    v = np.asarray(x)
    assert v.dtype == np.float16, v.dtype
    return v / np.float16(2)


# ---- used by the C++ tests (tests/cpp/test_tensor.cpp) ------------------------------


def twice(x):
    """Any dtype and item shape -> the same: 2 * x, in x's dtype (uint8 wraps)."""
    a = np.asarray(x)
    return (a * 2).astype(a.dtype)


def twice_f16(x):
    """(B, n) float16 -> (B, n) float16: 2 * x, read through DLPack."""
    a = np.from_dlpack(x)
    assert a.dtype == np.float16, a.dtype
    return a * np.float16(2)


def item_sums(x):
    """(B, *item) any dtype -> (B,) float64: the sum of each item."""
    a = np.asarray(x)
    return a.reshape(len(a), -1).sum(axis=1, dtype=np.float64)


def mixed(a, b, c):
    """(B, 2, 3) f32, (B,) i64, (B, 4) u8 -> (B, 2, 3) f32 a * b, (B,) f64 sum of c,
    (B, 4) i32 c + b."""
    a, b, c = np.asarray(a), np.asarray(b), np.asarray(c)
    return (
        (a * b[:, None, None]).astype(np.float32),
        c.sum(axis=1, dtype=np.float64),
        c.astype(np.int32) + b[:, None].astype(np.int32),
    )


def no_outputs(x):
    """A function whose signature has no outputs: counts the items it saw."""
    seen.append(len(x))


seen = []


def scalar_to_tuple_of_one(x):
    """One output returned as a 1-tuple (allowed)."""
    return (np.asarray(x) * 2,)


def too_few_outputs(a, b, c):
    return np.asarray(a), np.asarray(b).astype(np.float64)


def slow_twice(x):
    """twice, after 20 ms: keeps the worker busy so that a bounded queue fills."""
    import time

    time.sleep(0.02)
    return twice(x)
