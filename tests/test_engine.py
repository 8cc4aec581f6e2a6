"""The engine (retinanet_d2/engine): every feature of a run under both kinds of config, one model build
per run, and detectron2's own loops (the stock DefaultTrainer, a lazyconfig_train_net-shaped loop)
training FocalRetinaNet unchanged."""
import json
import os
import subprocess
import sys

import cv2
import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import DefaultTrainer, SimpleTrainer, default_writers, hooks
from detectron2.evaluation import COCOEvaluator, inference_on_dataset

import retinanet_d2
import train_net
from helpers import INSTANT, LAZY_DEMO, LAZY_TINY, REPO, own_coco_files, train_net_main
from retinanet_d2.checkpoint import load_model_weights
from retinanet_d2.engine import run_parts
from retinanet_d2.modeling.meta_arch import FocalRetinaNet
from retinanet_d2.predict import Predictor



def every_feature(kind: str, out: str, train_name: str, val_name: str):
    """Config overrides of ``kind`` that turn on every feature: evaluation every 2 iterations with
    test-time augmentation, PreciseBN (a BatchNorm backbone), the validation loss, model_best.pth by
    AP50, the error analysis (on by default), all candidates kept; user datasets by name."""
    if kind == "yacs":
        return ["DATASETS.TRAIN", f"('{train_name}',)", "DATASETS.TEST", f"('{val_name}',)", "OUTPUT_DIR", out,
                "SOLVER.MAX_ITER", "4", "TEST.EVAL_PERIOD", "2", "SOLVER.CHECKPOINT_PERIOD", "2",
                "TEST.AUG.ENABLED", "True", "TEST.AUG.MIN_SIZES", "(112, 128)", "TEST.AUG.MAX_SIZE", "200",
                "TEST.PRECISE_BN.ENABLED", "True", "TEST.PRECISE_BN.NUM_ITER", "2", "MODEL.RESNETS.NORM", "BN",
                "MODEL.FOCAL_RETINANET.VALIDATION_LOSS_PERIOD", "2", "MODEL.FOCAL_RETINANET.BEST_METRIC", "bbox/AP50",
                "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0"]
    return [*LAZY_TINY, "train.seed=1", f"dataloader.train.dataset.names={train_name}",
            f"dataloader.test.dataset.names={val_name}",
            f"train.output_dir={out}", "train.max_iter=4", "train.eval_period=2",
            "train.tta.enabled=True", "train.tta.min_sizes=[112,128]", "train.tta.max_size=200",
            "train.precise_bn.enabled=True", "train.precise_bn.num_iter=2",
            "model.backbone.bottom_up.stem.norm=BN", "model.backbone.bottom_up.stages.norm=BN",
            "train.validation_loss_period=2", "train.best_checkpointer.val_metric=bbox/AP50", "model.test_score_thresh=0.0"]


def run(config, *argv):
    """train_net.main in this process, with the command line ``--config-file config argv``."""
    return train_net_main("--config-file", config, *argv)


@pytest.mark.e2e
@pytest.mark.parametrize("kind", ["yacs", "lazy"])
def test_every_feature_under_both_config_kinds(tmp_path, monkeypatch, kind):
    config = INSTANT if kind == "yacs" else LAZY_DEMO
    (train_json, train_images), (val_json, val_images) = own_coco_files()
    names = (f"mine_{kind}_train", f"mine_{kind}_val")
    datasets = ["--dataset", names[0], train_json, train_images, "--dataset", names[1], val_json, val_images]
    out = str(tmp_path / f"run_{kind}")  # a folder of its own: detectron2's setup_logger caches one per path
    opts = every_feature(kind, out, *names)
    builds = []
    original_init = FocalRetinaNet.__init__
    monkeypatch.setattr(FocalRetinaNet, "__init__", lambda self, *a, **k: (builds.append(1), original_init(self, *a, **k))[1])
    results = run(config, *datasets, *opts)
    monkeypatch.undo()
    assert len(builds) == 1  # the pre-run check's model is the one trained

    assert set(results) == {"bbox", "bbox_TTA"}  # the last evaluation, plain and augmented
    assert os.path.isfile(os.path.join(out, "inference_TTA", "coco_instances_results.json"))
    log = open(os.path.join(out, "log.txt"), encoding="utf-8").read()
    assert log.count("Running precise-BN") == 2  # before each of the 2 evaluations (iterations 1 and 3)
    records = [json.loads(line) for line in open(os.path.join(out, "metrics.json"), encoding="utf-8")]
    written = [1, 3] if kind == "lazy" else [3]  # yacs writers write every 20 iterations (and at the end)
    assert sorted(r["iteration"] for r in records if "validation_loss" in r) == written
    assert os.path.isfile(os.path.join(out, "model_best.pth"))
    report = json.load(open(os.path.join(out, "inference", f"errors_{names[1]}", "errors.json"), encoding="utf-8"))
    assert [row["class"] for row in report["per_class"]] == ["circle", "square", "triangle"]

    # Resumed with a lower learning rate: the config's rate wins over the checkpoint's.
    lower = ["SOLVER.BASE_LR", "0.001", "SOLVER.MAX_ITER", "6"] if kind == "yacs" else ["optimizer.lr=0.001", "train.max_iter=6"]
    run(config, "--resume", *datasets, *opts, *lower)
    log = open(os.path.join(out, "log.txt"), encoding="utf-8").read()
    assert "The config's learning rate differs from the checkpoint's" in log
    assert torch.load(os.path.join(out, "model_final.pth"), weights_only=True)["iteration"] == 5

    # The Predictor of the same config gives the final evaluation's detections of an image.
    weights = ["MODEL.WEIGHTS", os.path.join(out, "model_final.pth")] if kind == "yacs" else \
        [f"train.init_checkpoint={os.path.join(out, 'model_final.pth')}"]
    predictor = Predictor(train_net.load_run_config(config, [*opts, *weights]))
    evaluated = json.load(open(os.path.join(out, "inference", "coco_instances_results.json"), encoding="utf-8"))
    image = json.load(open(val_json, encoding="utf-8"))["images"][0]
    expected = sorted((r for r in evaluated if r["image_id"] == image["id"]), key=lambda r: -r["score"])[:5]
    found = predictor(cv2.imread(os.path.join(val_images, image["file_name"])))["instances"]
    assert len(expected) == 5
    torch.testing.assert_close(found.scores[:5], torch.tensor([r["score"] for r in expected]), rtol=0, atol=1e-5)
    xyxy = [[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in expected)]
    torch.testing.assert_close(found.pred_boxes.tensor[:5], torch.tensor(xyxy), rtol=0, atol=1e-3)


