"""Reading a weights file and recognising its format from its contents, not its name.

Formats (``WEIGHTS_FORMATS``: detect/convert objects, named as the logs name them):
- "detectron2": a model-zoo pickle ``{"model": ..., "__author__": ...}``, a training checkpoint
  ``{"model": ..., "optimizer": ..., "iteration": ...}`` or a bare state dict with detectron2 names.
- "detectron": a Detectron (Caffe2) RetinaNet pickle ``{"blobs": {"retnet_...": ...}}``.
- "caffe2": other Caffe2 weights (ImageNet backbones such as R-50.pkl, Detectron models of other
  heads); loaded by detectron2's own name-matching heuristics, as detectron2 does.
- "torchvision": a ``retinanet_resnet50_fpn`` or ``_v2`` state dict, bare (torchvision's released
  files) or as ``{"model": ...}`` (checkpoints of torchvision's reference training scripts).
"""
import logging
import os
import pickle
import zipfile
from typing import Any, Callable, Dict, List, NamedTuple, Optional

import numpy as np
import torch

from .detectron_format import (
    convert_detectron_retinanet,
    is_detectron_retinanet,
    without_optimizer_state,
)
from .safe_pickle import ForbiddenGlobalError, load_weights_pickle
from .torchvision_format import (
    convert_torchvision_retinanet,
    is_torchvision_retinanet,
    torchvision_version,
)

logger = logging.getLogger(__name__)


def read_file(path: str) -> Any:
    """The object stored in ``path``: a torch.save archive (zip or legacy) or a pickle, read
    without running code from it (torch's ``weights_only`` loader; WeightsUnpickler for pickles).

    Raises ValueError if it is neither, or if it needs a global that weights never need (the
    error names it; nothing of the file was called).
    """
    if os.path.getsize(path) == 0:
        raise ValueError("empty file (0 bytes)")
    problem = archive_problem(path)
    if problem:
        raise ValueError(problem)
    if zipfile.is_zipfile(path):
        return _torch_load(path)
    try:
        with open(path, "rb") as f:
            obj = load_weights_pickle(f)
    except ForbiddenGlobalError as error:
        raise ValueError(f"refused: {error}") from error
    except Exception as error:  # pickle raises many types on foreign bytes
        with open(path, "rb") as f:
            head = f.read(16)
        raise ValueError(
            f"neither a torch.save file nor a pickle ({type(error).__name__}: {error}); "
            f"its first bytes are {head!r}"
        ) from error
    if isinstance(obj, int):  # torch.save's legacy format starts with a pickled magic number
        return _torch_load(path)
    return obj


ZIP_MAGIC = b"PK\x03\x04"  # how every torch.save archive (a zip file) begins


def archive_problem(path: str) -> Optional[str]:
    """"a truncated or corrupt torch archive (...)" for a file that begins as a zip archive (what
    torch.save writes) but whose directory cannot be read (a write cut short); None otherwise."""
    with open(path, "rb") as f:
        head = f.read(len(ZIP_MAGIC))
    if head != ZIP_MAGIC:
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            archive.infolist()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        return f"a truncated or corrupt torch archive ({os.path.getsize(path)} bytes; {error})"
    return None


def _torch_load(path: str) -> Any:
    """torch.load with ``weights_only=True``: tensors, containers and primitive types only."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = next((line for line in lines if "global" in line.lower()), lines[0] if lines else "")
        raise ValueError(
            f"refused: torch's weights-only loader will not load it, since it needs more than "
            f"tensors and containers (a file that does may run code when loaded): {detail}"
        ) from error


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, dict)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, (torch.Tensor, np.ndarray)) for k, v in obj.items())
    )


def describe(obj: Any, limit: int = 5) -> str:
    """A one-line summary of what a file holds, for error messages."""
    if not isinstance(obj, dict):
        return f"a {type(obj).__module__}.{type(obj).__qualname__} object"
    items = []
    for key, value in list(obj.items())[:limit]:
        shape = getattr(value, "shape", None)
        kind = f"{type(value).__name__}{list(shape) if shape is not None else ''}"
        items.append(f"{key!r}: {kind}")
    more = f", ... ({len(obj)} keys)" if len(obj) > limit else ""
    return "a dict {" + ", ".join(items) + more + "}"


def _model_state(obj: Dict) -> Dict:
    """The state dict inside a checkpoint ``{"model": ...}``, or ``obj`` itself."""
    return obj["model"] if isinstance(obj.get("model"), dict) else obj


class WeightsFormat(NamedTuple):
    """A weights format: ``detect(obj)`` says whether the dict read from a file is in it, ``convert(obj)``
    gives the checkpoint dict detectron2's checkpointer loads (``{"model": state dict with detectron2's
    names, ...}``)."""

    name: str
    detect: Callable[[Dict], bool]
    convert: Callable[[Dict], Dict[str, Any]]


def _is_blobs(obj: Dict) -> bool:
    return not isinstance(obj.get("model"), dict) and isinstance(obj.get("blobs"), dict)


def _from_torchvision(obj: Dict) -> Dict[str, Any]:
    state = _model_state(obj)
    return {"model": convert_torchvision_retinanet(state), "__author__": f"torchvision {torchvision_version(state)}"}


# The formats detect_format tries, in order (the first that detects wins); a project may add its own.
WEIGHTS_FORMATS: List[WeightsFormat] = [
    WeightsFormat("torchvision", lambda obj: is_torchvision_retinanet(_model_state(obj)), _from_torchvision),
    WeightsFormat("detectron", lambda obj: _is_blobs(obj) and is_detectron_retinanet(obj["blobs"]),
                  lambda obj: {"model": convert_detectron_retinanet(obj["blobs"]), "__author__": "Detectron"}),
    WeightsFormat(  # Caffe2 blob names have no dots
        "caffe2", lambda obj: _is_blobs(obj) or (_is_state_dict(obj) and all("." not in k for k in obj)),
        lambda obj: {"model": without_optimizer_state(obj.get("blobs", obj)), "__author__": "Caffe2",
                     "matching_heuristics": True}),
    WeightsFormat("detectron2", lambda obj: isinstance(obj.get("model"), dict) or _is_state_dict(obj),
                  lambda obj: obj if "model" in obj else {"model": obj}),
]


def detect_format(obj: Any) -> WeightsFormat:
    """The first of WEIGHTS_FORMATS that detects the object read from a weights file; ValueError if none."""
    if isinstance(obj, dict):
        for fmt in WEIGHTS_FORMATS:
            if fmt.detect(obj):
                return fmt
    raise ValueError(
        "not a weights file of a known format (detectron2 checkpoint or model-zoo pickle, "
        f"Detectron/Caffe2 pickle, torchvision RetinaNet state dict); it holds {describe(obj)}"
    )


def read_weights(path: str, source: str = "MODEL.WEIGHTS") -> Dict[str, Any]:
    """The detectron2 checkpoint dict for the weights file ``path``, whatever its format; ``source``
    says where the path came from ("MODEL.WEIGHTS", "the resume checkpoint", "--weights", ...).

    Raises ValueError naming the source, the file and what it holds if it cannot be read or converted.
    """
    try:
        obj = read_file(path)
        fmt = detect_format(obj)
        checkpoint = fmt.convert(obj)
    except Exception as error:  # any failure to read or convert: re-raised naming the file
        raise ValueError(f"{source}={path}: {error}") from error
    logger.info(f"{source}={path}: {fmt.name} format, {len(checkpoint['model'])} tensors")
    return checkpoint
