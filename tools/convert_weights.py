#!/usr/bin/env python
"""Convert a weights file (detectron2 checkpoint or model-zoo pickle, Detectron RetinaNet pickle,
torchvision retinanet_resnet50_fpn[_v2] state dict; recognised from its contents) to a detectron2
checkpoint with the names of detectron2's RetinaNet and FocalRetinaNet.

    python tools/convert_weights.py retinanet_resnet50_fpn_coco-eeacb38b.pth retinanet_tv_v1.pkl

OUT ending in .pkl: a detectron2 model-zoo pickle; otherwise a torch.save file. Load it with the
config matching the source (configs/torchvision/*.yaml, configs/detectron/*.yaml).
"""
import argparse
import sys

from retinanet_d2.checkpoint.convert import convert_weights_file


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("source", help="weights file to convert")
    parser.add_argument("target", help="detectron2 checkpoint to write (.pkl or .pth)")
    args = parser.parse_args(argv)
    state = convert_weights_file(args.source, args.target)
    print(f"[convert_weights] {len(state)} tensors: {args.source} -> {args.target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
