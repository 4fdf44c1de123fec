"""Python side of the CUDA tensor-handler checks and pipeline benchmark (benches/gpu).

Each function gets one batch tensor per input, already on the GPU (shape (B, 128, 128)),
and returns a CUDA tensor of shape (B,): sum(A @ B) per item.
"""
import torch


def bmm_sum(a, b):
    """One batched matmul on torch's current stream; the batch tensors' __dlpack__ makes
    that stream wait for the upload."""
    ta = torch.from_dlpack(a)
    tb = torch.from_dlpack(b)
    return torch.bmm(ta, tb).sum(dim=(1, 2))


def bmm_sum_on_handler_stream(a, b):
    """The same, with the kernels on the handler's own stream (no cross-stream wait)."""
    stream = torch.cuda.ExternalStream(a.cuda_stream)
    with torch.cuda.stream(stream):
        ta = torch.from_dlpack(a)
        tb = torch.from_dlpack(b)
        return torch.bmm(ta, tb).sum(dim=(1, 2))


def bmm_sum_on_host(a, b):
    """Returns its result on the host (a CPU tensor is accepted from a CUDA handler)."""
    return bmm_sum(a, b).cpu()


def wrong_dtype(a, b):
    return bmm_sum(a, b).double()


kept = []


def bmm_sum_keeping_inputs(a, b):
    """Keeps every batch's input tensors and checks the earlier ones were never overwritten."""
    ta = torch.from_dlpack(a)
    for old, copy in kept:
        if not torch.equal(old, copy):
            raise AssertionError("a kept CUDA input was overwritten")
    kept.append((ta, ta.clone()))
    return bmm_sum(a, b)
