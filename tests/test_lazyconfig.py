"""LazyConfig (configs/lazy/*.py) through train_net.py, and users' own COCO-format data named on the
command line (--dataset), in yacs and LazyConfig runs."""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate
from detectron2.utils.events import EventStorage

import retinanet_d2
from helpers import (CONFIGS, INSTANT, LAZY_DEMO, LAZY_TINY, REPO, image_with_boxes, own_coco_files, run_train_net,
                     run_train_net_process, well_scaled_model)
from retinanet_d2.checkpoint import load_model_weights
from retinanet_d2.validation_loss import instantiate_validation_loader, mean_losses
from weights_files import randomize_norms



def test_lazy_demo_model_equals_the_yacs_demo_model():
    """Same parameters and buffers; with the same weights, the same losses and detections."""
    yacs = well_scaled_model(retinanet_d2.load_config(os.path.join(CONFIGS, "shapes_demo.yaml")))
    randomize_norms(yacs, seed=0)
    lazy = instantiate(LazyConfig.load(LAZY_DEMO).model)
    yacs_state, lazy_state = yacs.state_dict(), lazy.state_dict()
    assert {k: v.shape for k, v in yacs_state.items()} == {k: v.shape for k, v in lazy_state.items()}
    lazy.load_state_dict(yacs_state)
    batch = [image_with_boxes(seed=0), image_with_boxes(seed=1)]
    yacs.train(), lazy.train()
    with EventStorage():
        a, b = yacs(batch), lazy(batch)
    for key in ("loss_cls", "loss_box_reg"):
        assert torch.equal(a[key], b[key]), key
    yacs.eval(), lazy.eval()
    with torch.no_grad():
        x = yacs([{"image": batch[0]["image"]}])[0]["instances"]
        y = lazy([{"image": batch[0]["image"]}])[0]["instances"]
    assert len(x) > 0 and torch.equal(x.pred_boxes.tensor, y.pred_boxes.tensor) and torch.equal(x.scores, y.scores)


def _iterations(log):
    return [int(i) for i in re.findall(r"iter: (\d+)", log)]


@pytest.mark.e2e
def test_lazy_train_resume_and_eval_only(tmp_path):
    out = f"train.output_dir={tmp_path}"
    log = run_train_net("--config-file", LAZY_DEMO, *LAZY_TINY, out, "train.max_iter=4")
    assert max(_iterations(log)) == 3 and os.path.isfile(tmp_path / "model_final.pth")
    log = run_train_net("--config-file", LAZY_DEMO, "--resume", *LAZY_TINY, out, "train.max_iter=6")
    assert min(_iterations(log)) >= 4 and max(_iterations(log)) == 5  # went on from iteration 4
    assert torch.load(tmp_path / "model_final.pth", weights_only=True)["iteration"] == 5
    log = run_train_net("--config-file", LAZY_DEMO, "--eval-only", "--resume", *LAZY_TINY, out)
    assert "copypaste: AP,AP50,AP75,APs,APm,APl" in log
    report = json.loads((tmp_path / "inference" / "errors_shapes_tiny_val" / "errors.json").read_text())
    assert [row["class"] for row in report["per_class"]] == ["circle", "square", "triangle"]


@pytest.mark.e2e
def test_lazy_resume_continues_the_image_stream_exactly(tmp_path):
    """A run resumed from its iteration-1 checkpoint ends with the weights and SGD momentum of the
    uninterrupted run (the resumed loader skips the images iterations 0-1 took; flips off, a fixed seed)."""
    common = [*LAZY_TINY, "train.seed=3", "dataloader.train.mapper.augmentations.1.prob=0.0", "train.eval_period=0",
              "train.max_iter=4"]
    run_train_net("--config-file", LAZY_DEMO, *common, f"train.output_dir={tmp_path / 'whole'}")
    (tmp_path / "split").mkdir()  # as if killed after the checkpoint of iteration 1
    shutil.copy(tmp_path / "whole" / "model_0000001.pth", tmp_path / "split")
    (tmp_path / "split" / "last_checkpoint").write_text("model_0000001.pth")
    log = run_train_net("--config-file", LAZY_DEMO, "--resume", *common, f"train.output_dir={tmp_path / 'split'}")
    assert "Starting training from iteration 2" in log
    whole = torch.load(tmp_path / "whole" / "model_final.pth", weights_only=False)
    split = torch.load(tmp_path / "split" / "model_final.pth", weights_only=False)
    assert whole["iteration"] == split["iteration"] == 3
    for name, value in whole["model"].items():
        assert torch.equal(value, split["model"][name]), name
    whole_sgd, split_sgd = (c["trainer"]["_trainer"]["optimizer"]["state"] for c in (whole, split))
    assert len(whole_sgd) == len(split_sgd) > 0
    for key, state in whole_sgd.items():
        assert torch.equal(state["momentum_buffer"], split_sgd[key]["momentum_buffer"])


