"""The paper's loss family (§3, Appendix A), numerically stable at every finite logit.

* ``sigmoid_focal_loss``: FL (eq. 5), drop-in for fvcore's / torchvision's (same signature, values).
* ``sigmoid_focal_loss_star``: FL* (eq. 11 family), drop-in for fvcore's.
* ``focal_loss_from_labels``: FL summed over a (M, K) logit matrix given class labels, fused: no
  one-hot copy in memory, no saved intermediates.

One kernel family computes FL's values and gradients from logits and targets; the label form feeds it
the one-hot targets inside the (compiled: compiled.py) kernel. The backward pass recomputes from the
saved logits.

Every loss computes in at least float32: half-precision logits (under autocast) are upcast first, so
values and gradients are those of float32 on the same rounded logits, and the returned loss is
float32. Values and gradients below the smallest normal float are returned as 0: subnormal
gradients would flow into the head's convolution backward, which runs many times slower on them on
some CPUs.

Notation: ``x`` logits, ``t`` targets in [0, 1], ``p = sigmoid(x)``, ``p_t = p`` if t = 1 else 1 - p.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from ..precision import at_least_float32
from .compiled import run_elementwise

REDUCTIONS = ("none", "mean", "sum")


def check_focal_loss_args(alpha: float, gamma: float) -> None:
    """Raise ValueError unless alpha is in [0, 1] or -1 (no weighting) and gamma >= 0."""
    if not (alpha == -1 or 0.0 <= alpha <= 1.0):
        raise ValueError(f"focal loss alpha must be in [0, 1] or -1 for none, got {alpha}")
    if not gamma >= 0:
        raise ValueError(f"focal loss gamma must be >= 0, got {gamma}")


def check_fl_star_args(gamma: float, beta: float) -> None:
    """Raise ValueError unless FL*'s gamma > 0 and beta is finite."""
    if not gamma > 0:
        raise ValueError(f"FL* gamma must be > 0, got {gamma}")
    if not abs(beta) < float("inf"):
        raise ValueError(f"FL* beta must be finite, got {beta}")


def one_hot_targets(labels: Tensor, num_classes: int, dtype=torch.float32) -> Tensor:
    """(..., K) targets of labels (...) in {-1 ignore, 0..K-1 class, K background}: 1 at the label's
    class, 0 elsewhere (all 0 for background and ignored anchors)."""
    return (labels[..., None] == torch.arange(num_classes, device=labels.device)).to(dtype)


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _flush_subnormal(x: Tensor) -> Tensor:
    """``x`` with every value of magnitude below the smallest normal float set to 0."""
    return torch.where(x.abs() < torch.finfo(x.dtype).tiny, torch.zeros_like(x), x)


def _alpha_weight(targets: Tensor, alpha: float) -> Tensor:
    """alpha_t = alpha for t = 1, 1 - alpha for t = 0 (linear in between)."""
    return alpha * targets + (1 - alpha) * (1 - targets)


def _log1p(e: Tensor) -> Tensor:
    """log(1 + e) for e >= 0, as accurate as log1p (Goldberg's trick: log(u) * e / (u - 1) with
    u = 1 + e, and e where u rounds to 1), from one log: compiled CPU code has a vectorised log
    but a log1p several times slower."""
    u = 1 + e
    return torch.where(u == 1, e, torch.log(u) * (e / (u - 1)))


def _sigmoid_parts(x: Tensor):
    """p = sigmoid(x), 1 - p, log p, log(1 - p), each accurate for every finite x, from one exp and
    one log1p of e = exp(-|x|) (BCE-with-logits would round log(1 + e) to 0 for |x| > ~17)."""
    e = torch.exp(-x.abs())
    log1p_e = _log1p(e)
    inv = 1 / (1 + e)
    positive = x >= 0
    p = torch.where(positive, inv, e * inv)
    one_minus_p = torch.where(positive, e * inv, inv)
    return p, one_minus_p, torch.clamp(x, max=0) - log1p_e, torch.clamp(-x, max=0) - log1p_e


