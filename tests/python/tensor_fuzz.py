"""The Python side of the tensor handlers' property test (tests/rust/tensor_props.rs):
a function per random signature that, seeded per batch, returns the right outputs, the
right values in another form (strided, Fortran order, DLPack only), or something wrong
(wrong leading dimension, dtype or item shape, not a tensor, too few outputs), or
raises. Every batch is logged, so the test can check that each item was in exactly one
call and that the failed items are exactly those of the failed batches.

The right outputs are a function of each item's own input bytes: with `key` the sum of
every byte of the item's inputs, element `e` (C order) of output `j` is
`(key + 3 * j + e) % 97`, which every dtype represents exactly."""
import random

import numpy as np

DTYPES = {
    "float32": np.float32,
    "float64": np.float64,
    "int32": np.int32,
    "int64": np.int64,
    "uint8": np.uint8,
    "float16": np.float16,
}

# Modes whose result must be accepted, and those whose result must fail every item.
GOOD = ("right", "strided", "fortran", "dlpack_only")
BAD = ("wrong_rows", "wrong_dtype", "wrong_item_shape", "not_a_tensor", "too_few", "raises")

# (function name, batch number, mode, B) for every call.
log = []


class FuzzError(Exception):
    pass


class DLPackOnly:
    """Exposes an array through __dlpack__ only (no buffer protocol)."""

    def __init__(self, array):
        self._array = array

    def __dlpack__(self, **kwargs):
        return self._array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._array.__dlpack_device__()


def keys(inputs):
    """Each item's key: the sum of the bytes of all its inputs."""
    total = None
    for x in inputs:
        a = np.ascontiguousarray(np.asarray(x))
        b = len(a)
        s = a.reshape(b, -1).view(np.uint8).sum(axis=1, dtype=np.int64)
        total = s if total is None else total + s
    return total


def right_outputs(inputs, outputs):
    k = keys(inputs)
    b = len(k)
    result = []
    for j, (dtype, shape) in enumerate(outputs):
        n = int(np.prod(shape, dtype=np.int64))
        e = np.arange(n, dtype=np.int64)
        values = (k[:, None] + 3 * j + e[None, :]) % 97
        result.append(values.astype(DTYPES[dtype]).reshape((b,) + tuple(shape)))
    return result


def _other_dtype(dtype):
    others = [d for d in ("float32", "float64", "int32", "int64", "uint8") if d != dtype]
    return DTYPES[others[len(dtype) % len(others)]]


def _strided(a):
    big = np.zeros(a.shape + (2,), dtype=a.dtype)
    big[..., 1] = a
    return big[..., 1]


def register(name, outputs, seed, bad_weight):
    """Defines `name(*inputs)` for outputs [(dtype, shape), ...]; a batch goes wrong with
    probability `bad_weight` (0..1), its mode drawn from a Random(seed, batch number)."""
    batches = [0]

    def fn(*inputs):
        n = batches[0]
        batches[0] += 1
        rng = random.Random(seed * 1000003 + n)
        b = len(inputs[0])
        if rng.random() < bad_weight:
            modes = [m for m in BAD if m != "too_few" or len(outputs) >= 2]
            if not outputs:
                modes = ["raises"]
        else:
            modes = list(GOOD)
            if not outputs:
                modes = ["right"]
        mode = rng.choice(modes)
        log.append((name, n, mode, b))
        if mode == "raises":
            raise FuzzError("fuzz batch %d of %d items" % (n, b))
        outs = right_outputs(inputs, outputs)
        if not outputs:
            return None
        j = rng.randrange(len(outs))
        if mode == "strided":
            outs[j] = _strided(outs[j])
        elif mode == "fortran":
            outs[j] = np.asfortranarray(outs[j]) if outs[j].ndim >= 2 else _strided(outs[j])
        elif mode == "dlpack_only":
            outs[j] = DLPackOnly(outs[j])
        elif mode == "wrong_rows":
            a = outs[j]
            extra = np.zeros((1,) + a.shape[1:], dtype=a.dtype)
            outs[j] = a[:-1] if (b > 1 and rng.random() < 0.5) else np.concatenate([a, extra])
        elif mode == "wrong_dtype":
            outs[j] = outs[j].astype(_other_dtype(outputs[j][0]))
        elif mode == "wrong_item_shape":
            a = outs[j]
            outs[j] = np.zeros((b,) + a.shape[1:] + (2,), dtype=a.dtype)
        elif mode == "not_a_tensor":
            outs[j] = outs[j].tolist() if rng.random() < 0.5 else "not a tensor"
        elif mode == "too_few":
            outs = outs[:-1]
        if len(outputs) == 1 and mode != "too_few":
            return outs[0] if rng.random() < 0.7 else (outs[0],)
        return tuple(outs)

    fn.__name__ = name
    globals()[name] = fn
