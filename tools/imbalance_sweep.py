#!/usr/bin/env python
"""Does focal loss's advantage over the best alpha-balanced CE grow with the easy-negative mass?

The study's config and budget (configs/shapes_study.yaml, 3200 iterations), with the loss of the
background anchors that overlap no box weighed m times (MODEL.FOCAL_RETINANET.FAR_NEGATIVE_WEIGHT):
m = 1, 10, 100 (COCO's negatives per positive anchor-class pair at 100). Phases, resumable, one
JSON (the study's format):

1. seed 1: FL gamma 2 with alpha .25 and .5, CE with the alphas of CE_ALPHAS[m], at every m;
2. seeds 2 and 3: the best FL and the best CE of each m by seed 1's AP;
3. only if VERDICT_RULE finds seeds 1-3 inconclusive: seeds 4 and 5 of the best FL and CE at m = 100;
4. the natural check (seed 1): the same objects on canvases of twice the side (shapes_sparse_*: four
   times the background), FL gamma 2 alpha .25 against CE with the alpha that was best at the grid m
   nearest (log scale) to the weight m* whose negatives per positive pair match the sparse split's;
   and the same two settings on the study's split weighted by m*.

Runs at m = 1 of the settings the 3200-iteration study already has are copied from --reuse (the loss
at m = 1 is bit-identical: tests/test_dense_losses.py). A run whose loss diverges is recorded as AP 0
(as the paper records its CE alpha .1) and does not stop the sweep. Then: Δ(m) = best FL − best CE
paired by seed, the verdict of VERDICT_RULE, a table and a figure.

    python tools/imbalance_sweep.py --config-file configs/shapes_study.yaml --jobs 2 \\
        --results study/imbalance_results.json --reuse study/results.json --output-root output/imbalance
"""
import argparse
import functools
import json
import math
import os
import sys
from typing import Dict, List, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.env import seed_all_rng  # noqa: E402

import retinanet_d2  # noqa: E402
from retinanet_d2.analysis.batches import first_training_batches  # noqa: E402
from retinanet_d2.analysis.metrics import read_metrics  # noqa: E402
from lab.pretrain import ensure_pretrained_backbone  # noqa: E402
from lab.study import (  # noqa: E402
    METRICS, Setting, anchors_per_foreground, load_results, run_grid, run_key, save_results, train_net_run,
)
from retinanet_d2.atomic import atomic_path  # noqa: E402

WEIGHTS = (1, 10, 100)
FL_ALPHAS = ("0.25", "0.5")
CE_ALPHAS = {1: ("0.25", "0.5", "0.75", "0.9"), 10: ("0.9", "0.97", "0.99"), 100: ("0.9", "0.99", "0.999")}
SELECTION_SEED, LATER_SEEDS = 1, (2, 3)
EXTRA_SEEDS = (4, 5)  # at m 100, when seeds 1-3 leave the verdict inconclusive (VERDICT_RULE)
SHARE_KEY, SHARE_ITERATIONS = "far_negative_loss_share", 500
DIVERGED = "Loss became infinite or NaN"  # detectron2's trainer stops with this
PAPER_DELTA, COCO_PAIRS = 2.9, 80000
SPARSE_SIZE = 384  # the sparse splits' canvas side (the study's is 192)
SPARSE_OVERRIDES = ["DATASETS.TRAIN", "('shapes_sparse_train',)", "DATASETS.TEST", "('shapes_sparse_val',)",
                    "INPUT.MIN_SIZE_TRAIN", f"({SPARSE_SIZE},)", "INPUT.MAX_SIZE_TRAIN", str(SPARSE_SIZE),
                    "INPUT.MIN_SIZE_TEST", str(SPARSE_SIZE), "INPUT.MAX_SIZE_TEST", str(SPARSE_SIZE)]
