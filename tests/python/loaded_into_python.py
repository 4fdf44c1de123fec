"""pyscheduler loaded into a running Python program (ctypes): it must adopt this
interpreter, and its calls must work with the GIL held by the caller (PyDLL) and
released (CDLL). Usage: python loaded_into_python.py /path/to/libpyscheduler.so"""
import ctypes
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

lib_path = sys.argv[1]
held = ctypes.PyDLL(lib_path)      # calls keep the GIL held
released = ctypes.CDLL(lib_path)   # calls release the GIL

for lib in (held, released):
    lib.pysched_manager_new.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_void_p)]
    lib.pysched_manager_load.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p,
                                         ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_void_p)]
    lib.pysched_manager_adopted.argtypes = [ctypes.c_void_p]
    lib.pysched_manager_adopted.restype = ctypes.c_bool
    lib.pysched_handler_call.argtypes = [ctypes.c_void_p, ctypes.py_object, ctypes.c_void_p,
                                         ctypes.POINTER(ctypes.py_object), ctypes.POINTER(ctypes.c_void_p)]
    lib.pysched_handler_free.argtypes = [ctypes.c_void_p]
    lib.pysched_manager_free.argtypes = [ctypes.c_void_p]
    lib.pysched_error_message.argtypes = [ctypes.c_void_p]
    lib.pysched_error_message.restype = ctypes.c_char_p

manager = ctypes.c_void_p()
err = ctypes.c_void_p()
assert held.pysched_manager_new(None, ctypes.byref(manager), ctypes.byref(err)) == 0
assert held.pysched_manager_adopted(manager), "did not adopt the running interpreter"
handler = ctypes.c_void_p()
rc = held.pysched_manager_load(manager, b"pysched_testmod", b"add", None, ctypes.byref(handler), ctypes.byref(err))
assert rc == 0, held.pysched_error_message(err)
for lib in (held, released):
    out = ctypes.py_object()
    rc = lib.pysched_handler_call(handler, (3000, -1234), None, ctypes.byref(out), ctypes.byref(err))
    assert rc == 0, lib.pysched_error_message(err)
    assert out.value == 1766, out.value
held.pysched_handler_free(handler)
held.pysched_manager_free(manager)
print("adopted ok")
