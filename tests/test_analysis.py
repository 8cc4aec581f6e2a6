"""The analysis tools write valid figures; the curves they draw are the paper's."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

import retinanet_d2
from helpers import CONFIGS, REPO, image_with_boxes, tiny_cfg, well_scaled_model
from retinanet_d2.analysis.curves import focal_loss_curve
from retinanet_d2.analysis.loss_cdf import collect_logits, normalised_loss_cdfs
from retinanet_d2.analysis.metrics import read_metrics


def assert_png(path, min_size=(300, 200)):
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size[0] >= min_size[0] and image.size[1] >= min_size[1]


def run_tool(*args):
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_fig1_curve_values():
    p_t, loss = focal_loss_curve(2.0, points=3)
    assert p_t.tolist() == [0.25, 0.5, 0.75]
    expected = [-(1 - p) ** 2 * math.log(p) for p in (0.25, 0.5, 0.75)]
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=torch.float64))


def test_fig1_and_fig5_draw_the_papers_curves(tmp_path):
    """What the figures show, line by line, against the paper's formulas in NumPy: Fig. 1 FL = -(1 -
    p_t)^gamma log p_t for gamma 0, .5, 1, 2, 5; Fig. 5 CE, FL gamma 2 and FL* = -log(sigmoid(gamma
    x_t + beta)) / gamma for its four settings."""
    import numpy as np

    from retinanet_d2.analysis.curves import FIG1_GAMMAS, FIG5_SETTINGS, plot_focal_loss, plot_focal_loss_star

    lines = plot_focal_loss(str(tmp_path / "fig1.png")).axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["γ = 0 (CE)", "γ = 0.5", "γ = 1", "γ = 2", "γ = 5"]
    for gamma, line in zip(FIG1_GAMMAS, lines):
        p_t, loss = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
        assert len(p_t) == 500 and 0 < p_t.min() and p_t.max() < 1
        np.testing.assert_allclose(loss, -((1 - p_t) ** gamma) * np.log(p_t), rtol=1e-12)
    lines = plot_focal_loss_star(str(tmp_path / "fig5.png")).axes[0].get_lines()
    x_t = np.asarray(lines[0].get_xdata())
    log_sigmoid = lambda z: -np.logaddexp(0, -z)  # noqa: E731
    expected = [-log_sigmoid(x_t), -((1 - np.exp(log_sigmoid(x_t))) ** 2) * log_sigmoid(x_t)]
    expected += [-log_sigmoid(gamma * x_t + beta) / gamma for gamma, beta in FIG5_SETTINGS]
    assert len(lines) == len(expected) == 6
    for line, values in zip(lines, expected):
        np.testing.assert_allclose(np.asarray(line.get_ydata()), values, rtol=1e-9, atol=1e-12)


@pytest.mark.e2e
def test_loss_curve_tool_writes_fig1_and_fig5(tmp_path):
    run_tool("tools/plot_loss_curves.py", "--output-dir", str(tmp_path))
    assert_png(tmp_path / "fig1_focal_loss.png")
    assert_png(tmp_path / "fig5_focal_loss_star.png")


def test_cdfs_are_normalised_and_focus_on_hard_negatives():
    model = well_scaled_model(tiny_cfg())
    logits, labels = collect_logits(model, [[image_with_boxes(seed=0)], [image_with_boxes(seed=1)]])
    assert logits.shape[1] == 5 and len(labels) == len(logits)
    cdfs = normalised_loss_cdfs(logits, labels, [0.0, 2.0], points=11)
    for name in ("positive", "negative"):
        for cdf in cdfs[name].values():
            assert cdf[-1] == pytest.approx(1.0)
            assert all(a <= b + 1e-12 for a, b in zip(cdf, cdf[1:]))
    # With gamma 2 the easy negatives carry less of the loss than with CE (paper Fig. 4).
    assert cdfs["negative"]["2.0"][5] < cdfs["negative"]["0.0"][5]
    assert cdfs["counts"]["positive"] + cdfs["counts"]["negative"] == logits.numel()
    assert cdfs["hardest_share"]["negative"]["2.0"] > cdfs["hardest_share"]["negative"]["0.0"]


def test_hardest_share_is_the_top_five_percent_of_the_loss():
    # 40 negatives of one class (label 1 = background with K = 1): logits 0..39, so the CE loss
    # softplus(x) grows with x; the hardest ceil(5% of 40) = 2 are logits 38 and 39.
    logits = torch.arange(40, dtype=torch.float64).reshape(40, 1) / 10
    cdfs = normalised_loss_cdfs(logits, torch.ones(40, dtype=torch.long), [0.0], points=5)
    loss = torch.nn.functional.softplus(logits.flatten())
    assert cdfs["hardest_share"]["negative"]["0.0"] == pytest.approx(float(loss[-2:].sum() / loss.sum()))


@pytest.mark.e2e
def test_loss_cdf_tool_on_a_checkpoint(tmp_path):
    cfg = retinanet_d2.load_config(os.path.join(CONFIGS, "shapes_instant_test.yaml"))
    DetectionCheckpointer(build_model(cfg), save_dir=str(tmp_path)).save("model")
    out = tmp_path / "figures"
    run_tool("tools/loss_cdf.py", "--config-file", os.path.join(CONFIGS, "shapes_instant_test.yaml"),
             "--images", "2", "--output-dir", str(out), "MODEL.WEIGHTS", str(tmp_path / "model.pth"))
    assert_png(out / "fig4_loss_cdf.png")
    with open(out / "fig4_loss_cdf.json") as f:
        assert set(json.load(f)["positive"]) == {"0.0", "0.5", "1.0", "2.0"}


@pytest.mark.e2e
def test_metrics_tool(tmp_path):
    metrics = tmp_path / "metrics.json"
    records = [{"iteration": i, "total_loss": 2.0 / (i + 1), "loss_cls": 1.0, "loss_box_reg": 1.0, "lr": 0.01}
               for i in range(0, 100, 20)] + [{"iteration": 99, "bbox/AP": 12.0, "bbox/AP50": 30.0}]
    metrics.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    run_tool("tools/plot_metrics.py", str(metrics), "--output", str(tmp_path / "curves.png"))
    assert_png(tmp_path / "curves.png")
    metrics.write_text('{"iteration": 0}\nnot json\n')
    with pytest.raises(ValueError, match=r"metrics.json:2"):
        read_metrics(str(metrics))
