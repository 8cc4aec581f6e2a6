#!/usr/bin/env python
"""The paper's loss comparisons as a study of settings x seeds (lab/study.py): runs
every (setting, seed) not yet in the results file, then prints the table (mean +- std of bbox AP over
seeds), the paper's claims judged against the seed spread, and draws the table. Rerunning resumes;
a finished run is never repeated. If the config's MODEL.WEIGHTS is a local file that does not exist
yet (configs/shapes_study.yaml's pretrained backbone), the backbone is pretrained there first
(lab/pretrain.py: object-crop classification on the demo's split, --pretrain-iters steps).

    python tools/study.py --config-file configs/shapes_study.yaml --seeds 1 2 3 --jobs 2 \\
        --results study/results.json --output-root output/study [KEY VALUE ...]

KEY VALUE pairs apply to every run (e.g. a shorter schedule); each setting adds its own overrides.
"""
import argparse
import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from detectron2.modeling import build_model  # noqa: E402

import retinanet_d2  # noqa: E402
from retinanet_d2.analysis.batches import first_training_batches  # noqa: E402
from lab.pretrain import PRETRAIN_DATASETS, ensure_pretrained_backbone  # noqa: E402
from lab.study import (  # noqa: E402
    PAPER_GRID,
    anchors_per_foreground,
    judge_claims,
    plot_summary,
    run_grid,
    summarize,
    train_net_run,
)


def training_imbalance(cfg, images: int = 50) -> str:
    """Anchors per image and non-ignored anchors per foreground anchor over the first ``images``
    training images of ``cfg`` (labels only: the weights do not matter)."""
    measured = anchors_per_foreground(build_model(cfg), first_training_batches(cfg, images))
    return (f"{measured['anchors_per_image']:,.0f} anchors per image, {measured['anchors_per_foreground']:,.0f} "
            f"non-ignored anchors per foreground anchor ({measured['images']} images)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--results", required=True, help="the study's JSON (created, or resumed)")
    parser.add_argument("--output-root", default="output/study", help="one training folder per run under it")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at a time, each with cores/jobs threads (2 on 2 cores: ~17%% more runs per hour)")
    parser.add_argument("--pretrain-iters", type=int, default=400,
                        help="if the config's MODEL.WEIGHTS is a local file that does not exist, pretrain the "
                             "backbone there first, this many steps (0: never)")
    parser.add_argument("--pretrain-datasets", nargs=2, default=PRETRAIN_DATASETS, metavar=("TRAIN", "VAL"),
                        help="the datasets whose object crops the backbone learns to classify")
    parser.add_argument("--settings", nargs="+", help="names from the grid to run (default: all)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for every run: KEY VALUE ...")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: at least 1 run at a time")
    settings = PAPER_GRID
    if args.settings:
        unknown = sorted(set(args.settings) - {s.name for s in PAPER_GRID})
        if unknown:
            parser.error(f"unknown settings {unknown}; the grid has {[s.name for s in PAPER_GRID]}")
        settings = [s for s in PAPER_GRID if s.name in args.settings]
    cfg = retinanet_d2.load_config(args.config_file, args.opts)
    if args.pretrain_iters > 0 and cfg.MODEL.WEIGHTS and "://" not in cfg.MODEL.WEIGHTS:
        record = ensure_pretrained_backbone(cfg, args.pretrain_iters, tuple(args.pretrain_datasets))
        print(f"[study] pretrained backbone: {record}")
    print(f"[study] imbalance of {args.config_file}'s training data: {training_imbalance(cfg)}")
    threads = max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else 0
    results = run_grid(args.config_file, settings, args.seeds, args.results, args.output_root, args.opts,
                       runner=functools.partial(train_net_run, threads=threads), jobs=args.jobs)
    summary = summarize(results)
    print("| setting | AP mean | AP std | seeds | paper |\n|---|---|---|---|---|")
    for setting in settings:
        if setting.name in summary:
            row = summary[setting.name]
            print(f"| {setting.name} | {row['mean']:.1f} | {row['std']:.1f} | {row['n']} | {setting.paper} |")
    print("\n| the paper's claim | here: margin (AP) | seed spread (SE) | verdict |\n|---|---|---|---|")
    for row in judge_claims(summary):
        print(f"| {row['claim']} | {row['better']} - {row['worse']}: {row['margin']:+.1f} | {row['spread']:.1f} | "
              f"{row['verdict']} |")
    figure = os.path.splitext(args.results)[0] + ".png"
    plot_summary(summary, settings, figure)
    print(f"[study] {len(results)} runs in {args.results}; figure {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
