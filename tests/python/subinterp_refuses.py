"""Imports a single-phase-init extension module, which CPython refuses to load in an
own-GIL sub-interpreter. The first candidate found here is imported; SKIP_REASON says
why nothing was when none exists."""
import importlib
import importlib.util

CANDIDATES = ("_testsinglephase", "_curses", "_tkinter")
REFUSED = next((n for n in CANDIDATES if importlib.util.find_spec(n) is not None), None)
SKIP_REASON = None if REFUSED else "none of %s is installed" % (CANDIDATES,)
if REFUSED:
    importlib.import_module(REFUSED)


def invoke(items):
    return list(items)
