#!/usr/bin/env python
"""The paper's loss comparisons as a study of settings x seeds (retinanet_d2/analysis/study.py): runs
every (setting, seed) not yet in the results file, then prints the table (mean +- std of bbox AP over
seeds) and draws it. Rerunning resumes; a finished run is never repeated.

    python tools/study.py --config-file configs/shapes_demo.yaml --seeds 1 2 3 \\
        --results study/results.json --output-root output/study [KEY VALUE ...]

KEY VALUE pairs apply to every run (e.g. a shorter schedule); each setting adds its own overrides.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from retinanet_d2.analysis.study import PAPER_GRID, plot_summary, run_grid, summarize  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--results", required=True, help="the study's JSON (created, or resumed)")
    parser.add_argument("--output-root", default="output/study", help="one training folder per run under it")
    parser.add_argument("--settings", nargs="+", help="names from the grid to run (default: all)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for every run: KEY VALUE ...")
    args = parser.parse_args(argv)
    settings = PAPER_GRID
    if args.settings:
        unknown = sorted(set(args.settings) - {s.name for s in PAPER_GRID})
        if unknown:
            parser.error(f"unknown settings {unknown}; the grid has {[s.name for s in PAPER_GRID]}")
        settings = [s for s in PAPER_GRID if s.name in args.settings]
    results = run_grid(args.config_file, settings, args.seeds, args.results, args.output_root, args.opts)
    summary = summarize(results)
    print("| setting | AP mean | AP std | seeds | paper |\n|---|---|---|---|---|")
    for setting in settings:
        if setting.name in summary:
            row = summary[setting.name]
            print(f"| {setting.name} | {row['mean']:.1f} | {row['std']:.1f} | {row['n']} | {setting.paper} |")
    figure = os.path.splitext(args.results)[0] + ".png"
    plot_summary(summary, settings, figure)
    print(f"[study] {len(results)} runs in {args.results}; figure {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
