"""Loss curves of the paper: Fig. 1 (FL against p_t for several gamma) and Fig. 5 (FL* against x_t
for several (gamma, beta), next to FL and CE)."""
from typing import Sequence, Tuple

import torch
from matplotlib.figure import Figure

from ..modeling.losses import sigmoid_focal_loss, sigmoid_focal_loss_star
from .figures import new_figure, save_figure

FIG1_GAMMAS = (0.0, 0.5, 1.0, 2.0, 5.0)
FIG5_SETTINGS = ((1.0, 0.0), (2.0, 1.0), (4.0, 0.0), (4.0, 2.0))


def focal_loss_curve(gamma: float, points: int = 500) -> Tuple[torch.Tensor, torch.Tensor]:
    """(p_t, FL(p_t)) at ``points`` evenly spaced p_t in (0, 1), without alpha weighting (Fig. 1)."""
    p_t = torch.linspace(1.0, points, points, dtype=torch.float64) / (points + 1)
    logits = torch.log(p_t) - torch.log1p(-p_t)  # sigmoid(logit) = p_t, for a positive target
    return p_t, sigmoid_focal_loss(logits, torch.ones_like(p_t), alpha=-1, gamma=gamma)


def plot_focal_loss(path: str, gammas: Sequence[float] = FIG1_GAMMAS) -> Figure:
    """Fig. 1: FL against the probability of the ground-truth class, one curve per gamma, written to
    ``path`` (PNG); the figure is returned."""
    figure, axis = new_figure(figsize=(6, 4.5))
    for gamma in gammas:
        p_t, loss = focal_loss_curve(gamma)
        axis.plot(p_t, loss, label=f"γ = {gamma:g}" + (" (CE)" if gamma == 0 else ""))
    axis.set(xlabel="probability of ground truth class $p_t$", ylabel="loss", ylim=(0, 5), xlim=(0, 1))
    axis.set_title("Focal loss FL(p_t) = -(1 - p_t)^γ log(p_t)")
    axis.legend()
    save_figure(figure, path, dpi=120)
    return figure


def plot_focal_loss_star(path: str, settings: Sequence[Tuple[float, float]] = FIG5_SETTINGS) -> Figure:
    """Fig. 5: FL* against x_t = y x for several (gamma, beta), next to CE and FL (gamma 2), written to
    ``path`` (PNG); the figure is returned."""
    x_t = torch.linspace(-10, 10, 400, dtype=torch.float64)
    positive = torch.ones_like(x_t)
    figure, axis = new_figure(figsize=(6, 4.5))
    axis.plot(x_t, sigmoid_focal_loss(x_t, positive, alpha=-1, gamma=0.0), "k", label="CE")
    axis.plot(x_t, sigmoid_focal_loss(x_t, positive, alpha=-1, gamma=2.0), "k--", label="FL, γ = 2")
    for gamma, beta in settings:
        loss = sigmoid_focal_loss_star(x_t, positive, alpha=-1, gamma=gamma, beta=beta)
        axis.plot(x_t, loss, label=f"FL*, γ = {gamma:g}, β = {beta:g}")
    axis.set(xlabel="$x_t$", ylabel="loss", ylim=(0, 5), xlim=(-10, 10))
    axis.set_title("FL* = -log(σ(γ x_t + β)) / γ")
    axis.legend()
    save_figure(figure, path, dpi=120)
    return figure
