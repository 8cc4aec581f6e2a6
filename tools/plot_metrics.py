#!/usr/bin/env python
"""Training curves (losses, learning rate, AP when evaluated) from detectron2's metrics.json.

    python tools/plot_metrics.py output/shapes_demo/metrics.json --output output/figures/training.png
"""
import argparse
import os

from retinanet_d2.analysis.metrics import plot_metrics, read_metrics


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("metrics", help="metrics.json written by detectron2's trainer")
    parser.add_argument("--output", default="output/figures/training_curves.png")
    args = parser.parse_args()
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    plot_metrics(read_metrics(args.metrics), args.output)
    print(args.output)


if __name__ == "__main__":
    main()
