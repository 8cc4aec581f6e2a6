"""Mixed precision: losses exact in float32 under autocast, no subnormal gradients, AMP training on CPU
(bfloat16) through the engine's step trainers and train_net.py, checkpoints that cross between AMP and float32, and float32
detections from reduced-precision inference."""
import logging
import re

import pytest
import torch
from torch import nn

from detectron2.engine import HookBase, TrainerBase
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from helpers import INSTANT, cpuinfo_files, image_with_boxes, run_train_net, tiny_cfg, train_net_main, well_scaled_model
import retinanet_d2
from retinanet_d2.amp import autocast_if, cpu_has_units_for, emulated_autocast
from retinanet_d2.engine import evaluate, run_parts, train
from retinanet_d2.engine.step import AutocastTrainer, build_step_trainer
from retinanet_d2.engine.yacs_parts import yacs_settings
from retinanet_d2.modeling.losses import focal_loss_from_labels, sigmoid_focal_loss, sigmoid_focal_loss_star

DEVICES = [("cpu", torch.bfloat16)] + [("cuda", torch.float16), ("cuda", torch.bfloat16)] * torch.cuda.is_available()


def autocast_logits(device, dtype, shape=(4000, 6), seed=0):
    """Logits as autocast makes them (a conv's output in ``dtype``), saturated ones included."""
    generator = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(8, shape[1], 1).to(device)
    x = torch.randn(1, 8, shape[0], 1, generator=generator).to(device) * 3
    with torch.autocast(device, dtype=dtype):
        logits = conv(x)[0, :, :, 0].t() * 8
    assert logits.dtype == dtype
    return logits


LOSSES = {
    "focal_from_labels": lambda x, labels, t: focal_loss_from_labels(x, labels, 0.25, 2.0),
    "sigmoid_focal_loss": lambda x, labels, t: sigmoid_focal_loss(x, t, 0.25, 2.0, "sum"),
    "alpha_ce": lambda x, labels, t: sigmoid_focal_loss(x, t, 0.75, 0.0, "sum"),
    "fl_star": lambda x, labels, t: sigmoid_focal_loss_star(x, t, 0.25, 2.0, 1.0, "sum"),
}


@pytest.mark.parametrize("device,dtype", DEVICES)
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_losses_under_autocast_equal_float32_on_the_same_rounded_logits(device, dtype, name):
    logits = autocast_logits(device, dtype).detach().requires_grad_()
    labels = torch.randint(-1, 7, (logits.shape[0],), generator=torch.Generator().manual_seed(1)).to(device)
    targets = (labels[:, None] == torch.arange(6, device=device)).float()
    with torch.autocast(device, dtype=dtype):
        loss = LOSSES[name](logits, labels, targets)
    loss.backward()
    reference_logits = logits.detach().float().requires_grad_()
    reference = LOSSES[name](reference_logits, labels, targets)
    reference.backward()
    assert loss.dtype == torch.float32
    assert torch.equal(loss, reference)
    # The gradient reaching the half-precision logits is the float32 gradient, rounded once.
    assert torch.equal(logits.grad, reference_logits.grad.to(dtype))


@pytest.mark.parametrize("loss", ["focal", "focal_star", "ohem"])
def test_model_losses_under_autocast_are_float32_and_match(loss):
    cfg = tiny_cfg(**{"MODEL.FOCAL_RETINANET.LOSS": loss})
    model = well_scaled_model(cfg).train()
    batch = [image_with_boxes(seed=s) for s in (0, 1)]
    with EventStorage(), torch.autocast("cpu", dtype=torch.bfloat16):
        features = model.backbone(model.preprocess_image(batch).tensor)
        logits, deltas = model.head([features[f] for f in model.head_in_features])
        amp_losses = model.forward_training(model.preprocess_image(batch), [features[f] for f in model.head_in_features], (logits, deltas), [b["instances"] for b in batch])
    float_losses = model.forward_training(
        model.preprocess_image(batch), [features[f].float() for f in model.head_in_features],
        ([x.float() for x in logits], [x.float() for x in deltas]), [b["instances"] for b in batch],
    )
    for key in ("loss_cls", "loss_box_reg"):
        assert amp_losses[key].dtype == torch.float32
        torch.testing.assert_close(amp_losses[key], float_losses[key], rtol=1e-6, atol=0)


