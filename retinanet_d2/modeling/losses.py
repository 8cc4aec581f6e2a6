"""The paper's loss family (§3, Appendix A), numerically stable at every finite logit.

* ``sigmoid_focal_loss``: FL (eq. 5), drop-in for fvcore's / torchvision's (same signature, values).
* ``sigmoid_focal_loss_star``: FL* (eq. 11 family), drop-in for fvcore's.
* ``focal_loss_from_labels``: FL summed over a (M, K) logit matrix given class labels, fused: no
  one-hot target, no saved intermediates, gradient from the paper's eq. 10.

Notation: ``x`` logits, ``t`` targets in [0, 1], ``y = 2t - 1``, ``x_t = y x``, ``p_t = sigmoid(x_t)``.

The elementwise kernels run through ``torch.compile(dynamic=True)`` (one fused loop, no recompiles
as image sizes change) for inputs of at least COMPILE_MIN_ELEMENTS elements; smaller inputs, and
machines where compiling fails (logged once), run them eagerly. RETINANET_D2_COMPILE=0 turns
compiling off.
"""
import logging
import os
from typing import Callable, Dict

import torch
import torch.nn.functional as F
from torch import Tensor

REDUCTIONS = ("none", "mean", "sum")
COMPILE_MIN_ELEMENTS = 1 << 20
_compiled: Dict[Callable, Callable] = {}
_compile_failed = False


def run_elementwise(kernel: Callable, inputs: Tensor, *args):
    """``kernel(inputs, *args)``, compiled when ``inputs`` is large and compiling works here."""
    global _compile_failed
    if (
        inputs.numel() < COMPILE_MIN_ELEMENTS
        or _compile_failed
        or os.environ.get("RETINANET_D2_COMPILE", "1") == "0"
    ):
        return kernel(inputs, *args)
    if kernel not in _compiled:
        _compiled[kernel] = torch.compile(kernel, dynamic=True)
    try:
        return _compiled[kernel](inputs, *args)
    except Exception as error:  # no C++ compiler, unsupported device, ...: fall back, loudly
        _compile_failed = True
        logging.getLogger(__name__).warning(
            f"torch.compile of {kernel.__name__} failed ({type(error).__name__}: {error}); "
            "running the focal loss eagerly"
        )
        return kernel(inputs, *args)


def check_focal_loss_args(alpha: float, gamma: float) -> None:
    """Raise ValueError unless alpha is in [0, 1] or -1 (no weighting) and gamma >= 0."""
    if not (alpha == -1 or 0.0 <= alpha <= 1.0):
        raise ValueError(
            f"focal loss alpha (MODEL.RETINANET.FOCAL_LOSS_ALPHA) must be in [0, 1] or -1 "
            f"for none, got {alpha}"
        )
    if not gamma >= 0:
        raise ValueError(
            f"focal loss gamma (MODEL.RETINANET.FOCAL_LOSS_GAMMA) must be >= 0, got {gamma}"
        )


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


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
    return loss


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
    return grad * grad_output


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
    targets = targets.to(inputs.dtype)
    shifted = gamma * inputs * (2 * targets - 1) + beta
    loss = -F.logsigmoid(shifted) / gamma
    if alpha >= 0:
        loss = _alpha_weight(targets, alpha) * loss
    return _reduce(loss, reduction)


def check_fl_star_args(gamma: float, beta: float) -> None:
    """Raise ValueError unless FL*'s gamma > 0 and beta is finite."""
    if not gamma > 0:
        raise ValueError(f"FL* gamma (MODEL.FOCAL_RETINANET.STAR_GAMMA) must be > 0, got {gamma}")
    if not abs(beta) < float("inf"):
        raise ValueError(f"FL* beta (MODEL.FOCAL_RETINANET.STAR_BETA) must be finite, got {beta}")


def _signed_targets(logits: Tensor, labels: Tensor) -> Tensor:
    """y in {+1, -1} of shape (M, K): +1 where column k == labels[m], else -1."""
    classes = torch.arange(logits.shape[1], device=logits.device)
    return (labels[:, None] == classes).to(logits.dtype) * 2 - 1


def _label_focal_loss_sum(logits: Tensor, labels: Tensor, alpha: float, gamma: float) -> Tensor:
    y = _signed_targets(logits, labels)
    _, one_minus_p_t, log_p_t, _ = _sigmoid_parts(y * logits)
    loss = -one_minus_p_t.pow(gamma) * log_p_t
    if alpha >= 0:
        loss = loss * (0.5 + y * (alpha - 0.5))  # alpha_t: alpha if y = 1, 1 - alpha if y = -1
    return (loss * (labels >= 0).to(loss.dtype)[:, None]).sum()


def _label_focal_loss_grad(
    logits: Tensor, labels: Tensor, grad_output: Tensor, alpha: float, gamma: float
) -> Tensor:
    y = _signed_targets(logits, labels)
    p_t, one_minus_p_t, log_p_t, _ = _sigmoid_parts(y * logits)
    # eq. 10: dFL/dx = y (1 - p_t)^gamma (gamma p_t log(p_t) + p_t - 1)
    grad = y * one_minus_p_t.pow(gamma) * (gamma * p_t * log_p_t - one_minus_p_t)
    if alpha >= 0:
        grad = grad * (0.5 + y * (alpha - 0.5))
    return grad * (labels >= 0).to(grad.dtype)[:, None] * grad_output


def focal_loss_from_labels(
    logits: Tensor, labels: Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """Summed FL of ``logits`` (M, K) against ``labels`` (M,), without a one-hot copy.

    ``labels`` in {-1 ignore, 0..K-1 class, K background}. Equal to
    ``sigmoid_focal_loss(logits[valid], one_hot(labels[valid])[:, :K], alpha, gamma, "sum")``.
    """
    check_focal_loss_args(alpha, gamma)
    return _RecomputingLoss.apply(
        logits, labels, float(alpha), float(gamma), _label_focal_loss_sum, _label_focal_loss_grad
    )


def focal_loss_star_from_labels(
    logits: Tensor, labels: Tensor, alpha: float, gamma: float, beta: float
) -> Tensor:
    """Summed FL* of ``logits`` (M, K) against ``labels`` (M,), labels as in focal_loss_from_labels."""
    valid = labels >= 0
    targets = (labels[valid][:, None] == torch.arange(logits.shape[1], device=logits.device))
    return sigmoid_focal_loss_star(logits[valid], targets, alpha, gamma, beta, reduction="sum")