VERDICT_RULE = (
    "held if Δ(100) >= +1.5 and above two paired standard errors, Δ(100) - Δ(1) >= +2, and the best FL's AP at "
    "m 100 within 1.5 of its m 1 value while the best CE drops by >= 2; not held if Δ grows by < 1 while the knob "
    "bites (far negatives carry >= half of CE a.9's classification loss over its first 500 iterations at m 100); "
    "otherwise inconclusive (add seeds 4-5 at m 100)"
)


def setting(loss: str, alpha: str, m: float) -> Setting:
    """FL gamma 2 or CE (gamma 0) with ``alpha`` at weight ``m``; named as the study names it at m 1."""
    name = f"FL g2 a{alpha.lstrip('0')}" if loss == "FL" else f"CE a{alpha}"
    overrides = ["MODEL.RETINANET.FOCAL_LOSS_ALPHA", alpha]
    if loss == "CE":
        overrides = ["MODEL.RETINANET.FOCAL_LOSS_GAMMA", "0.0", *overrides]
    if m != 1:
        name, overrides = f"{name} m{m}", [*overrides, "MODEL.FOCAL_RETINANET.FAR_NEGATIVE_WEIGHT", str(float(m))]
    return Setting(name, overrides, f"m {m}")


def measured_imbalance(cfg) -> Dict[str, float]:
    """lab.study.anchors_per_foreground on the first 50 training images, the random flips seeded, so
    that a resumed sweep measures the same numbers (and so derives the same m*)."""
    seed_all_rng(0)
    return anchors_per_foreground(build_model(cfg), first_training_batches(cfg, 50))


def matching_weight(imbalance: Dict[str, float], sparse_pairs: float) -> float:
    """The far-negative weight m* (one decimal) at which the study's split has ``sparse_pairs``
    negatives per positive pair: pairs(m) = pairs(1) + (m - 1) * far pairs per positive pair."""
    extra = sparse_pairs - imbalance["negatives_per_positive_pair"]
    return round(1 + extra / imbalance["far_pairs_per_positive_pair"], 1)


def sparse_check_settings(weight: float, best: Dict[int, Dict[str, Setting]]) -> Dict[str, List[Setting]]:
    """{"sparse": [FL, CE] on the sparse split, "weighted": [FL, CE] on the study's split at ``weight``}:
    FL gamma 2 alpha .25 and CE with the best alpha (seed 1) of the grid m nearest ``weight`` on a log scale."""
    nearest = min(WEIGHTS, key=lambda m: abs(math.log(m / weight)))
    ce = best[nearest]["CE"].overrides
    ce_alpha = ce[ce.index("MODEL.RETINANET.FOCAL_LOSS_ALPHA") + 1]
    plain = [setting("FL", "0.25", 1), setting("CE", ce_alpha, 1)]
    return {"sparse": [Setting(f"{s.name} sparse", [*s.overrides, *SPARSE_OVERRIDES], "sparse canvas") for s in plain],
            "weighted": [setting("FL", "0.25", weight), setting("CE", ce_alpha, weight)]}


def sweep_settings() -> Dict[int, Dict[str, List[Setting]]]:
    """{m: {"FL": settings, "CE": settings}}."""
    return {m: {"FL": [setting("FL", a, m) for a in FL_ALPHAS], "CE": [setting("CE", a, m) for a in CE_ALPHAS[m]]}
            for m in WEIGHTS}


def best_by_seed(results: Dict[str, Dict], settings: Sequence[Setting], seed: int) -> Optional[Setting]:
    """The setting with the highest AP at ``seed`` (the first of equals), None until all have run."""
    runs = [results.get(run_key(s, seed)) for s in settings]
    if any(run is None for run in runs):
        return None
    return max(zip(settings, runs), key=lambda pair: pair[1]["bbox/AP"])[0]


def reuse_runs(results: Dict[str, Dict], reused: Dict[str, Dict], settings: Sequence[Setting]) -> int:
    """Copy into ``results`` the runs of ``settings`` that ``reused`` has and ``results`` lacks."""
    names = {s.name for s in settings}
    copied = {k: dict(v, reused=True) for k, v in reused.items() if v["setting"] in names and k not in results}
    results.update(copied)
    return len(copied)