def test_saturated_negatives_give_zero_not_subnormal_gradients():
    """Logits in [-100, -20], targets 0, gamma 2: the exact gradient is below float32's smallest
    normal for most of them; those are 0, every normal-range one is unchanged."""
    x64 = torch.linspace(-100, -20, 4001, dtype=torch.float64)
    x = x64.float().requires_grad_()
    sigmoid_focal_loss(x, torch.zeros_like(x), 0.25, 2.0, "sum").backward()
    tiny = torch.finfo(torch.float32).tiny
    grad = x.grad.double()
    subnormal = (grad != 0) & (grad.abs() < tiny)
    assert not subnormal.any()
    # Reference: the paper's eq. 10 in float64 (y = -1): -(1 - p_t)^2 (2 p_t log p_t + p_t - 1) * 0.75.
    p_t = torch.sigmoid(-x64)
    reference = -0.75 * (1 - p_t) ** 2 * (2 * p_t * torch.log(p_t) + p_t - 1)
    normal, below = reference.abs() >= tiny * 1.001, reference.abs() < tiny * 0.999
    assert normal.sum() > 100 and below.sum() > 100  # both ranges exercised
    # Normal-range gradients keep their accuracy; just above the threshold, where intermediates such
    # as (1 - p_t)^2 are subnormal themselves, to 1%.
    accurate = reference.abs() >= 1e-33
    torch.testing.assert_close(grad[accurate], reference[accurate], rtol=1e-4, atol=0)
    torch.testing.assert_close(grad[normal & ~accurate], reference[normal & ~accurate], rtol=1e-2, atol=0)
    assert (grad[below] == 0).all()


def test_fused_label_loss_has_no_subnormal_gradients():
    logits = torch.linspace(-100, -20, 3000).reshape(1000, 3).requires_grad_()
    focal_loss_from_labels(logits, torch.full((1000,), 3), 0.25, 2.0).backward()
    grad = logits.grad
    assert not ((grad != 0) & (grad.abs() < torch.finfo(torch.float32).tiny)).any()
    assert (grad != 0).sum() > 100


def test_amp_dtype_by_device_and_key():
    cfg = tiny_cfg()
    assert yacs_settings(cfg).amp_dtype == torch.bfloat16  # CPU
    cfg.MODEL.FOCAL_RETINANET.AMP_DTYPE = "float16"
    assert yacs_settings(cfg).amp_dtype == torch.float16
    cfg.MODEL.FOCAL_RETINANET.AMP_DTYPE = "half"
    with pytest.raises(ValueError, match="MODEL.FOCAL_RETINANET.AMP_DTYPE.*'half'"):
        yacs_settings(cfg)


