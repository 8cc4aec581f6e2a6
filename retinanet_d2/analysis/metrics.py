"""Training curves from detectron2's metrics.json (one JSON object per line)."""
import json
from typing import Dict, List

from .figures import new_figure, save_figure


LOSS_KEYS = ("total_loss", "loss_cls", "loss_box_reg")


def read_metrics(path: str) -> List[Dict]:
    """The records of a metrics.json; raises ValueError naming the file and line when one is bad."""
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}:{number}: not a JSON record ({error})") from error
    if not records:
        raise ValueError(f"{path}: no records")
    return records


def plot_metrics(records: List[Dict], path: str) -> None:
    """Losses, learning rate and (when evaluated) bbox AP/AP50 against iteration (PNG)."""
    figure, axes = new_figure(1, 3, figsize=(14, 4))
    for key in LOSS_KEYS:
        points = [(r["iteration"], r[key]) for r in records if key in r]
        if points:
            axes[0].plot(*zip(*points), label=key)
    axes[0].set(xlabel="iteration", ylabel="loss", title="losses")
    axes[0].legend()
    lr = [(r["iteration"], r["lr"]) for r in records if "lr" in r]
    if lr:
        axes[1].plot(*zip(*lr))
    axes[1].set(xlabel="iteration", ylabel="learning rate", title="learning rate")
    for key in ("bbox/AP", "bbox/AP50"):
        points = [(r["iteration"], r[key]) for r in records if key in r]
        if points:
            axes[2].plot(*zip(*points), marker="o", label=key)
    axes[2].set(xlabel="iteration", ylabel="AP", title="evaluation")
    if axes[2].lines:
        axes[2].legend()
    save_figure(figure, path, dpi=120)
