"""Python side of examples/cpp/tensor_model.cpp: a 2-layer MLP in numpy with fixed
weights, served through a tensor handler. `predict` is called once per batch with one
(B, 16) float32 batch tensor and returns the (B, 4) float32 scores of the whole batch.

The weights follow a formula, so that the C++ side can compute the same model as a
reference without reading them from here."""
import numpy as np

IN, HIDDEN, OUT = 16, 32, 4

_i, _j = np.meshgrid(np.arange(IN), np.arange(HIDDEN), indexing="ij")
W1 = (((_i * 7 + _j * 3) % 11 - 5) / 10).astype(np.float32)  # (16, 32)
b1 = ((np.arange(HIDDEN) % 5 - 2) / 10).astype(np.float32)  # (32,)
_h, _o = np.meshgrid(np.arange(HIDDEN), np.arange(OUT), indexing="ij")
W2 = (((_h * 5 + _o * 2) % 7 - 3) / 10).astype(np.float32)  # (32, 4)
b2 = (np.arange(OUT) / 10).astype(np.float32)  # (4,)


def predict(x):
    """(B, 16) float32 -> (B, 4) float32: relu(x @ W1 + b1) @ W2 + b2."""
    hidden = np.maximum(np.asarray(x) @ W1 + b1, 0)
    return hidden @ W2 + b2
