"""MODEL.FOCAL_RETINANET.VALIDATION_LOSS_PERIOD: the mean of the model's losses over the test images,
logged during training; checked against the same losses computed from the saved final weights."""
import json

import pytest
import torch

from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

import retinanet_d2
from helpers import INSTANT, image_with_boxes, run_train_net, tiny_cfg, well_scaled_model
from retinanet_d2.checkpoint import load_model_weights
from retinanet_d2.validation_loss import build_validation_loader, mean_losses


def test_mean_losses_average_the_images():
    model = well_scaled_model(tiny_cfg()).train()
    batches = [[image_with_boxes(seed=0)], [image_with_boxes(seed=1)]]
    with EventStorage():
        measured = mean_losses(model, batches)
        with torch.no_grad():
            each = [model(batch) for batch in batches]
    assert set(measured) == {"loss_cls", "loss_box_reg"}
    for name, value in measured.items():
        assert value == pytest.approx((float(each[0][name]) + float(each[1][name])) / 2, rel=1e-6)


@pytest.mark.e2e
def test_train_net_logs_the_validation_loss_of_its_weights(tmp_path):
    run_train_net("--config-file", INSTANT, "OUTPUT_DIR", str(tmp_path), "MODEL.FOCAL_RETINANET.VALIDATION_LOSS_PERIOD",
                  "20", "SOLVER.MAX_ITER", "50", "SOLVER.CHECKPOINT_PERIOD", "50",
                  "MODEL.FOCAL_RETINANET.ERROR_ANALYSIS", "False")
    records = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    logged = {r["iteration"]: r for r in records if "validation_loss" in r}
    assert sorted(logged) == [19, 39, 49]  # every 20 iterations and after the last
    final = logged[49]
    assert final["validation_loss"] == pytest.approx(final["validation_loss_cls"] + final["validation_loss_box_reg"])
    cfg = retinanet_d2.load_config(INSTANT)
    model = build_model(cfg).train()
    load_model_weights(model, str(tmp_path / "model_final.pth"))
    with EventStorage():
        expected = mean_losses(model, build_validation_loader(cfg))
    assert final["validation_loss_cls"] == pytest.approx(expected["loss_cls"], rel=1e-5)
    assert final["validation_loss_box_reg"] == pytest.approx(expected["loss_box_reg"], rel=1e-5)


def test_mean_losses_leave_batch_norm_statistics_unchanged():
    """The test images normalise with the running statistics and do not become part of them (a
    BatchNorm backbone in training mode would otherwise update them on every validation pass)."""
    model = well_scaled_model(tiny_cfg(**{"MODEL.RESNETS.NORM": "BN"})).train()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(m.training for m in norms)
    before = {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}
    with EventStorage():
        mean_losses(model, [[image_with_boxes(seed=0)]])
    after = model.state_dict()
    assert all(torch.equal(value, after[key]) for key, value in before.items())
    assert all(m.training for m in norms)  # their mode restored
