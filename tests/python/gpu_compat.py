"""Python side of tests/cpp/gpu/original_style.cpp (issue 15): a program written for the
original library, whose "dltensor" capsules torch consumes (and renames "used_dltensor")."""
import torch


def sums(capsules):
    """One float64 sum per capsule (a CUDA matrix made by createCudaMatrixDlpack)."""
    return [float(torch.from_dlpack(c).sum(dtype=torch.float64)) for c in capsules]


def has_cuda():
    return torch.cuda.is_available()
