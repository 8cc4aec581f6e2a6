#!/usr/bin/env python
"""Export a FocalRetinaNet (config + MODEL.WEIGHTS in any accepted format) as TorchScript, by
tracing with detectron2's TracingAdapter (and ONNX where the onnx package is installed) or by
scripting with detectron2's scripting_with_instances.

    python tools/export_model.py --config-file configs/retinanet_R50_FPN_1x.yaml \\
        --sample-image street.jpg --output exported/ [--onnx] \\
        MODEL.WEIGHTS model_final.pth MODEL.DEVICE cpu
    python tools/export_model.py --export-method scripting --config-file configs/retinanet_R50_FPN_1x.yaml \\
        --output exported/ MODEL.WEIGHTS model_final.pth MODEL.DEVICE cpu

Writes OUTPUT/model.ts, and OUTPUT/model.onnx with --onnx. Traced: input one (3, H, W) float image in
cfg.INPUT.FORMAT and 0-255 range, already resized as at test time; outputs pred_boxes (D, 4; XYXY,
input pixels), pred_classes (D,), scores (D,) and image_size (2,) (the ONNX output names). Scripted:
input [{"image": (3, H, W)}, ...], output one {"pred_boxes", "scores", "pred_classes"} dict per image
(see retinanet_d2/export.py). Load either with `import torch, torchvision; torch.jit.load(...)`:
torchvision provides the nms op; detectron2 is not needed.
"""
import argparse
import os
import sys

from detectron2.data.detection_utils import read_image

import retinanet_d2
from retinanet_d2.atomic import atomic_path
from retinanet_d2.export import export_onnx, script, trace
from retinanet_d2.predict import Predictor


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--export-method", choices=("tracing", "scripting"), default="tracing")
    parser.add_argument("--sample-image", help="an image to trace the model on (tracing)")
    parser.add_argument("--output", required=True, help="folder for model.ts / model.onnx")
    parser.add_argument("--onnx", action="store_true", help="also write model.onnx (needs onnx; tracing)")
    parser.add_argument("--allow-random-weights", action="store_true",
                        help="run without MODEL.WEIGHTS, or with weights that leave layers uninitialised")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    tracing = args.export_method == "tracing"
    if tracing and not args.sample_image:
        parser.error("--export-method tracing needs --sample-image")
    if args.onnx and not tracing:
        parser.error("--onnx needs --export-method tracing")
    cfg = retinanet_d2.load_config(args.config_file, args.opts)
    cfg.freeze()

    predictor = Predictor(cfg, allow_random_weights=args.allow_random_weights)
    os.makedirs(args.output, exist_ok=True)
    if not tracing:
        with atomic_path(os.path.join(args.output, "model.ts")) as tmp:
            script(predictor.model).save(tmp)
        print(f"[export_model] scripted TorchScript -> {args.output}")
        return 0
    image = read_image(args.sample_image, format="BGR")
    tensor = predictor.preprocess(image).to(cfg.MODEL.DEVICE)
    traced, adapter = trace(predictor.model, tensor)
    with atomic_path(os.path.join(args.output, "model.ts")) as tmp:
        traced.save(tmp)
    if args.onnx:
        export_onnx(adapter, tensor, os.path.join(args.output, "model.onnx"))
    print(f"[export_model] TorchScript{' and ONNX' if args.onnx else ''} -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
