"""Fig. 4: cumulative distribution of the normalised focal loss of positive and negative examples
of a trained model, for several gamma.

Examples are (anchor, class) pairs of non-ignored anchors: positives are a foreground anchor's own
class, negatives all other pairs. For each gamma the losses of each set are sorted ascending and
normalised to sum to one; the curve is the cumulative sum against the fraction of examples. The share
of the loss carried by the hardest 5% of each set sums the figure up in one number per gamma.
"""
import json
import math
from typing import Dict, Iterable, List, Sequence

import torch

from ..atomic import atomic_open
from ..modeling.losses import one_hot_targets, sigmoid_focal_loss
from .figures import new_figure, save_figure

FIG4_GAMMAS = (0.0, 0.5, 1.0, 2.0)
HARDEST_FRACTION = 0.05


@torch.no_grad()
def collect_logits(model, batches: Iterable[List[dict]]):
    """Logits (M, K) and labels (M,) of all non-ignored anchors of the given training batches."""
    model.eval()
    logits, labels = [], []
    for batch in batches:
        outputs = model.dense_outputs(batch)
        valid = outputs.labels >= 0
        logits.append(outputs.logits[valid].cpu())
        labels.append(outputs.labels[valid].cpu())
    return torch.cat(logits), torch.cat(labels)


def normalised_loss_cdfs(logits, labels, gammas: Sequence[float], points: int = 200) -> Dict:
    """{"fraction": [...], "positive": {gamma: cdf}, "negative": {gamma: cdf}, "counts": {...},
    "hardest_share": {set: {gamma: loss share of the ceil(5%) highest-loss examples}}} for logits
    (M, K) and labels (M,) in [0, K]."""
    targets = one_hot_targets(labels, logits.shape[1])
    fraction = torch.linspace(0, 1, points)
    result = {"fraction": fraction.tolist(), "positive": {}, "negative": {},
              "counts": {"positive": int(targets.sum()), "negative": int((1 - targets).sum())},
              "hardest_share": {"positive": {}, "negative": {}}}
    for gamma in gammas:
        loss = sigmoid_focal_loss(logits.double(), targets.double(), alpha=-1, gamma=gamma)
        for name, mask in (("positive", targets > 0), ("negative", targets == 0)):
            values = loss[mask].sort().values
            cdf = values.cumsum(0) / values.sum().clamp(min=1e-300)
            index = (fraction * (len(cdf) - 1)).round().long()
            result[name][str(gamma)] = cdf[index].tolist() if len(cdf) else []
            hardest = values[len(values) - math.ceil(HARDEST_FRACTION * len(values)):]
            result["hardest_share"][name][str(gamma)] = float(hardest.sum() / values.sum().clamp(min=1e-300))
    return result


def plot_cdfs(cdfs: Dict, path: str) -> None:
    """Two panels (positives, negatives) of cumulative normalised loss against example fraction."""
    figure, axes = new_figure(1, 2, figsize=(10, 4.2))
    for axis, name in zip(axes, ("positive", "negative")):
        for gamma, cdf in cdfs[name].items():
            axis.plot(cdfs["fraction"], cdf, label=f"γ = {float(gamma):g}")
        axis.set(xlabel=f"fraction of {name} samples", ylabel="cumulative normalized loss",
                 title=f"{name} samples ({cdfs['counts'][name]:,})", xlim=(0, 1), ylim=(0, 1))
        axis.legend()
    save_figure(figure, path, dpi=120)


def write_json(cdfs: Dict, path: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(cdfs, f)
