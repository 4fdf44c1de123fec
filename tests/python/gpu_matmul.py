"""Python side of the GPU verification (tests/cpp/gpu) and benchmark (benches/gpu).

Items arrive as DLPack producers made in C++: legacy "dltensor" capsules
(createCudaMatrixDlpack + toDlpackCapsule, the original style) or pyscheduler.CudaTensor
objects with __dlpack__ (staged uploads). torch.from_dlpack accepts both.
"""
import torch


def has_cuda():
    return torch.cuda.is_available()


def describe():
    return "torch %s, CUDA %s, %s" % (
        torch.__version__,
        torch.version.cuda,
        torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU",
    )


def to_nested_list(x):
    """Any DLPack producer -> nested Python list of its values (copied to the host)."""
    return torch.from_dlpack(x).cpu().tolist()


def matmul(a, b):
    return (torch.from_dlpack(a) @ torch.from_dlpack(b)).cpu().tolist()


def matmul_batch(items):
    """Each item is a pair (a, b); returns one nested list per item."""
    return [matmul(a, b) for a, b in items]


def matmul_batch_sum(items):
    """Each item is a pair (a, b) of equal shapes; returns sum(a @ b) per item: one
    batched matmul, one device sync per batch (results travel back as one small tensor)."""
    a = torch.stack([torch.from_dlpack(a) for a, _ in items])
    b = torch.stack([torch.from_dlpack(b) for _, b in items])
    # One batched matmul and one reduction for the whole batch.
    return torch.bmm(a, b).sum(dim=(1, 2), dtype=torch.float64).tolist()


def matmul_on_side_stream(a, b):
    """Imports and multiplies on a non-default stream: torch passes that stream to
    __dlpack__, which must order it after the upload (no host synchronization)."""
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        out = torch.from_dlpack(a) @ torch.from_dlpack(b)
    stream.synchronize()
    return out.cpu().tolist()


def consume_and_drop(x):
    """Imports, touches and drops a tensor; returns its sum."""
    return float(torch.from_dlpack(x).double().sum().item())


class _Recorder:
    """Forwards the DLPack protocol to `inner`, recording what the consumer asked for and
    the name of the capsule it got."""

    def __init__(self, inner):
        self.inner = inner
        self.kwargs = None
        self.capsule_repr = None

    def __dlpack_device__(self):
        return self.inner.__dlpack_device__()

    def __dlpack__(self, **kwargs):
        self.kwargs = kwargs
        capsule = self.inner.__dlpack__(**kwargs)
        self.capsule_repr = repr(capsule)
        return capsule


def dlpack_protocol_problems(obj, ordinal):
    """Checks a pyscheduler.CudaTensor against the DLPack Python protocol as torch uses
    it; returns a list of problems (empty when all is well)."""
    problems = []
    if tuple(obj.__dlpack_device__()) != (2, ordinal):
        problems.append("__dlpack_device__ is %r" % (obj.__dlpack_device__(),))
    legacy = obj.__dlpack__()
    if '"dltensor"' not in repr(legacy):
        problems.append("__dlpack__() gave %r" % legacy)
    versioned = obj.__dlpack__(max_version=(1, 0))
    if '"dltensor_versioned"' not in repr(versioned):
        problems.append("__dlpack__(max_version=(1, 0)) gave %r" % versioned)
    del legacy, versioned  # unconsumed: their destructors release their shares

    # What torch asks for, and that the capsule kind follows max_version.
    rec = _Recorder(obj)
    t = torch.from_dlpack(rec)
    asked = rec.kwargs or {}
    wants_versioned = asked.get("max_version") is not None and tuple(asked["max_version"])[0] >= 1
    got_versioned = '"used_dltensor_versioned"' in rec.capsule_repr or '"dltensor_versioned"' in rec.capsule_repr
    print("torch.from_dlpack called __dlpack__(%s) and got %s" % (
        ", ".join("%s=%r" % kv for kv in sorted(asked.items())), rec.capsule_repr))
    if wants_versioned != got_versioned:
        problems.append("torch asked %r, got %s" % (asked, rec.capsule_repr))
    if "stream" not in asked:
        problems.append("torch passed no stream: %r" % (asked,))

    # A consumer on a side stream, with a legacy capsule.
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        t2 = torch.from_dlpack(obj)
    side.synchronize()
    t3 = torch.from_dlpack(obj.__dlpack__(stream=side.cuda_stream))
    if not (t.data_ptr() == t2.data_ptr() == t3.data_ptr() == obj.data_ptr):
        problems.append("exports do not share memory")
    if not torch.equal(t, t2) or not torch.equal(t, t3):
        problems.append("exports differ")
    for kwargs, error in (({"dl_device": (1, 0)}, BufferError), ({"copy": True}, BufferError),
                          ({"stream": 0}, ValueError)):
        try:
            obj.__dlpack__(**kwargs)
            problems.append("__dlpack__(%r) did not raise" % (kwargs,))
        except error:
            pass
    return problems


def empty_cache():
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
