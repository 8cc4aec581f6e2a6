"""Replacing submodules by new modules built from them, in place (as detectron2's
``FrozenBatchNorm2d.convert_frozen_batchnorm`` does): the model's structure, parameter objects and
state-dict names stay; only the replaced modules' classes (and so their forward) change."""
from typing import Callable

import torch
from torch import nn


def replace_modules(module: nn.Module, wanted: Callable[[nn.Module], bool],
                    build: Callable[[nn.Module], nn.Module]) -> int:
    """Replace every submodule ``m`` of ``module`` with ``wanted(m)`` by ``build(m)``, depth first
    (the children of a replaced module are not visited again); returns how many were replaced.
    ``build`` runs with the CPU random state restored afterwards, so a module it initialises before
    taking the old one's parameters leaves the rest of the model's seeded initialisation unchanged."""
    count = 0
    for name, child in module.named_children():
        if wanted(child):
            with torch.random.fork_rng(devices=[]):
                setattr(module, name, build(child))
            count += 1
        else:
            count += replace_modules(child, wanted, build)
    return count
