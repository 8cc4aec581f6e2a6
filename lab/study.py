"""A resumable study of settings x seeds: each run trains with train_net.py from one config plus the
setting's overrides and a seed, and its final COCO bbox metrics go into one JSON file, written after
every run, so that a study interrupted (or spread over several sittings) never repeats a finished run.

``PAPER_GRID`` is the grid of the paper's loss comparisons (Table 1(a), 1(b), 1(d), §3.3's prior).
"""
import concurrent.futures
import itertools
import json
import math
import os
import subprocess
import sys
import time
from typing import Callable, Dict, Iterable, List, NamedTuple, Sequence, Tuple

import matplotlib
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from retinanet_d2.analysis.metrics import read_metrics  # noqa: E402
from retinanet_d2.atomic import atomic_open, atomic_path  # noqa: E402

METRICS = ("bbox/AP", "bbox/AP50", "bbox/AP75")
_CE = ["MODEL.RETINANET.FOCAL_LOSS_GAMMA", "0.0"]
_CE_ALPHAS = ("0.25", "0.5", "0.75", "0.9")


class Setting(NamedTuple):
    """One row of a study: its name, config overrides (KEY VALUE ...) and what the paper reports."""

    name: str
    overrides: List[str]
    paper: str


PAPER_GRID = [
    Setting("FL g2 a.25", [], "Table 1(b): 34.0, the best"),
    *[Setting(f"CE a{a}", [*_CE, "MODEL.RETINANET.FOCAL_LOSS_ALPHA", a], "Table 1(a): best CE 31.1 at a .75")
      for a in _CE_ALPHAS],
    *[Setting(f"FL g{g} a.25", ["MODEL.RETINANET.FOCAL_LOSS_GAMMA", g], "Table 1(b): below g2 (g5 ~32.2)")
      for g in ("0.5", "1.0", "5.0")],
    Setting("OHEM plain", ["MODEL.FOCAL_RETINANET.LOSS", "ohem", *_CE, "MODEL.RETINANET.FOCAL_LOSS_ALPHA", "-1.0"],
            "Table 1(d): below FL (best OHEM 32.8 vs 36.0)"),
    Setting("OHEM 1:3", ["MODEL.FOCAL_RETINANET.LOSS", "ohem", *_CE, "MODEL.RETINANET.FOCAL_LOSS_ALPHA", "-1.0",
                         "MODEL.FOCAL_RETINANET.OHEM_FG_FRACTION", "0.25"], "Table 1(d): worse than plain OHEM"),
    Setting("CE a.75 no prior", [*_CE, "MODEL.RETINANET.FOCAL_LOSS_ALPHA", "0.75", "MODEL.RETINANET.PRIOR_PROB", "0.5"],
            "§5.1: CE without the prior diverges"),
]


class Claim(NamedTuple):
    """The paper says setting ``better`` beats the best (highest mean) of the settings ``worse``."""

    text: str
    better: str
    worse: Tuple[str, ...]


PAPER_CLAIMS = [
    Claim("FL (γ 2, α .25) beats the best α-balanced CE (Table 1a/b: +2.9 AP)", "FL g2 a.25",
          tuple(f"CE a{a}" for a in _CE_ALPHAS)),
    *[Claim(f"γ 2 beats γ {g} (Table 1b)", "FL g2 a.25", (f"FL g{g} a.25",)) for g in ("0.5", "1.0", "5.0")],
    Claim("FL beats OHEM (Table 1d: +3.2 AP over the best OHEM)", "FL g2 a.25", ("OHEM plain",)),
    Claim("FL beats OHEM 1:3 (Table 1d)", "FL g2 a.25", ("OHEM 1:3",)),
    Claim("plain OHEM beats OHEM 1:3 (Table 1d: the 1:3 ratio does not help)", "OHEM plain", ("OHEM 1:3",)),
    Claim("the prior π = .01 beats no prior, CE α .75 (§3.3, §5.1)", "CE a0.75", ("CE a.75 no prior",)),
]


