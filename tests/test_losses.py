import logging
import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from fvcore.nn import sigmoid_focal_loss as fvcore_focal_loss
from fvcore.nn import sigmoid_focal_loss_star as fvcore_focal_loss_star

from retinanet_d2.modeling.losses import (
    focal_loss_from_labels,
    sigmoid_focal_loss,
    sigmoid_focal_loss_star,
)

GAMMAS = [0.0, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0]
# Logits from saturated negative to saturated positive, in float64 for the reference formulas.
LOGITS = torch.tensor([-100.0, -30.0, -17.0, -5.0, -0.5, 0.0, 0.5, 5.0, 17.0, 30.0, 100.0])


def test_hand_computed_values_at_zero_logit():
    # p = 0.5: FL = alpha_t * 0.5**2 * log 2 for either target.
    loss = sigmoid_focal_loss(torch.zeros(2), torch.tensor([1.0, 0.0]))
    expected = torch.tensor([0.25 * 0.25 * math.log(2), 0.75 * 0.25 * math.log(2)])
    torch.testing.assert_close(loss, expected)


def test_reductions_and_gamma_zero_is_alpha_balanced_ce():
    x = torch.tensor([-2.0, 0.3, 4.0])
    t = torch.tensor([1.0, 0.0, 1.0])
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    alpha_t = torch.tensor([0.75, 0.25, 0.75])
    torch.testing.assert_close(sigmoid_focal_loss(x, t, alpha=0.75, gamma=0.0), alpha_t * ce)
    torch.testing.assert_close(sigmoid_focal_loss(x, t, reduction="sum"), sigmoid_focal_loss(x, t).sum())
    torch.testing.assert_close(sigmoid_focal_loss(x, t, reduction="mean"), sigmoid_focal_loss(x, t).mean())


@pytest.mark.parametrize("alpha", [-1, 0.25, 0.75])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 5.0])
def test_same_values_as_fvcore(alpha, gamma):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(500, 7, generator=generator) * 4
    t = (torch.rand(500, 7, generator=generator) < 0.1).float()
    torch.testing.assert_close(
        sigmoid_focal_loss(x, t, alpha, gamma), fvcore_focal_loss(x, t, alpha, gamma), rtol=1e-5, atol=1e-6
    )


def paper_gradient(x, y, gamma, alpha):
    """Paper eq. 10 times alpha_t: y (1 - p_t)^gamma (gamma p_t log p_t + p_t - 1)."""
    p_t = torch.sigmoid(y * x)
    alpha_t = torch.where(y > 0, torch.full_like(x, alpha), torch.full_like(x, 1 - alpha))
    return alpha_t * y * (1 - p_t) ** gamma * (gamma * p_t * torch.log(p_t) + p_t - 1)


@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("target", [0.0, 1.0])
def test_gradient_is_paper_eq10_and_finite_everywhere(gamma, target):
    x = LOGITS.clone().requires_grad_()
    t = torch.full_like(x, target)
    sigmoid_focal_loss(x, t, alpha=0.25, gamma=gamma, reduction="sum").backward()
    assert torch.isfinite(x.grad).all()
    expected = paper_gradient(LOGITS.double(), 2 * t.double() - 1, gamma, 0.25).nan_to_num(0.0)
    torch.testing.assert_close(x.grad.double(), expected, rtol=1e-4, atol=1e-12)


def test_saturated_positive_with_gamma_below_one_has_zero_gradient():
    """At x = 100, t = 1: 1 - p_t = e^-100, so the exact gradient (eq. 10) is ~e^(-100 (1 + gamma))
    in magnitude: 0 in float32 (fvcore's formula takes 0^(gamma - 1) there, which is inf)."""
    x = torch.tensor([100.0], requires_grad=True)
    sigmoid_focal_loss(x, torch.ones(1), gamma=0.5, reduction="sum").backward()
    assert x.grad.item() == 0.0


