"""Python functions the test suites of every layer call."""
import os
import sys
import threading
import time


def identity(items):
    return list(items)


def add(a, b):
    return a + b


def concat(a, b):
    return a + b


def double(items):
    return [x * 2 for x in items]


def batch_sizes(items):
    """Each item gets the size of the batch it travelled in."""
    return [len(items)] * len(items)


def thread_name(items):
    return [threading.current_thread().name] * len(items)


def raise_value_error(items):
    raise ValueError("bad batch of %d" % len(items))


def raise_for_negative(items):
    if any(x < 0 for x in items):
        raise ValueError("negative item")
    return list(items)


def wrong_length(items):
    return list(items) + [None]


def not_a_sequence(items):
    return 42


def returns_tuple(items):
    return tuple(x + 1 for x in items)


def returns_generator(items):
    return (x for x in items)


def call_sys_exit(items):
    sys.exit(3)


def raise_keyboard_interrupt(items):
    raise KeyboardInterrupt()


def sleep_ms(items):
    """Each item is a number of milliseconds; sleeps (releasing the GIL) for their sum."""
    time.sleep(sum(items) / 1000.0)
    return list(items)


def sleep_each_10ms(items):
    time.sleep(0.010 * len(items))
    return list(items)


def spin(items):
    """CPU-bound pure Python: each item is a loop count."""
    out = []
    for n in items:
        acc = 0
        for i in range(n):
            acc = (acc * 31 + i) % 1000003
        out.append(acc)
    return out


def sync_sleep(seconds):
    time.sleep(seconds)
    return seconds


def signal_then_sleep(fd, seconds):
    """Writes one byte to the file descriptor `fd`, then sleeps (releasing the GIL): the
    byte tells a test that the call is inside Python, instead of a guessed sleep."""
    os.write(fd, b"s")
    time.sleep(seconds)
    return seconds


def raise_error(message):
    raise RuntimeError(message)


def sys_path():
    return list(sys.path)


def cwd():
    return os.getcwd()


class Model:
    scale = 3

    @classmethod
    def predict(cls, items):
        return [x * cls.scale for x in items]


not_callable = 7
