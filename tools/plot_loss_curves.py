#!/usr/bin/env python
"""The paper's Fig. 1 (FL against p_t for gamma in {0, .5, 1, 2, 5}) and Fig. 5 (FL* against x_t).

    python tools/plot_loss_curves.py --output-dir output/figures
"""
import argparse
import os

from retinanet_d2.analysis.curves import plot_focal_loss, plot_focal_loss_star


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--output-dir", default="output/figures")
    args = parser.parse_args()
    os.makedirs(args.output_dir, exist_ok=True)
    for name, plot in (("fig1_focal_loss.png", plot_focal_loss), ("fig5_focal_loss_star.png", plot_focal_loss_star)):
        path = os.path.join(args.output_dir, name)
        plot(path)
        print(path)


if __name__ == "__main__":
    main()
