"""A small numpy model for the tensor-handler examples (examples/c/tensor_model.c,
examples/rust/src/bin/tensor_model.rs): a two-layer perceptron that scores 8 features
into 3 classes. Called once per batch with the features of B items as one (B, 8)
float32 batch tensor; returns the (B, 3) float32 scores and the (B,) int64 class of
each item. The weights are fixed formulas, so the C and Rust callers can check every
row against their own reference."""
import numpy as np

FEATURES, HIDDEN, CLASSES = 8, 16, 3

W1 = np.array([[((i * 5 + j * 3) % 11 - 5) / 10 for j in range(HIDDEN)] for i in range(FEATURES)],
              dtype=np.float32)
B1 = np.array([(j % 4 - 1.5) / 4 for j in range(HIDDEN)], dtype=np.float32)
W2 = np.array([[((j * 7 + k * 2) % 9 - 4) / 8 for k in range(CLASSES)] for j in range(HIDDEN)],
              dtype=np.float32)
B2 = np.array([0.25, -0.5, 0.125], dtype=np.float32)


def classify(features):
    """(B, 8) float32 -> (B, 3) float32 scores, (B,) int64 classes."""
    x = np.asarray(features)  # no copy: a view of the batch buffer
    hidden = np.maximum(x @ W1 + B1, 0)
    scores = hidden @ W2 + B2
    return scores, scores.argmax(axis=1).astype(np.int64)