@pytest.mark.parametrize("gamma", GAMMAS)
def test_fused_label_loss_equals_one_hot_loss(gamma):
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(300, 4, generator=generator) * 6
    labels = torch.randint(-1, 5, (300,), generator=generator)  # -1 ignore, 4 background
    valid = labels >= 0
    one_hot = F.one_hot(labels[valid], 5)[:, :4].float()

    a = logits.clone().requires_grad_()
    fused = focal_loss_from_labels(a, labels, alpha=0.25, gamma=gamma)
    fused.backward()
    b = logits.clone().requires_grad_()
    reference = sigmoid_focal_loss(b[valid], one_hot, alpha=0.25, gamma=gamma, reduction="sum")
    reference.backward()
    torch.testing.assert_close(fused, reference)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-7)
    assert (a.grad[~valid] == 0).all()


def test_fused_label_loss_gradient_finite_at_saturation():
    logits = torch.tensor([[100.0, -100.0], [-100.0, 100.0]], requires_grad=True)
    focal_loss_from_labels(logits, torch.tensor([0, 2]), gamma=0.2).backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("gamma,beta", [(2.0, 1.0), (4.0, 0.0), (1.0, -1.0)])
def test_fl_star_values_and_gradient(gamma, beta):
    x = LOGITS.clone().requires_grad_()
    t = torch.tensor([1.0, 0.0] * 5 + [1.0])
    y = 2 * t - 1
    loss = sigmoid_focal_loss_star(x, t, alpha=-1, gamma=gamma, beta=beta)
    p_star = torch.sigmoid(gamma * y.double() * LOGITS.double() + beta)
    torch.testing.assert_close(loss.double(), -torch.log(p_star) / gamma, rtol=1e-5, atol=1e-7)
    loss.sum().backward()
    torch.testing.assert_close(x.grad.double(), y.double() * (p_star - 1), rtol=1e-5, atol=1e-7)


def test_fl_star_with_beta_zero_equals_fvcore():
    t = torch.tensor([1.0, 0.0] * 5 + [1.0])
    ours = sigmoid_focal_loss_star(LOGITS, t, alpha=0.25, gamma=3.0, beta=0.0)
    torch.testing.assert_close(ours, fvcore_focal_loss_star(LOGITS, t, 0.25, 3.0))


def test_a_failing_compile_falls_back_to_eager_once_and_says_so(monkeypatch, caplog):
    """Without a working compiler: eager results, one warning naming the kernel, no second try."""
    from retinanet_d2.modeling.losses.compiled import COMPILE_MIN_ELEMENTS, ElementwiseCompiler

    attempts = []

    def broken_compile(kernel, **kwargs):
        def run(*args):
            attempts.append(kernel.__name__)
            raise RuntimeError("no C++ compiler found")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    compiler = ElementwiseCompiler()
    x = torch.randn(COMPILE_MIN_ELEMENTS)

    def double(inputs):
        return inputs * 2

    logger = logging.getLogger("retinanet_d2.modeling.losses.compiled")  # train_net's setup stops propagation
    logger.addHandler(caplog.handler)
    try:
        for _ in range(2):
            assert torch.equal(compiler(double, x), x * 2)
    finally:
        logger.removeHandler(caplog.handler)
    assert compiler.failed and attempts == ["double"]
    assert any("torch.compile of double failed (RuntimeError: no C++ compiler found)" in r.getMessage()
               for r in caplog.records)


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="torch.compile's CPU backend needs a C++ compiler (the fallback is tested above)")
def test_compiled_kernels_equal_eager_kernels(monkeypatch):
    from retinanet_d2.modeling.losses.compiled import COMPILE_MIN_ELEMENTS, run_elementwise

    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(COMPILE_MIN_ELEMENTS // 8 + 1, 8, generator=generator) * 5
    labels = torch.randint(-1, 9, (logits.shape[0],), generator=generator)
    targets = (labels[:, None] == torch.arange(8)).float()

    def run():
        a = logits.clone().requires_grad_()
        fused = focal_loss_from_labels(a, labels, 0.25, 2.0)
        fused.backward()
        b = logits.clone().requires_grad_()
        elementwise = sigmoid_focal_loss(b, targets, 0.25, 2.0, reduction="sum")
        elementwise.backward()
        return fused, a.grad, elementwise, b.grad

    compiled = run()
    assert len(run_elementwise.compiled) == 4  # value and gradient kernels of both forms
    assert not run_elementwise.failed
    monkeypatch.setenv("RETINANET_D2_COMPILE", "0")
    for x, y in zip(compiled, run()):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
