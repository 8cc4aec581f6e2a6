"""Exporting a model with detectron2's export utilities: TorchScript by tracing (then ONNX) or by
scripting.

Scripting (``script``) compiles the model's inference as it is, through detectron2's
``scripting_with_instances``: the scripted module takes ``[{"image": (3, H, W)}, ...]`` like the model
and returns one detectron2 Instances per image (pred_boxes, scores, pred_classes) in the input's pixel
coordinates, before detectron2's rescaling to "height"/"width" (detector_postprocess does that).

``TracingAdapter`` flattens the model's input (one (3, H, W) image in the model's input format and
pixel range) and output (the Instances' boxes, classes and scores) into tensors; the traced module
keeps the number of candidates dynamic (see meta_arch.topk_count), so it holds on other images of
the traced size and on other sizes.
"""
from typing import Tuple

import torch
from torch import Tensor, nn

from detectron2.export import TracingAdapter, scripting_with_instances
from detectron2.structures import Boxes

# The fields of the Instances that FocalRetinaNet's inference returns, for scripting.
DETECTION_FIELDS = {"pred_boxes": Boxes, "scores": Tensor, "pred_classes": Tensor}


def script(model: nn.Module) -> torch.jit.ScriptModule:
    """TorchScript of ``model``'s inference by scripting (eval mode)."""
    return scripting_with_instances(model.eval(), DETECTION_FIELDS)


def trace(model: nn.Module, image: Tensor) -> Tuple[torch.jit.ScriptModule, TracingAdapter]:
    """TorchScript of ``model``'s inference, traced on ``image`` (3, H, W).

    Returns the traced module (image -> flat output tensors) and the adapter whose
    ``outputs_schema`` turns those tensors back into ``[{"instances": Instances}]``.
    """
    model.eval()
    adapter = TracingAdapter(model, [{"image": image}]).eval()
    with torch.no_grad():
        traced = torch.jit.trace(adapter, adapter.flattened_inputs)
    return traced, adapter


def export_onnx(adapter: TracingAdapter, image: Tensor, path: str, opset: int = 17) -> None:
    """Write ``adapter``'s model, traced on ``image`` (3, H, W), as ONNX to ``path`` (torch's
    TorchScript-based exporter; H and W dynamic). Needs the ``onnx`` package."""
    with torch.no_grad():
        torch.onnx.export(
            adapter, (image,), path, opset_version=opset, dynamo=False,
            input_names=["image"], dynamic_axes={"image": {1: "height", 2: "width"}},
        )
