"""Python side of tests/cpp/test_compat.cpp: code written for the original library.

`consume` does to "dltensor" capsules what torch.from_dlpack does: it takes the tensor,
renames the capsule "used_dltensor" (so that the capsule's own destructor must leave the
tensor alone) and calls the tensor's deleter once it is done with it. The test's capsule
helper, in the original's style, then leaves a ValueError set when the capsule dies.

`watch_unraisable` replaces sys.unraisablehook to record what pyscheduler reports.
"""
import ctypes
import sys


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", _DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", _DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


class _DLManagedTensor(ctypes.Structure):
    pass


_Deleter = ctypes.CFUNCTYPE(None, ctypes.POINTER(_DLManagedTensor))
_DLManagedTensor._fields_ = [
    ("dl_tensor", _DLTensor),
    ("manager_ctx", ctypes.c_void_p),
    ("deleter", _Deleter),
]

_capsule_get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_get_pointer.restype = ctypes.c_void_p
_capsule_get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
_capsule_set_name = ctypes.pythonapi.PyCapsule_SetName
_capsule_set_name.restype = ctypes.c_int
_capsule_set_name.argtypes = [ctypes.py_object, ctypes.c_char_p]

# A capsule keeps the pointer to its name: these bytes live as long as the module.
_DLTENSOR = b"dltensor"
_USED_DLTENSOR = b"used_dltensor"


def _consume_one(capsule):
    """Sum of a CPU float64 DLPack matrix; consumes the capsule as torch does."""
    address = _capsule_get_pointer(capsule, _DLTENSOR)
    _capsule_set_name(capsule, _USED_DLTENSOR)
    managed = ctypes.cast(address, ctypes.POINTER(_DLManagedTensor))
    tensor = managed.contents.dl_tensor
    assert tensor.device.device_type == 1 and tensor.dtype.code == 2 and tensor.dtype.bits == 64
    count = 1
    for i in range(tensor.ndim):
        count *= tensor.shape[i]
    values = ctypes.cast(tensor.data, ctypes.POINTER(ctypes.c_double))
    total = float(sum(values[i] for i in range(count)))
    managed.contents.deleter(managed)
    return total


def consume(capsules):
    """The batch entry point: one sum per capsule."""
    return [_consume_one(c) for c in capsules]


def consume_single(capsule):
    """The synchronous entry point."""
    return _consume_one(capsule)


def ping(x):
    return x


def plus_one(items):
    return [x + 1 for x in items]


_seen = []


def watch_unraisable():
    """Records every unraisable report from now on (and forgets earlier ones)."""
    del _seen[:]
    sys.unraisablehook = lambda u: _seen.append((u.exc_type.__name__, str(u.exc_value), str(u.object)))


def unraisable():
    """[(exception type name, message, context)] reported since watch_unraisable()."""
    return list(_seen)
