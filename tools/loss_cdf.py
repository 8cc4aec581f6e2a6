#!/usr/bin/env python
"""The paper's Fig. 4: cumulative distribution of the normalised loss of positive and negative
examples of a trained model over N training images, for several gamma (PNG + JSON of the curves).

    python tools/loss_cdf.py --config-file configs/shapes_demo.yaml --images 50 \
        --output-dir output/figures MODEL.WEIGHTS output/shapes_demo/model_final.pth
"""
import argparse
import os

from detectron2.modeling import build_model

import retinanet_d2
from retinanet_d2.analysis.batches import first_training_batches
from retinanet_d2.analysis.loss_cdf import (
    FIG4_GAMMAS,
    HARDEST_FRACTION,
    collect_logits,
    normalised_loss_cdfs,
    plot_cdfs,
    write_json,
)
from retinanet_d2.checkpoint import load_model_weights


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--images", type=int, default=50, help="training images to score")
    parser.add_argument("--gammas", type=float, nargs="+", default=list(FIG4_GAMMAS))
    parser.add_argument("--output-dir", default="output/figures")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args()

    cfg = retinanet_d2.load_config(args.config_file, args.opts)
    model = build_model(cfg)
    load_model_weights(model, cfg.MODEL.WEIGHTS)
    logits, labels = collect_logits(model, first_training_batches(cfg, args.images))
    cdfs = normalised_loss_cdfs(logits, labels, args.gammas)
    os.makedirs(args.output_dir, exist_ok=True)
    png = os.path.join(args.output_dir, "fig4_loss_cdf.png")
    plot_cdfs(cdfs, png)
    write_json(cdfs, os.path.join(args.output_dir, "fig4_loss_cdf.json"))
    print(png, cdfs["counts"])
    for name, shares in cdfs["hardest_share"].items():
        print(f"share of the {name} loss in the hardest {HARDEST_FRACTION:.0%}: "
              + ", ".join(f"γ {float(g):g}: {share:.3f}" for g, share in shares.items()))


if __name__ == "__main__":
    main()
