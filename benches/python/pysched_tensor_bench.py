"""Python side of the tensor rows of pyscheduler_bench (benches/cpp/tensor.cpp, issue
12): one small numpy model, `x @ W` with W 64x16 float32, reached three ways.

Kept apart from pysched_bench.py so that the other rows do not need numpy. W's entries
and the benchmark's inputs are small multiples of powers of two, so every product and
every partial sum is exact in float32 whatever order the BLAS adds them in: the C++
side checks each item's 16 scores for equality with its own x @ W.
"""
import numpy as np

FEATURES = 64
SCORES = 16

# W[k, j] = ((16 k + j) % 7 - 3) / 8: the C++ side computes the same.
W = ((np.arange(FEATURES * SCORES).reshape(FEATURES, SCORES) % 7 - 3) / 8).astype(np.float32)


def score(x):
    """Tensor handler (and the floor): x is a (B, 64) float32 batch (a BatchTensor, or an
    ndarray for the floor); np.asarray is a zero-copy view. Returns (B, 16) float32."""
    return np.asarray(x) @ W


def score_list(items):
    """The list-of-objects path (queue_invoke): one (64,) float32 array per item; the
    function stacks them and returns one (16,) row per item, as queue_invoke requires."""
    return list(np.stack(items) @ W)