def sweep_run(config_file: str, overrides: Sequence[str], output_dir: str, threads: int = 0) -> Dict:
    """train_net_run, plus the logged far-negative loss share ([iteration, share] every 20 iterations,
    and its mean over the first SHARE_ITERATIONS); a diverged run is AP 0 with "diverged": True."""
    try:
        run = train_net_run(config_file, overrides, output_dir, threads)
    except RuntimeError as error:
        if DIVERGED not in str(error):
            raise
        run = {**{key: 0.0 for key in METRICS}, "diverged": True}
    path = os.path.join(output_dir, "metrics.json")
    shares = [[r["iteration"], r[SHARE_KEY]] for r in read_metrics(path) if SHARE_KEY in r] if os.path.exists(path) else []
    early = [share for iteration, share in shares if iteration < SHARE_ITERATIONS]
    if shares:
        run.update(far_share=shares, far_share_first500=sum(early) / len(early) if early else None)
    return run


def paired_deltas(results: Dict[str, Dict], fl: Setting, ce: Setting, seeds: Sequence[int]) -> List[float]:
    """AP of ``fl`` minus AP of ``ce`` at each seed of ``seeds`` both have run."""
    return [results[run_key(fl, s)]["bbox/AP"] - results[run_key(ce, s)]["bbox/AP"]
            for s in seeds if run_key(fl, s) in results and run_key(ce, s) in results]