def test_bfloat16_training_steps_are_finite_and_decrease_the_loss():
    cfg = tiny_cfg()
    torch.manual_seed(0)
    model = build_model(cfg).train()  # the paper's initialisation (prior bias)
    batch = [image_with_boxes(seed=0), image_with_boxes(seed=1)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    trainer = AutocastTrainer(model, [batch] * 8, optimizer, device_type="cpu")
    totals = []
    with EventStorage() as storage:
        trainer.storage = storage
        for _ in range(8):
            trainer.iter = storage.iter
            trainer.run_step()
            totals.append(storage.history("total_loss").latest())
            storage.step()
    assert all(torch.isfinite(torch.tensor(totals)))
    assert max(totals[4:]) < totals[0]  # every later step below the first (momentum makes it noisy)


@pytest.mark.skipif(not hasattr(TrainerBase, "after_backward"), reason="detectron2 0.6 has no after_backward hooks")
def test_mixed_precision_steps_call_the_hooks_after_backward():
    """As detectron2's own trainers do: between backward (gradients present) and the optimizer step."""
    model = build_model(tiny_cfg()).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    trainer = AutocastTrainer(model, [[image_with_boxes()]] * 2, optimizer, device_type="cpu")
    seen = []

    class GradientsSeen(HookBase):
        def after_backward(self):
            seen.append(model.head.cls_score.weight.grad is not None)

    trainer.register_hooks([GradientsSeen()])
    trainer.train(0, 2)
    assert seen == [True, True]


@pytest.mark.skipif(not hasattr(TrainerBase, "after_backward"), reason="detectron2 0.6 has no after_backward hooks")
@pytest.mark.parametrize("amp", [True, False], ids=["amp", "float32"])
def test_the_engines_step_trainers_run_hooks_after_backward(amp):
    """The step trainer the engine builds (AutocastTrainer under AMP on CPU, else SimpleTrainer) runs its
    hooks' after_backward with the gradients present, before the optimizer step."""
    cfg = retinanet_d2.load_config(INSTANT, ["SOLVER.AMP.ENABLED", str(amp)])
    model = build_model(cfg)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    trainer = build_step_trainer(model, [[image_with_boxes()]] * 2, optimizer, yacs_settings(cfg))
    assert isinstance(trainer, AutocastTrainer) == amp
    seen = []

    class GradientsSeen(HookBase):
        def after_backward(self):
            seen.append(model.head.cls_score.weight.grad is not None)

    trainer.register_hooks([GradientsSeen()])
    trainer.train(0, 2)
    assert seen == [True, True]


def test_float16_training_on_cpu_is_refused_by_key_before_the_output_folder_is_touched(tmp_path):
    overrides = ["SOLVER.AMP.ENABLED", "True", "MODEL.FOCAL_RETINANET.AMP_DTYPE", "float16"]
    cfg = retinanet_d2.load_config(INSTANT, overrides)
    with pytest.raises(ValueError, match="float16 mixed-precision training needs CUDA.*AMP_DTYPE bfloat16"):
        build_step_trainer(build_model(cfg), [], None, yacs_settings(cfg))
    with pytest.raises(ValueError, match="float16 mixed-precision training needs CUDA"):
        train_net_main("--config-file", INSTANT, *overrides, "OUTPUT_DIR", str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def _train(tmp_path, amp: bool, max_iter: int, resume: bool):
    args = ["--config-file", INSTANT, "OUTPUT_DIR", str(tmp_path), "SOLVER.AMP.ENABLED", str(amp),
            "SOLVER.MAX_ITER", str(max_iter), "SOLVER.CHECKPOINT_PERIOD", "3", "TEST.EVAL_PERIOD", "0"]
    return run_train_net(*(["--resume"] if resume else []), *args)


@pytest.mark.e2e
@pytest.mark.parametrize("first_amp", [True, False], ids=["amp_then_float32", "float32_then_amp"])
def test_checkpoints_resume_across_precisions(tmp_path, first_amp):
    _train(tmp_path, first_amp, 3, resume=False)
    checkpoint = torch.load(tmp_path / "model_final.pth", weights_only=True)
    assert checkpoint["iteration"] == 2
    log = _train(tmp_path, not first_amp, 5, resume=True)
    iters = [int(i) for i in re.findall(r"iter: (\d+)", log)]
    assert iters and min(iters) >= 3 and max(iters) == 4  # continued from iteration 3, not from 0
    resumed = torch.load(tmp_path / "model_final.pth", weights_only=True)
    assert resumed["iteration"] == 4


def test_reduced_precision_inference_returns_float32_detections():
    cfg = tiny_cfg(**{"MODEL.FOCAL_RETINANET.TEST_AMP": True})
    model = well_scaled_model(cfg).eval()
    image = image_with_boxes(seed=2)["image"]
    with torch.no_grad():
        full = model([{"image": image}])[0]["instances"]
        settings = yacs_settings(cfg)
        with autocast_if(settings.test_amp, settings.device, settings.amp_dtype):
            reduced = model([{"image": image}])[0]["instances"]
            assert torch.is_autocast_enabled("cpu")
    assert reduced.pred_boxes.tensor.dtype == reduced.scores.dtype == torch.float32
    assert len(reduced) > 10
    # bfloat16 keeps 8 bits of mantissa: the highest-scoring detection is the same box, roughly.
    torch.testing.assert_close(reduced.scores[0], full.scores[0], atol=0.05, rtol=0)
    assert (reduced.pred_boxes.tensor[0] - full.pred_boxes.tensor[0]).abs().max() < 8


def test_group_norms_run_in_float32_under_autocast():
    """Every GroupNorm of the model (backbone, FPN, head) computes in float32 under autocast, on the
    autocast-rounded input, and is plain GroupNorm outside it (same state dict)."""
    from torch.nn import functional as F

    from retinanet_d2.modeling.float32_norm import Float32GroupNorm

    cfg = tiny_cfg(**{"MODEL.RESNETS.NORM": "GN", "MODEL.FPN.NORM": "GN", "MODEL.RETINANET.NORM": "GN"})
    model = build_model(cfg)
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(type(m) is Float32GroupNorm for m in norms)
    norm = norms[0]
    x = torch.randn(2, norm.num_channels, 5, 7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = norm(x.bfloat16())
    assert y.dtype == torch.float32
    assert torch.equal(y, F.group_norm(x.bfloat16().float(), norm.num_groups, norm.weight, norm.bias, norm.eps))
    assert torch.equal(norm(x), nn.GroupNorm.forward(norm, x))


def test_cpu_unit_detection_reads_the_flags(tmp_path):
    with_units, without = cpuinfo_files(tmp_path)
    assert cpu_has_units_for(torch.bfloat16, with_units) and not cpu_has_units_for(torch.bfloat16, without)
    assert not cpu_has_units_for(torch.float16, with_units)  # avx512_bf16 is no float16 unit
    assert not cpu_has_units_for(torch.bfloat16, str(tmp_path / "missing"))


def test_emulated_autocast_names_the_missing_flags_and_the_keys_that_turn_it_off(tmp_path):
    with_units, without = cpuinfo_files(tmp_path)
    message = emulated_autocast("cpu", torch.bfloat16, without)
    assert message.startswith(f"bfloat16 autocast on this CPU is emulated: {without} lists none of amx_bf16, avx512_bf16")
    assert message.endswith("Turn mixed precision off: SOLVER.AMP.ENABLED False MODEL.FOCAL_RETINANET.TEST_AMP False "
                            "(LazyConfig: train.amp.enabled=False train.amp.test=False)")
    assert f"{with_units} lists none of avx512_fp16, amx_fp16" in emulated_autocast("cpu", torch.float16, with_units)
    assert emulated_autocast("cpu", torch.bfloat16, with_units) is None
    assert emulated_autocast("cuda", torch.bfloat16, without) is None


@pytest.mark.e2e
def test_trainer_evaluation_and_predictor_warn_when_autocast_is_emulated(tmp_path, monkeypatch):
    import retinanet_d2.amp
    from retinanet_d2.predict import Predictor

    with_units, without = cpuinfo_files(tmp_path)
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("retinanet_d2.amp")
    logger.addHandler(handler)

    def warnings_when(cpuinfo, build):
        monkeypatch.setattr(retinanet_d2.amp, "CPUINFO", cpuinfo)
        messages.clear()
        build()
        return [m for m in messages if "autocast on this CPU is emulated" in m]

    def trainer(amp, test_amp):
        cfg = retinanet_d2.load_config(INSTANT, ["SOLVER.AMP.ENABLED", str(amp), "MODEL.FOCAL_RETINANET.TEST_AMP",
                                                 str(test_amp), "OUTPUT_DIR", str(tmp_path / f"run{amp}{test_amp}"),
                                                 "SOLVER.MAX_ITER", "1", "TEST.EVAL_PERIOD", "0"])
        parts = run_parts(cfg)
        return lambda: train(parts, parts.build_model(), resume=False)

    predictor = lambda: Predictor(tiny_cfg(**{"MODEL.FOCAL_RETINANET.TEST_AMP": True}), allow_random_weights=True)
    try:
        assert len(warnings_when(without, trainer(True, False))) == 1
        assert len(warnings_when(without, trainer(False, True))) == 1
        assert warnings_when(without, trainer(False, False)) == []
        assert warnings_when(with_units, trainer(True, True)) == []
        assert len(warnings_when(without, predictor)) == 1
        assert warnings_when(with_units, predictor) == []
        weights = str(tmp_path / "weights.pth")
        torch.save({"model": build_model(tiny_cfg()).state_dict()}, weights)
        parts = run_parts(tiny_cfg(**{"MODEL.FOCAL_RETINANET.TEST_AMP": True, "MODEL.WEIGHTS": weights, "DATASETS.TEST": ()}))
        evaluation = lambda: evaluate(parts, parts.build_model(), resume=False)
        assert len(warnings_when(without, evaluation)) == 1
    finally:
        logger.removeHandler(handler)