def judge_claims(summary: Dict[str, Dict[str, float]], claims: Sequence[Claim] = PAPER_CLAIMS) -> List[Dict]:
    """Each claim whose settings are in ``summary`` with at least 2 seeds (for ``worse``: the one
    with the highest mean among those run): the margin (mean of ``better`` minus mean of ``worse``),
    its seed spread (standard error of that difference, sqrt(s_b^2/n_b + s_w^2/n_w)) and the verdict:
    "held" if margin > 2 spreads, "reversed" if margin < -2 spreads, else "within seed noise"."""
    rows = []
    for claim in claims:
        candidates = [name for name in claim.worse if name in summary]
        if not candidates:
            continue
        worse = max(candidates, key=lambda name: summary[name]["mean"])
        if claim.better not in summary or min(summary[claim.better]["n"], summary[worse]["n"]) < 2:
            continue
        b, w = summary[claim.better], summary[worse]
        margin = b["mean"] - w["mean"]
        spread = math.sqrt(b["std"] ** 2 / b["n"] + w["std"] ** 2 / w["n"])
        verdict = "held" if margin > 2 * spread else "reversed" if margin < -2 * spread else "within seed noise"
        rows.append({"claim": claim.text, "better": claim.better, "worse": worse, "margin": margin,
                     "spread": spread, "verdict": verdict})
    return rows


@torch.no_grad()
def anchors_per_foreground(model, batches: Iterable[List[dict]]) -> Dict[str, float]:
    """The imbalance the paper is about, on training batches (DatasetMapper's format): anchors per
    image, non-ignored anchors per foreground anchor (COCO at 800 px: ~100k anchors per image,
    ~1:1000 foreground to background, PAPER.md §2), negative anchor-class pairs per positive one
    (COCO: ~80,000), the share of non-ignored anchors that overlap no box ("far negatives", whose
    loss MODEL.FOCAL_RETINANET.FAR_NEGATIVE_WEIGHT m weighs: at m the negative pairs per positive
    pair grow by (m - 1) * far_pairs_per_positive_pair), and the number of images."""
    anchors = valid = foreground = far = images = 0
    for batch in batches:
        outputs = model.dense_outputs(batch)
        labels = outputs.labels
        images += labels.shape[0]
        anchors += labels.numel()
        valid += int((labels >= 0).sum())
        foreground += int(((labels >= 0) & (labels < model.num_classes)).sum())
        far += int(outputs.far_negatives.sum())
    positives = max(foreground, 1)
    return {"anchors_per_image": anchors / images, "anchors_per_foreground": valid / positives,
            "negatives_per_positive_pair": (valid * model.num_classes - foreground) / positives,
            "far_negative_fraction": far / max(valid, 1),
            "far_pairs_per_positive_pair": far * model.num_classes / positives, "images": images}


def run_key(setting: Setting, seed: int) -> str:
    return f"{setting.name} | seed {seed}"


def load_results(path: str) -> Dict[str, Dict]:
    """The runs recorded in ``path`` ({} if it does not exist); ValueError naming the file if it is
    not a study's JSON."""
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        try:
            results = json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not a study results file ({error})") from error
    if not isinstance(results, dict):
        raise ValueError(f"{path}: not a study results file (a {type(results).__name__}, not an object)")
    return results


def save_results(path: str, results: Dict[str, Dict]) -> None:
    """Write ``results`` to ``path`` atomically (a crash never leaves half a file)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1, sort_keys=True)


def train_net_run(config_file: str, overrides: Sequence[str], output_dir: str, threads: int = 0) -> Dict[str, float]:
    """Train with the repository's train_net.py in a subprocess (with ``threads`` intra-op threads if
    > 0); the final METRICS of the run and its wall time in seconds. A run killed earlier goes on from
    its newest checkpoint (--resume; a folder without one starts afresh). RuntimeError with the log's
    end if training fails."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {}))
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, os.path.join(repo, "train_net.py"), "--config-file", config_file, "--resume", *overrides,
         "OUTPUT_DIR", output_dir],
        capture_output=True, text=True, cwd=repo, env=env,
    )
    if result.returncode != 0:
        raise RuntimeError(f"training in {output_dir} failed:\n{(result.stdout + result.stderr)[-3000:]}")
    final = [r for r in read_metrics(os.path.join(output_dir, "metrics.json")) if METRICS[0] in r][-1]
    return {**{key: final[key] for key in METRICS}, "wall_s": time.perf_counter() - start}