def mean_and_se(values: Sequence[float]):
    """(mean, standard error) of ``values``; SE nan below 2 values."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, float("nan")
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))


def mean_ap(results: Dict[str, Dict], s: Setting, seeds: Sequence[int]) -> float:
    values = [results[run_key(s, seed)]["bbox/AP"] for seed in seeds if run_key(s, seed) in results]
    return sum(values) / len(values)


def verdict(results: Dict[str, Dict], best: Dict[int, Dict[str, Setting]], ce_share_at_100: Optional[float],
            seeds: Sequence[int]) -> Dict:
    """VERDICT_RULE on the runs of ``seeds``: Δ(m) mean and SE per m, the FL and CE changes from m 1
    to 100, and "held", "not held" or "inconclusive"."""
    deltas = {m: mean_and_se(paired_deltas(results, best[m]["FL"], best[m]["CE"], seeds)) for m in WEIGHTS}
    (d1, _), (d100, se100) = deltas[1], deltas[100]
    fl_change = mean_ap(results, best[100]["FL"], seeds) - mean_ap(results, best[1]["FL"], seeds)
    ce_drop = mean_ap(results, best[1]["CE"], seeds) - mean_ap(results, best[100]["CE"], seeds)
    bites = ce_share_at_100 is not None and ce_share_at_100 >= 0.5
    if d100 >= 1.5 and d100 > 2 * se100 and d100 - d1 >= 2 and abs(fl_change) <= 1.5 and ce_drop >= 2:
        outcome = "held"
    elif d100 - d1 < 1 and bites:
        outcome = "not held"
    else:
        outcome = "inconclusive"
    return {"deltas": {m: {"mean": d, "se": se} for m, (d, se) in deltas.items()}, "growth": d100 - d1,
            "fl_change": fl_change, "ce_drop": ce_drop, "ce_a.9_share_first500_at_m100": ce_share_at_100,
            "verdict": outcome}


def plot_sweep(results: Dict[str, Dict], settings, best, pairs_at: Dict[int, float], path: str,
               sparse: Optional[Dict] = None) -> None:
    """Δ(m) against negatives per positive pair (and, from ``sparse``, the natural check's Δ on the 2x
    canvas and the weighted Δ at the matching m*, seed 1); AP against m for every setting; the far-negative loss share over training (seed 1)."""
    figure, axes = plt.subplots(1, 3, figsize=(17, 4.6))
    seeds = (SELECTION_SEED, *LATER_SEEDS, *EXTRA_SEEDS)  # those run
    deltas = {m: paired_deltas(results, best[m]["FL"], best[m]["CE"], seeds) for m in WEIGHTS}
    x, y, se = zip(*[(pairs_at[m], *mean_and_se(deltas[m])) for m in WEIGHTS if deltas[m]])
    axes[0].errorbar(x, y, yerr=[0 if math.isnan(e) else e for e in se], marker="o", capsize=3)
    if sparse is not None:
        axes[0].plot([sparse["pairs"]], [sparse["delta"]], "s", color="tab:purple", label="2x canvas (seed 1)")
        axes[0].plot([sparse["pairs"]], [sparse["weighted_delta"]], "^", color="tab:orange",
                     label=f"weighted at m* {sparse['weight']} (seed 1)")
    axes[0].axhline(0, color="gray", lw=1)
    axes[0].axhline(PAPER_DELTA, color="tab:red", ls="--", lw=1, label=f"paper (COCO): +{PAPER_DELTA}")
    axes[0].axvline(COCO_PAIRS, color="tab:green", ls=":", lw=1, label="COCO ~80,000")
    axes[0].set(xscale="log", xlabel="negative anchor-class pairs per positive pair", ylabel="Δ AP = best FL − best CE",
                title="FL's advantage (paired by seed, ±SE)")
    axes[0].legend(fontsize=8)
    for loss, style in (("FL", "-"), ("CE", "--")):
        for alpha in sorted({s.name.split(" m")[0] for m in WEIGHTS for s in settings[m][loss]}):
            row = [(m, s) for m in WEIGHTS for s in settings[m][loss] if s.name.split(" m")[0] == alpha]
            row = [(m, mean_ap(results, s, seeds)) for m, s in row if any(run_key(s, k) in results for k in seeds)]
            if row:
                axes[1].plot(*zip(*row), style, marker="o", label=alpha)
    axes[1].set(xscale="log", xlabel="far-negative weight m", ylabel="bbox AP (mean over seeds run)",
                title="AP against m")
    axes[1].legend(fontsize=7, ncol=2)
    for m in WEIGHTS[1:]:
        for s in settings[m]["FL"] + settings[m]["CE"]:
            run = results.get(run_key(s, SELECTION_SEED), {})
            if run.get("far_share"):
                axes[2].plot(*zip(*run["far_share"]), label=s.name, lw=1)
    axes[2].set(xlabel="iteration", ylabel="share of the classification loss", ylim=(0, 1),
                title="far negatives' share of the loss (seed 1)")
    axes[2].legend(fontsize=6, ncol=2)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=110)
    plt.close(figure)


def sparse_check(cfg, args, imbalance: Dict[str, float], best, run) -> Dict:
    """Phase 4 (seed 1): the sparse split's imbalance, m*, its four runs and both Δ = FL − CE."""
    sparse_cfg = retinanet_d2.load_config(args.config_file, [*args.opts, *SPARSE_OVERRIDES])
    pairs = measured_imbalance(sparse_cfg)["negatives_per_positive_pair"]
    weight = matching_weight(imbalance, pairs)
    checks = sparse_check_settings(weight, best)
    results = run([s for group in checks.values() for s in group], [SELECTION_SEED])
    deltas = {name: paired_deltas(results, *group, [SELECTION_SEED])[0] for name, group in checks.items()}
    print(f"[sweep] 2x canvas: {pairs:,.0f} negatives per positive pair = the study's split at m* {weight}; "
          + "; ".join(f"{name}: " + ", ".join(f"{s.name} {results[run_key(s, SELECTION_SEED)]['bbox/AP']:.1f}"
                                              for s in checks[name]) + f" (Δ {deltas[name]:+.1f})" for name in checks))
    return {"pairs": pairs, "weight": weight, "delta": deltas["sparse"], "weighted_delta": deltas["weighted"],
            "results": results}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--results", required=True, help="the sweep's JSON (created, or resumed)")
    parser.add_argument("--reuse", help="a study JSON whose m 1 runs of the sweep's settings are copied")
    parser.add_argument("--output-root", default="output/imbalance", help="one training folder per run under it")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time, each with cores/jobs threads")
    parser.add_argument("--pretrain-iters", type=int, default=400, help="as tools/study.py's")
    parser.add_argument("--phase", type=int, choices=(1, 2), default=2,
                        help="1: seed 1 only; 2: phases 2-4 as well (the docstring's)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for every run: KEY VALUE ...")
    args = parser.parse_args(argv)
    cfg = retinanet_d2.load_config(args.config_file, args.opts)
    if args.pretrain_iters > 0 and cfg.MODEL.WEIGHTS and "://" not in cfg.MODEL.WEIGHTS:
        print(f"[sweep] pretrained backbone: {ensure_pretrained_backbone(cfg, args.pretrain_iters)}")
    imbalance = measured_imbalance(cfg)
    pairs_at = {m: imbalance["negatives_per_positive_pair"] + (m - 1) * imbalance["far_pairs_per_positive_pair"]
                for m in WEIGHTS}
    print(f"[sweep] imbalance: {json.dumps(imbalance)}; negatives per positive pair at m "
          + ", ".join(f"{m}: {p:,.0f}" for m, p in pairs_at.items()))
    settings = sweep_settings()
    everything = [s for m in WEIGHTS for group in settings[m].values() for s in group]
    results = load_results(args.results)
    if args.reuse:
        copied = reuse_runs(results, load_results(args.reuse), [s for group in settings[1].values() for s in group])
        if copied:
            save_results(args.results, results)
        print(f"[sweep] {copied} runs at m 1 copied from {args.reuse}")
    threads = max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else 0
    run = functools.partial(run_grid, args.config_file, results_path=args.results, output_root=args.output_root,
                            base_overrides=args.opts, runner=functools.partial(sweep_run, threads=threads),
                            jobs=args.jobs)
    results = run(everything, [SELECTION_SEED])
    best = {m: {loss: best_by_seed(results, group, SELECTION_SEED) for loss, group in settings[m].items()}
            for m in WEIGHTS}
    print("[sweep] best by seed 1: " + "; ".join(f"m {m}: {b['FL'].name}, {b['CE'].name}" for m, b in best.items()))
    seeds = [SELECTION_SEED, *LATER_SEEDS]
    if args.phase == 2:
        results = run([s for m in WEIGHTS for s in best[m].values()], list(LATER_SEEDS))
        ce_share = results.get(run_key(setting("CE", "0.9", 100), SELECTION_SEED), {}).get("far_share_first500")
        if verdict(results, best, ce_share, seeds)["verdict"] == "inconclusive":
            print(f"[sweep] inconclusive on seeds {seeds}: the best FL and CE at m 100 on seeds {list(EXTRA_SEEDS)}")
            results = run(list(best[100].values()), list(EXTRA_SEEDS))
            seeds += list(EXTRA_SEEDS)
    print("| setting | " + " | ".join(f"seed {k}" for k in seeds) + " |\n|" + "---|" * (len(seeds) + 1))
    for s in everything:
        cells = [results.get(run_key(s, k)) for k in seeds]
        print(f"| {s.name} | " + " | ".join("" if c is None else f"{c['bbox/AP']:.1f}" + (" (diverged)" if c.get(
            "diverged") else "") for c in cells) + " |")
    if args.phase == 2:
        for subset in (seeds, seeds[1:]):  # all seeds, and those free of the seed-1 selection
            print(f"[sweep] seeds {subset}: {json.dumps(verdict(results, best, ce_share, subset))}")
        print(f"[sweep] rule: {VERDICT_RULE}")
    sparse = None
    if args.phase == 2:
        sparse = sparse_check(cfg, args, imbalance, best, run)
        results = sparse["results"]
    figure = os.path.splitext(args.results)[0] + ".png"
    plot_sweep(results, settings, best, pairs_at, figure, sparse)
    print(f"[sweep] {len(results)} runs in {args.results}; figure {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
