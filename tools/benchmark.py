#!/usr/bin/env python
"""FocalRetinaNet vs detectron2's RetinaNet (R50-FPN): same config, weights and inputs, interleaved.

    python tools/benchmark.py [--device cpu|cuda] [--repeats 5] [--json results.json]
    python tools/benchmark.py --limits [--profile]   # fractions of the machine's convolution limit
    python tools/benchmark.py --layouts configs/shapes_demo.yaml --size 224   # channels_last vs default
    python tools/benchmark.py --paper-step [--images 16]   # the paper's 1x step, 800x1088 images (a GPU's)

--limits: each path's counted FLOPs, its throughput and its fraction of the best convolution
throughput this machine reaches in that dtype (lab/limits.py), measured interleaved in the same run;
--profile: torch.profiler's per-operator table of one training step and one inference.
--paper-step: the R50-FPN 1x training step of the paper's batch on one device (16 images of 800x1088,
or the largest halving that fits in its memory), float32 and under autocast, against detectron2's.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch  # noqa: E402

from lab.benchmark import autocast_dtypes, dump, format_row, paper_step, run, table_header  # noqa: E402
from retinanet_d2.amp import emulated_autocast  # noqa: E402
from lab.limits import layout_ratios, limit_table, profile_table  # noqa: E402

LIMIT_HEADER = ["path", "GFLOP per call", "GFLOP/s", "% of limit"]


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo ("unknown CPU" where it has none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown CPU")
    except OSError:
        return "unknown CPU"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (median)")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--limits", action="store_true", help="the limit table instead of the comparison")
    parser.add_argument("--profile", action="store_true", help="also print the per-operator profiles")
    parser.add_argument("--layouts", metavar="CONFIG", help="time CONFIG's model in both memory layouts instead")
    parser.add_argument("--size", type=int, default=224, help="--layouts: square image side in px")
    parser.add_argument("--paper-step", action="store_true", help="the paper's 1x training step instead")
    parser.add_argument("--images", type=int, default=16, help="--paper-step: images per step (at most)")
    args = parser.parse_args()
    print(f"device: {args.device} ({cpu_name() if args.device == 'cpu' else torch.cuda.get_device_name()}), "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, medians of {args.repeats}")
    skipped = emulated_autocast(torch.device(args.device).type, torch.bfloat16)
    if skipped:
        print(f"no autocast rows: {skipped}")
    if args.layouts:
        print(f"{args.layouts}: SOLVER.IMS_PER_BATCH images of {args.size} px (step), one (inference)")
        print("| dtype | path | default ms | channels_last ms | ratio |\n|---|---|---|---|---|")
        for row in layout_ratios(args.layouts, args.device, args.repeats, args.size):
            print("| " + " | ".join(row) + " |", flush=True)
        return
    if args.limits or args.profile:
        dtypes = [torch.float32] + autocast_dtypes(args.device)
        if args.limits:
            rows = limit_table(args.device, args.repeats, dtypes)
            print("| " + " | ".join(LIMIT_HEADER) + " |\n|" + "---|" * len(LIMIT_HEADER))
            for row in rows:
                print("| " + " | ".join(row) + " |", flush=True)
            if args.json:
                dump([LIMIT_HEADER] + rows, args.json)
        if args.profile:
            for dtype in dtypes:
                print(profile_table(args.device, dtype), flush=True)
        return
    print(table_header(), flush=True)
    rows = []
    measured = paper_step(args.device, args.repeats, args.images) if args.paper_step else run(args.device, args.repeats)
    for row in measured:
        print(format_row(row), flush=True)
        rows.append(row)
    if args.json:
        dump(rows, args.json)


if __name__ == "__main__":
    main()
