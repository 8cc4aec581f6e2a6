"""Exporting a model with detectron2's export utilities: TorchScript by tracing (then ONNX) or by
scripting.

Scripting (``script``) compiles the model's inference as it is, through detectron2's
``scripting_with_instances``: the scripted module takes ``[{"image": (3, H, W)}, ...]`` like the model
and returns, per image, ``{"pred_boxes": (D, 4) XYXY, "scores": (D,), "pred_classes": (D,)}`` in the
input's pixel coordinates, before detectron2's rescaling to "height"/"width" (detector_postprocess
does that). Plain tensors, not an Instances class, so that the saved module runs in a process that
imports only torch and torchvision (whose ``nms`` op it calls: ``import torchvision`` before
``torch.jit.load``).

``TracingAdapter`` flattens the model's input (one (3, H, W) image in the model's input format and
pixel range) and output into tensors, in the order of TRACED_OUTPUTS: the boxes (D, 4), classes (D,),
scores (D,) and the input's (H, W); the traced module keeps the number of candidates dynamic (see
meta_arch.topk_count), so it holds on other images of the traced size and on other sizes. The ONNX
file names its input "image" and its outputs TRACED_OUTPUTS.
"""
from typing import Dict, List, Tuple

import torch
from torch import Tensor, nn

from detectron2.export import TracingAdapter, scripting_with_instances
from detectron2.structures import Boxes

# The fields of the Instances that FocalRetinaNet's inference returns, for scripting.
DETECTION_FIELDS = {"pred_boxes": Boxes, "scores": Tensor, "pred_classes": Tensor}
# The traced module's outputs, as TracingAdapter flattens one image's Instances (fields by name, then its size).
TRACED_OUTPUTS = ("pred_boxes", "pred_classes", "scores", "image_size")


class DetectionTensors(nn.Module):
    """``model``'s scripted inference with each image's detections as a dict of tensors
    (DETECTION_FIELDS, boxes as their (D, 4) tensor) instead of an Instances (scripting only: under
    scripting, detectron2's DenseDetector returns the Instances of each image, not postprocessed)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs: List[Dict[str, Tensor]]) -> List[Dict[str, Tensor]]:
        detections: List[Dict[str, Tensor]] = []
        for instances in self.model(inputs):  # scripted, the model returns its Instances before postprocessing
            detections.append({"pred_boxes": instances.pred_boxes.tensor, "scores": instances.scores,
                               "pred_classes": instances.pred_classes})
        return detections


def script(model: nn.Module) -> torch.jit.ScriptModule:
    """TorchScript of ``model``'s inference by scripting (eval mode): [{"image": (3, H, W)}] -> one
    dict of tensors per image (see the module's docstring)."""
    return scripting_with_instances(DetectionTensors(model.eval()).eval(), DETECTION_FIELDS)


def trace(model: nn.Module, image: Tensor) -> Tuple[torch.jit.ScriptModule, TracingAdapter]:
    """TorchScript of ``model``'s inference, traced on ``image`` (3, H, W).

    Returns the traced module (image -> the output tensors of TRACED_OUTPUTS) and the adapter whose
    ``outputs_schema`` turns those tensors back into ``[{"instances": Instances}]``.
    """
    model.eval()
    adapter = TracingAdapter(model, [{"image": image}]).eval()
    with torch.no_grad():
        traced = torch.jit.trace(adapter, adapter.flattened_inputs)
    fields = adapter.outputs_schema.schemas[0].schemas[0].keys
    if (*fields, "image_size") != TRACED_OUTPUTS:
        raise RuntimeError(f"the traced model's outputs are {fields} and the image size, not {TRACED_OUTPUTS}")
    return traced, adapter


def export_onnx(adapter: TracingAdapter, image: Tensor, path: str, opset: int = 17) -> None:
    """Write ``adapter``'s model, traced on ``image`` (3, H, W), as ONNX to ``path`` (torch's
    TorchScript-based exporter; H and W dynamic). Needs the ``onnx`` package."""
    with torch.no_grad():
        torch.onnx.export(
            adapter, (image,), path, opset_version=opset, dynamo=False,
            input_names=["image"], output_names=list(TRACED_OUTPUTS),
            dynamic_axes={"image": {1: "height", 2: "width"}, "pred_boxes": {0: "detections"},
                          "pred_classes": {0: "detections"}, "scores": {0: "detections"}},
        )