@pytest.mark.parametrize("kind", ["yacs", "lazy"])
def test_a_missing_image_is_named_before_training_under_both_kinds(tmp_path, kind):
    (train_json, train_images), _ = own_coco_files()
    records = json.load(open(train_json, encoding="utf-8"))
    records["images"][1]["file_name"] = "gone.png"
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(records))
    name = f"broken_{kind}"
    opts = every_feature(kind, str(tmp_path / "run"), name, name)
    with pytest.raises(ValueError, match=r"gone\.png: missing"):
        run(INSTANT if kind == "yacs" else LAZY_DEMO, "--dataset", name, str(broken), train_images, *opts)
    assert not os.path.exists(tmp_path / "run" / "metrics.json")


@pytest.mark.e2e
def test_stock_default_trainer_trains_and_evaluates_focal_retinanet(tmp_path):
    """detectron2's unmodified DefaultTrainer, a project yacs config, COCOEvaluator."""
    cfg = retinanet_d2.load_config(INSTANT, ["SOLVER.MAX_ITER", "3", "OUTPUT_DIR", str(tmp_path),
                                             "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0"])
    trainer = DefaultTrainer(cfg)
    assert isinstance(trainer.model, FocalRetinaNet)
    initial = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.resume_or_load(resume=False)
    trainer.train()
    final = torch.load(tmp_path / "model_final.pth", weights_only=False)
    assert final["iteration"] == 2 and set(final["model"]) == set(initial)
    assert not torch.equal(final["model"]["head.cls_score.weight"], initial["head.cls_score.weight"])
    evaluator = COCOEvaluator("shapes_tiny_val", output_dir=str(tmp_path / "eval"))
    results = DefaultTrainer.test(cfg, trainer.model, evaluators=[evaluator])
    assert list(results["bbox"])[:6] == ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    assert results["bbox"]["AP50"] >= 0.0  # a number: the evaluator scored FocalRetinaNet's detections


@pytest.mark.e2e
def test_a_lazyconfig_trains_in_a_lazyconfig_train_net_shaped_loop(tmp_path):
    """detectron2's tools/lazyconfig_train_net.py do_train, step for step, on the project's LazyConfig."""
    cfg = LazyConfig.apply_overrides(LazyConfig.load(LAZY_DEMO), [
        *LAZY_TINY, "dataloader.train.dataset.names=shapes_tiny_train", "dataloader.test.dataset.names=shapes_tiny_val",
        f"train.output_dir={tmp_path}", "train.max_iter=3", "train.eval_period=3"])
    model = instantiate(cfg.model).to(cfg.train.device)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    trainer = SimpleTrainer(model, instantiate(cfg.dataloader.train), optimizer)
    checkpointer = DetectionCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    evaluations = []
    trainer.register_hooks([
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
        hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer),
        hooks.EvalHook(cfg.train.eval_period, lambda: evaluations.append(inference_on_dataset(
            model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator)))),
        hooks.PeriodicWriter(default_writers(cfg.train.output_dir, cfg.train.max_iter), period=cfg.train.log_period),
    ])
    trainer.train(0, cfg.train.max_iter)
    assert torch.load(tmp_path / "model_final.pth", weights_only=False)["iteration"] == 2
    assert len(evaluations) == 1 and list(evaluations[0]["bbox"])[:2] == ["AP", "AP50"]
    reloaded = instantiate(cfg.model)
    load_model_weights(reloaded, str(tmp_path / "model_final.pth"))  # and the project reads what it wrote
    for name, value in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], value), name


@pytest.mark.e2e
def test_eval_only_builds_the_model_once(tmp_path, monkeypatch):
    weights = tmp_path / "weights.pth"
    torch.save({"model": run_parts(retinanet_d2.load_config(INSTANT)).build_model().state_dict()}, weights)
    builds = []
    original_init = FocalRetinaNet.__init__
    monkeypatch.setattr(FocalRetinaNet, "__init__", lambda self, *a, **k: (builds.append(1), original_init(self, *a, **k))[1])
    run(INSTANT, "--eval-only", "MODEL.WEIGHTS", str(weights), "OUTPUT_DIR", str(tmp_path / "eval"))
    assert len(builds) == 1


@pytest.mark.e2e
def test_the_engine_imports_no_plotting():
    """A training run imports the engine; matplotlib (the error analysis's figures) only once an analysis runs."""
    code = "import sys, retinanet_d2.engine; print('matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
