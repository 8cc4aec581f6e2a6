"""Writing any weights file formats.py reads as a detectron2 checkpoint that stock detectron2's
DetectionCheckpointer loads too (same names as detectron2's RetinaNet)."""
import pickle
from typing import Dict

import numpy as np
import torch

from ..atomic import atomic_open
from .formats import read_weights


def convert_weights_file(source: str, target: str) -> Dict:
    """Convert ``source`` to ``target``: ``{"model": state dict, "__author__": ...}``, a model-zoo
    pickle of numpy arrays if ``target`` ends in .pkl, else a torch.save file. Only the model is
    kept (no optimizer state). Returns the written state dict.

    Raises ValueError for Caffe2 weights that only name heuristics can match to a model (ImageNet
    backbones): MODEL.WEIGHTS loads those directly.
    """
    checkpoint = read_weights(source, source="the weights to convert")
    if checkpoint.get("matching_heuristics", False):
        raise ValueError(
            f"{source} holds Caffe2 weights without a detector head (e.g. an ImageNet backbone); "
            "detectron2 matches them to a model by name heuristics when they are MODEL.WEIGHTS, "
            "so there is nothing to convert"
        )
    author = f"retinanet_d2 convert_weights from {checkpoint.get('__author__', 'detectron2')}"
    state = checkpoint["model"]
    if target.endswith(".pkl"):
        arrays = {k: v.cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for k, v in state.items()}
        with atomic_open(target, "wb") as f:
            pickle.dump({"model": arrays, "__author__": author}, f)
    else:
        tensors = {k: torch.as_tensor(v) for k, v in state.items()}
        with atomic_open(target, "wb") as f:
            torch.save({"model": tensors, "__author__": author}, f)
    return state
