"""A Python program that exits with a sub-interpreter replica handler alive and items
queued on it (CPython 3.12+). pyscheduler's exit hook must end the replicas before the
interpreter finalizes (3.12 aborts with "remaining subinterpreters" otherwise) and
resolve every item's future: the one inside Python runs to its end, the queued ones fail
with PYSCHED_SHUT_DOWN. Usage: python subinterp_exit.py /path/to/libpyscheduler.so"""
import atexit
import ctypes
import os
import sys
import time

PYSCHED_OK, PYSCHED_SHUT_DOWN, PYSCHED_INTERNAL = 0, 8, 9

lib = ctypes.CDLL(sys.argv[1])  # calls release the GIL
vp = ctypes.c_void_p


class HandlerOptions(ctypes.Structure):
    _fields_ = [("batch_size", ctypes.c_uint32), ("prefetch_depth", ctypes.c_uint32),
                ("max_batch_delay_us", ctypes.c_uint64), ("max_queue", ctypes.c_uint64),
                ("full_policy", ctypes.c_uint32), ("block_timeout_us", ctypes.c_uint64),
                ("name", ctypes.c_char_p), ("concurrency", ctypes.c_uint32),
                ("subinterpreters", ctypes.c_uint32),
                # Room for fields a later version may append (the defaults fill them).
                ("_reserved", ctypes.c_uint8 * 256)]


class Item(ctypes.Structure):
    _fields_ = [("user_data", vp), ("commit", vp), ("prepare", vp), ("complete", vp),
                ("drop", vp), ("timeout_us", ctypes.c_uint64)]


lib.pysched_manager_new.argtypes = [vp, ctypes.POINTER(vp), ctypes.POINTER(vp)]
lib.pysched_manager_add_path.argtypes = [vp, ctypes.c_char_p, ctypes.POINTER(vp)]
lib.pysched_manager_load.argtypes = [vp, ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(HandlerOptions),
                                     ctypes.POINTER(vp), ctypes.POINTER(vp)]
lib.pysched_handler_options_default.restype = HandlerOptions
lib.pysched_handler_queue.argtypes = [vp, ctypes.POINTER(Item), ctypes.POINTER(vp), ctypes.POINTER(vp)]
lib.pysched_future_is_ready.argtypes = [vp]
lib.pysched_future_is_ready.restype = ctypes.c_bool
lib.pysched_future_take.argtypes = [vp, ctypes.POINTER(vp), ctypes.POINTER(vp)]
lib.pysched_error_message.argtypes = [vp]
lib.pysched_error_message.restype = ctypes.c_char_p

futures = []


def check():
    """Runs after pyscheduler's exit hook (atexit runs hooks in reverse order)."""
    ready = sum(1 for f in futures if lib.pysched_future_is_ready(f))
    ran = shut_down = 0
    for f in futures:
        result, err = vp(), vp()
        status = lib.pysched_future_take(f, ctypes.byref(result), ctypes.byref(err))
        if status == PYSCHED_SHUT_DOWN:
            shut_down += 1
        elif status == PYSCHED_INTERNAL and b"not kept" in lib.pysched_error_message(err):
            ran += 1  # a replica's result stays in its interpreter
        else:
            print("unexpected outcome", status, err.value and lib.pysched_error_message(err))
    print("exit check: %d ready, %d ran, %d shut down" % (ready, ran, shut_down), flush=True)


atexit.register(check)

manager, err = vp(), vp()
assert lib.pysched_manager_new(None, ctypes.byref(manager), ctypes.byref(err)) == PYSCHED_OK
here = os.path.dirname(os.path.abspath(__file__)).encode()
assert lib.pysched_manager_add_path(manager, here, ctypes.byref(err)) == PYSCHED_OK
options = lib.pysched_handler_options_default()
options.subinterpreters = 1
handler = vp()
rc = lib.pysched_manager_load(manager, b"subinterp_testmod", b"sleep_ms", ctypes.byref(options),
                              ctypes.byref(handler), ctypes.byref(err))
assert rc == PYSCHED_OK, lib.pysched_error_message(err)

# Each item's object is its user_data as an int (the milliseconds sleep_ms sleeps).
commit = ctypes.cast(ctypes.pythonapi.PyLong_FromVoidPtr, vp).value


def queue(ms):
    item = Item(user_data=ms, commit=commit)
    future = vp()
    assert lib.pysched_handler_queue(handler, ctypes.byref(item), ctypes.byref(future), None) == PYSCHED_OK
    futures.append(future)


queue(1000)
time.sleep(0.1)  # the first batch enters Python; the others cannot start before exit
for _ in range(20):
    queue(300)
print("exiting with the handler alive", flush=True)