def _cross_entropy(t: Tensor, log_p: Tensor, log_one_minus_p: Tensor) -> Tensor:
    return -(t * log_p + (1 - t) * log_one_minus_p)


def _one_minus_p_t(t: Tensor, p: Tensor, one_minus_p: Tensor) -> Tensor:
    """1 - p_t = t (1 - p) + (1 - t) p, a sum of terms >= 0 (no cancellation)."""
    return t * one_minus_p + (1 - t) * p


def _focal_loss_values(x: Tensor, t: Tensor, alpha: float, gamma: float) -> Tensor:
    p, one_minus_p, log_p, log_one_minus_p = _sigmoid_parts(x)
    loss = _cross_entropy(t, log_p, log_one_minus_p)
    if gamma != 0:
        loss = loss * _one_minus_p_t(t, p, one_minus_p).pow(gamma)
    if alpha >= 0:
        loss = loss * _alpha_weight(t, alpha)
    return _flush_subnormal(loss)


def _focal_loss_grad(x: Tensor, t: Tensor, grad_output: Tensor, alpha: float, gamma: float) -> Tensor:
    p, one_minus_p, log_p, log_one_minus_p = _sigmoid_parts(x)
    grad = (1 - t) * p - t * one_minus_p  # d CE / dx = p - t, without cancellation at t = 0 or 1
    if gamma != 0:
        # d (q^gamma CE) / dx with q = 1 - p_t, dq/dx = (1 - 2t) p (1 - p):
        # q^gamma (p - t + gamma (1 - 2t) [p (1 - p) / q] CE); p (1 - p) / q is bounded, and where q
        # underflows to 0 it takes its limit for binary t, t p + (1 - t)(1 - p).
        q = _one_minus_p_t(t, p, one_minus_p)
        ratio = torch.where(q > 0, p * one_minus_p / q, t * p + (1 - t) * one_minus_p)
        ce = _cross_entropy(t, log_p, log_one_minus_p)
        grad = q.pow(gamma) * (grad + gamma * (1 - 2 * t) * ratio * ce)
    if alpha >= 0:
        grad = grad * _alpha_weight(t, alpha)
    return _flush_subnormal(grad * grad_output)


class _RecomputingLoss(torch.autograd.Function):
    """A loss whose backward pass recomputes from the saved inputs (nothing else is kept):
    forward ``value_kernel(x, aux, alpha, gamma)``, backward ``grad_kernel(x, aux, grad, alpha, gamma)``."""

    @staticmethod
    def forward(ctx, x: Tensor, aux: Tensor, alpha: float, gamma: float, value_kernel, grad_kernel):
        ctx.save_for_backward(x, aux)
        ctx.alpha, ctx.gamma, ctx.grad_kernel = alpha, gamma, grad_kernel
        return run_elementwise(value_kernel, x, aux, alpha, gamma)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        x, aux = ctx.saved_tensors
        grad = run_elementwise(ctx.grad_kernel, x, aux, grad_output, ctx.alpha, ctx.gamma)
        return grad, None, None, None, None, None


def sigmoid_focal_loss(
    inputs: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0, reduction: str = "none"
) -> Tensor:
    """Focal loss ``-alpha_t (1 - p_t)**gamma log(p_t)`` (paper eq. 5), elementwise.

    Same values as fvcore's and torchvision's ``sigmoid_focal_loss``; unlike them, values and
    gradients are finite for every finite logit and every gamma >= 0 (they return NaN gradients for
    gamma < 1 at saturated logits), and accurate where p_t is within float rounding of 1: ``1 - p_t``
    is built from sigmoid parts that never cancel, and no negative power of it is taken.

    Args:
        inputs: logits, any shape.
        targets: same shape, in [0, 1] (1 positive, 0 negative).
        alpha: weight of positives in [0, 1]; -1 for no weighting.
        gamma: focusing parameter >= 0; 0 gives alpha-balanced cross entropy.
        reduction: "none" (same shape as inputs), "mean" or "sum" (scalars).
    """
    check_focal_loss_args(alpha, gamma)
    inputs = at_least_float32(inputs)
    loss = _RecomputingLoss.apply(
        inputs, targets.to(inputs.dtype), float(alpha), float(gamma), _focal_loss_values, _focal_loss_grad
    )
    return _reduce(loss, reduction)


