#!/usr/bin/env python
"""FocalRetinaNet vs detectron2's RetinaNet (R50-FPN): same config, weights and inputs, interleaved.

    python tools/benchmark.py [--device cpu|cuda] [--repeats 5] [--json results.json]
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch  # noqa: E402

from lab.benchmark import dump, format_row, run, table_header  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (median)")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    print(f"device: {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"medians of {args.repeats}")
    print(table_header(), flush=True)
    rows = []
    for row in run(args.device, args.repeats):
        print(format_row(row), flush=True)
        rows.append(row)
    if args.json:
        dump(rows, args.json)


if __name__ == "__main__":
    main()
