"""The batched SVD example of the original README: generate random matrices, then
compute their numerical rank, many matrices per Python call."""
import numpy as np


def generate(items):
    return [np.random.rand(n, n) for n in items]


def compute_svd_rank(matrices):
    def svd_one(M):
        S = np.linalg.svd(M, compute_uv=False)
        tol = np.max(M.shape) * np.spacing(S.max())
        return int(np.sum(S > tol))

    return [svd_one(M) for M in matrices]
