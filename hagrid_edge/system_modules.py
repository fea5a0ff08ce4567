"""A board's compiled system modules (apt's OpenCV, picamera2): an import that fails for any reason is one line.

The common failure is a numpy 2 that pip put in a venv in front of the system's numpy 1.x, which those
modules were built against: numpy prints a page with a stack, then the import raises ImportError
(``numpy.core.multiarray failed to import``) or ValueError (``numpy.dtype size changed``, picamera2's
simplejpeg). The page is held back; the failure becomes one error naming the module, the first line of
what it raised and the fix ``hagrid-edge doctor`` gives for it.
"""

from __future__ import annotations

import contextlib
import importlib
import io
from types import ModuleType

from hagrid_edge.errors import HagridEdgeError, first_line


def import_system_module(name: str) -> ModuleType:
    """``import name``; any failure (not installed, built for another numpy, ...) is a HagridEdgeError with its fix."""
    held = io.StringIO()
    try:
        with contextlib.redirect_stderr(held):
            return importlib.import_module(name)
    except Exception as e:  # whatever a compiled module raises while it loads
        error = e
    from hagrid_edge.board import detect_board
    from hagrid_edge.commands.doctor import import_fix

    raise HagridEdgeError(f"{name} cannot be imported ({type(error).__name__}: {first_line(error)}); "
                          f"fix: {import_fix(name, error, detect_board())}")
