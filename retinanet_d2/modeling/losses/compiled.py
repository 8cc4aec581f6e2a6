"""Running elementwise kernels through ``torch.compile``, with an eager fallback.

``run_elementwise(kernel, inputs, *args)`` compiles ``kernel`` once (``dynamic=True``: no recompiles
as image sizes change) and runs it for inputs of at least COMPILE_MIN_ELEMENTS elements; smaller
inputs, ``RETINANET_D2_COMPILE=0`` and machines where compiling fails (logged once, then never tried
again) run it eagerly. One fused loop instead of a dozen passes over (anchors x classes) tensors.
"""
import logging
import os
from typing import Callable, Dict

import torch
from torch import Tensor

COMPILE_MIN_ELEMENTS = 1 << 20


class ElementwiseCompiler:
    """The compiled versions of the kernels run so far, and whether compiling works here."""

    def __init__(self):
        self.compiled: Dict[Callable, Callable] = {}
        self.failed = False

    def enabled_for(self, inputs: Tensor) -> bool:
        return (
            inputs.numel() >= COMPILE_MIN_ELEMENTS
            and not self.failed
            and os.environ.get("RETINANET_D2_COMPILE", "1") != "0"
        )

    def __call__(self, kernel: Callable, inputs: Tensor, *args):
        """``kernel(inputs, *args)``, compiled when ``inputs`` is large and compiling works here."""
        if not self.enabled_for(inputs):
            return kernel(inputs, *args)
        if kernel not in self.compiled:
            self.compiled[kernel] = torch.compile(kernel, dynamic=True)
        try:
            return self.compiled[kernel](inputs, *args)
        except Exception as error:  # no C++ compiler, unsupported device, ...: fall back, loudly
            self.failed = True
            logging.getLogger(__name__).warning(
                f"torch.compile of {kernel.__name__} failed ({type(error).__name__}: {error}); "
                "running it eagerly from now on"
            )
            return kernel(inputs, *args)


# The process-wide compiler the losses use.
run_elementwise = ElementwiseCompiler()