@pytest.mark.e2e
def test_lazy_training_logs_the_validation_loss_of_its_weights(tmp_path):
    """train.validation_loss_period: the logged losses equal those of model_final.pth on dataloader.test."""
    overrides = [*LAZY_TINY, "train.validation_loss_period=2", "train.max_iter=4", "train.eval_period=0"]
    run_train_net("--config-file", LAZY_DEMO, *overrides, f"train.output_dir={tmp_path}")
    records = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    logged = {r["iteration"]: r for r in records if "validation_loss" in r}
    assert sorted(logged) == [1, 3]
    cfg = LazyConfig.apply_overrides(LazyConfig.load(LAZY_DEMO), overrides)
    model = instantiate(cfg.model).train()
    load_model_weights(model, str(tmp_path / "model_final.pth"))
    with EventStorage():
        expected = mean_losses(model, instantiate_validation_loader(cfg))
    for name in ("loss_cls", "loss_box_reg"):
        assert logged[3][f"validation_{name}"] == pytest.approx(expected[name], rel=1e-5)


@pytest.mark.e2e
def test_lazy_eval_only_loads_weights_in_any_format(tmp_path):
    """train.init_checkpoint goes through RetinaNetCheckpointer (here a detectron2 model-zoo pickle)."""
    model = instantiate(LazyConfig.load(LAZY_DEMO).model)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("weights")
    log = run_train_net(
        "--config-file", LAZY_DEMO, "--eval-only", *LAZY_TINY, f"train.output_dir={tmp_path / 'eval'}",
        f"train.init_checkpoint={tmp_path / 'weights.pth'}",
    )
    assert "copypaste: AP,AP50,AP75,APs,APm,APl" in log


@pytest.mark.e2e
def test_lazy_training_in_two_cpu_processes(tmp_path):
    log = run_train_net_process("--config-file", LAZY_DEMO, "--num-gpus", "2", *LAZY_TINY, f"train.output_dir={tmp_path}", "train.max_iter=2")
    assert max(_iterations(log)) == 1 and os.path.isfile(tmp_path / "model_final.pth")


@pytest.mark.e2e
def test_own_coco_data_from_the_command_line_yacs_and_lazy(tmp_path):
    (train_json, train_images), (val_json, val_images) = own_coco_files()
    datasets = ["--dataset", "mine_train", train_json, train_images, "--dataset", "mine_val", val_json, val_images]
    log = run_train_net(
        "--config-file", INSTANT, *datasets, "DATASETS.TRAIN", "('mine_train',)", "DATASETS.TEST", "('mine_val',)",
        "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", str(tmp_path / "yacs"),
        "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0",  # an untrained model: keep every candidate
    )
    assert "copypaste: AP,AP50,AP75,APs,APm,APl" in log
    with open(tmp_path / "yacs" / "inference" / "coco_instances_results.json") as f:
        results = json.load(f)
    with open(val_json) as f:
        image_ids = {image["id"] for image in json.load(f)["images"]}
    assert {r["image_id"] for r in results} == image_ids  # every image of the user's val set
    log = run_train_net(
        "--config-file", LAZY_DEMO, *datasets, *LAZY_TINY, "dataloader.train.dataset.names=mine_train",
        "dataloader.test.dataset.names=mine_val", "train.max_iter=2", "train.eval_period=2",
        f"train.output_dir={tmp_path / 'lazy'}",
    )
    assert "copypaste: AP,AP50,AP75,APs,APm,APl" in log


@pytest.mark.e2e
def test_own_data_with_the_wrong_class_count_is_named(tmp_path):
    (train_json, train_images), _ = own_coco_files()
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "train_net.py"), "--config-file", LAZY_DEMO, "--dataset", "mine", train_json,
         train_images, *LAZY_TINY, "dataloader.train.dataset.names=mine", "model.num_classes=5",
         f"train.output_dir={tmp_path}", "train.max_iter=1"],
        capture_output=True, text=True, cwd=REPO,
    )
    assert result.returncode != 0
    assert "model.num_classes=5, but dataset 'mine' has 3 classes" in result.stderr


@pytest.mark.parametrize("config", ["shapes_demo.py", "retinanet_R50_FPN_1x.py"])
def test_lazy_evaluator_scores_as_many_detections_as_the_model_keeps(config):
    cfg = LazyConfig.load(os.path.join(CONFIGS, "lazy", config))
    assert cfg.dataloader.evaluator.max_dets_per_image == cfg.model.max_detections_per_image == 100
    cfg = LazyConfig.apply_overrides(cfg, ["model.max_detections_per_image=300", "train.output_dir=/x"])
    assert cfg.dataloader.evaluator.max_dets_per_image == 300
    assert cfg.dataloader.evaluator.output_dir == "/x/inference"  # the error analysis goes beside the results