def run_grid(
    config_file: str,
    settings: Sequence[Setting],
    seeds: Sequence[int],
    results_path: str,
    output_root: str,
    base_overrides: Sequence[str] = (),
    runner: Callable[[str, Sequence[str], str], Dict[str, float]] = train_net_run,
    jobs: int = 1,
) -> Dict[str, Dict]:
    """Run every (setting, seed) not yet in ``results_path``, ``jobs`` at a time, saving after each
    finished run; returns all results. After a failed run nothing new starts: the error is raised
    once the runs in flight have ended and been saved."""
    results = load_results(results_path)
    # Seed-major: a partial study has every setting at its first seeds.
    pending = [(s, seed) for seed in seeds for s in settings if run_key(s, seed) not in results]

    def run(setting: Setting, seed: int) -> Dict[str, float]:
        output_dir = os.path.join(output_root, setting.name.replace(" ", "_"), f"seed{seed}")
        return runner(config_file, [*base_overrides, *setting.overrides, "SEED", str(seed)], output_dir)

    queue, in_flight, failure = iter(pending), {}, None
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:

        def start(count: int) -> None:
            for setting, seed in itertools.islice(queue, count):
                in_flight[pool.submit(run, setting, seed)] = (setting, seed)

        start(jobs)
        while in_flight:
            done, _ = concurrent.futures.wait(in_flight, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                setting, seed = in_flight.pop(future)
                if future.exception() is not None:
                    failure = failure or future.exception()
                    continue
                results[run_key(setting, seed)] = {"setting": setting.name, "seed": seed, **future.result()}
                save_results(results_path, results)
            if failure is None:  # after a failure nothing new starts; the runs in flight finish
                start(len(done))
    if failure is not None:
        raise failure
    return results


def summarize(results: Dict[str, Dict], metric: str = "bbox/AP") -> Dict[str, Dict[str, float]]:
    """Per setting: mean and sample standard deviation of ``metric`` over its seeds, and n."""
    values: Dict[str, List[float]] = {}
    for run in results.values():
        values.setdefault(run["setting"], []).append(run[metric])
    summary = {}
    for name, xs in values.items():
        mean = sum(xs) / len(xs)
        std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else float("nan")
        summary[name] = {"mean": mean, "std": std, "n": len(xs)}
    return summary


def plot_summary(summary: Dict[str, Dict[str, float]], settings: Sequence[Setting], path: str) -> None:
    """Horizontal bars of mean AP with +-1 std over seeds, one per setting in ``settings``' order
    (top to bottom), each labelled with what the paper reports for it (PNG)."""
    names = [s.name for s in settings if s.name in summary]
    paper = {s.name: s.paper for s in settings}
    figure, axis = plt.subplots(figsize=(10, 0.9 + 0.42 * len(names)))
    rows = range(len(names))[::-1]
    means = [summary[n]["mean"] for n in names]
    stds = [0.0 if math.isnan(summary[n]["std"]) else summary[n]["std"] for n in names]
    axis.barh(rows, means, xerr=stds, capsize=3, color="tab:blue")
    axis.set_yticks(rows, [f"{n} (n={summary[n]['n']})\npaper: {paper[n]}" for n in names], fontsize=7)
    axis.set(xlabel="COCO bbox AP, mean +- std over seeds", xlim=(0, max(means) * 1.15 + 1))
    for row, mean, std in zip(rows, means, stds):
        axis.annotate(f"{mean:.1f}", (mean + std, row), xytext=(4, -3), textcoords="offset points", fontsize=7)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=120)
    plt.close(figure)