def sigmoid_focal_loss_star(
    inputs: Tensor,
    targets: Tensor,
    alpha: float = -1,
    gamma: float = 2.0,
    beta: float = 1.0,
    reduction: str = "none",
) -> Tensor:
    """FL* (paper Appendix A): ``-log(sigmoid(gamma * x_t + beta)) / gamma``, elementwise.

    Its gradient is ``y (p*_t - 1)`` with ``p*_t = sigmoid(gamma * x_t + beta)`` (eq. 11).
    fvcore's ``sigmoid_focal_loss_star`` is this function with ``beta = 0`` (it has no beta).

    Args:
        inputs: logits, any shape.
        targets: same shape, binary (1 positive, 0 negative).
        alpha: weight of positives in [0, 1]; -1 for no weighting.
        gamma: > 0.
        beta: shift of the modified logit.
        reduction: "none", "mean" or "sum".
    """
    check_fl_star_args(gamma, beta)
    check_focal_loss_args(alpha, 0.0)
    inputs = at_least_float32(inputs)
    targets = targets.to(inputs.dtype)
    if inputs.requires_grad:
        inputs = inputs.view_as(inputs)  # a node of its own, so the hook touches only this loss
        inputs.register_hook(_flush_subnormal)
    shifted = gamma * inputs * (2 * targets - 1) + beta
    loss = -F.logsigmoid(shifted) / gamma
    if alpha >= 0:
        loss = _alpha_weight(targets, alpha) * loss
    return _reduce(_flush_subnormal(loss), reduction)


def _label_loss_sum(logits: Tensor, labels: Tensor, alpha: float, gamma: float) -> Tensor:
    """FL kernel on (M, K) logits and (M,) labels: the sum over non-ignored rows."""
    targets = one_hot_targets(labels, logits.shape[1], logits.dtype)
    valid = (labels >= 0).to(logits.dtype)[:, None]
    return (_focal_loss_values(logits, targets, alpha, gamma) * valid).sum()


def _label_loss_grad(logits: Tensor, labels: Tensor, grad_output: Tensor, alpha: float, gamma: float) -> Tensor:
    """Gradient of _label_loss_sum: the FL gradient kernel, 0 on ignored rows."""
    targets = one_hot_targets(labels, logits.shape[1], logits.dtype)
    valid = (labels >= 0).to(logits.dtype)[:, None]
    return _focal_loss_grad(logits, targets, grad_output * valid, alpha, gamma)


def focal_loss_from_labels(
    logits: Tensor, labels: Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """Summed FL of ``logits`` (M, K) against ``labels`` (M,), without a one-hot copy.

    ``labels`` in {-1 ignore, 0..K-1 class, K background}. Equal to
    ``sigmoid_focal_loss(logits[valid], one_hot(labels[valid])[:, :K], alpha, gamma, "sum")``.
    """
    check_focal_loss_args(alpha, gamma)
    return _RecomputingLoss.apply(
        at_least_float32(logits), labels, float(alpha), float(gamma), _label_loss_sum, _label_loss_grad
    )


def focal_loss_star_from_labels(
    logits: Tensor, labels: Tensor, alpha: float, gamma: float, beta: float
) -> Tensor:
    """Summed FL* of ``logits`` (M, K) against ``labels`` (M,), labels as in focal_loss_from_labels."""
    valid = labels >= 0
    targets = one_hot_targets(labels[valid], logits.shape[1])
    return sigmoid_focal_loss_star(logits[valid], targets, alpha, gamma, beta, reduction="sum")
