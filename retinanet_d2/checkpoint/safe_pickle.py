"""Loading a weights pickle without running code from it.

``pickle.load`` calls whatever callable a pickle names (``os.system`` through ``__reduce__``, say), so
a downloaded ``.pkl`` could run code the moment it is loaded. Weights pickles (detectron2's model zoo,
Detectron/Caffe2, ImageNet backbones) hold only containers, strings, numbers and NumPy arrays; this
unpickler admits the globals those need and refuses every other one before calling anything.
"""
import importlib
import importlib.util
import pickle
from typing import Any, BinaryIO

# (module, name) of every global a weights pickle may name. NumPy 2 moved numpy.core to numpy._core;
# pickles written by either spelling are read through the installed one.
ALLOWED_GLOBALS = frozenset(
    {
        ("collections", "OrderedDict"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        # Python 3 pickles of Python 2 byte strings (protocol 2): _codecs.encode(text, "latin1").
        ("_codecs", "encode"),
    }
)


class ForbiddenGlobalError(pickle.UnpicklingError):
    """A pickle names a global that weights files never need; nothing of it was called."""


class WeightsUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only ALLOWED_GLOBALS and raises ForbiddenGlobalError,
    naming the global, for any other (before it is imported or called)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise ForbiddenGlobalError(
                f"the pickle needs the global {module}.{name}, which weights files never hold "
                "(refused without calling it: a pickle that names it may run code when loaded)"
            )
        if module == "numpy.core.multiarray" and importlib.util.find_spec("numpy._core"):
            module = "numpy._core.multiarray"  # NumPy >= 2 (its numpy.core is a deprecated alias)
        return getattr(importlib.import_module(module), name)


def load_weights_pickle(file: BinaryIO, encoding: str = "latin1") -> Any:
    """The object in a weights pickle read from ``file``; ForbiddenGlobalError if it needs any
    global outside ALLOWED_GLOBALS. ``encoding`` decodes Python 2 strings (latin1 keeps NumPy's
    raw bytes intact)."""
    return WeightsUnpickler(file, encoding=encoding).load()

