"""End to end through train_net.py: a few DefaultTrainer iterations on the embedded dataset, then
--eval-only from the checkpoint it wrote; and every config file parses and builds."""
import glob
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

import retinanet_d2
from helpers import (CONFIGS, INSTANT, REPO, as_detectron2_retinanet, image_with_boxes, run_train_net, train_net_main,
                     well_scaled_model)
from weights_files import detectron_blobs, randomize_norms, write_pickle



@pytest.mark.e2e
def test_train_then_eval_only_from_the_checkpoint(tmp_path):
    keep_all = ["MODEL.RETINANET.SCORE_THRESH_TEST", "0.0"]  # a 10-iteration model: keep every candidate
    log = run_train_net("--config-file", INSTANT, "OUTPUT_DIR", str(tmp_path), *keep_all)
    assert "iter: 9" in log
    assert os.path.isfile(tmp_path / "model_final.pth")
    assert os.path.isfile(tmp_path / "model_0000004.pth")
    log = run_train_net(
        "--config-file", INSTANT, "--eval-only", "MODEL.WEIGHTS", str(tmp_path / "model_final.pth"),
        "OUTPUT_DIR", str(tmp_path / "eval"), *keep_all,
    )
    assert "copypaste: AP,AP50,AP75,APs,APm,APl" in log
    # The evaluation after training and --eval-only from its checkpoint write the same detections.
    with open(tmp_path / "inference" / "coco_instances_results.json") as f:
        trained = json.load(f)
    with open(tmp_path / "eval" / "inference" / "coco_instances_results.json") as f:
        evaluated = json.load(f)
    assert len(trained) > 10 and trained == evaluated


def test_unreachable_weights_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape("MODEL.WEIGHTS=" + str(tmp_path / "missing.pkl"))):
        train_net_main("--config-file", INSTANT, "MODEL.WEIGHTS", str(tmp_path / "missing.pkl"), "OUTPUT_DIR", str(tmp_path))


# Each config at a small width: what it changes (loss, anchors, OHEM, sizes, heads) is kept, the
# backbone and tower widths shrink so that a training step costs a fraction of a second.
SMALL = ["MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
         "MODEL.FPN.OUT_CHANNELS", "64", "MODEL.RETINANET.NUM_CONVS", "1"]


@pytest.mark.parametrize(
    "path", sorted(glob.glob(os.path.join(CONFIGS, "**", "*.yaml"), recursive=True)),
    ids=lambda p: os.path.relpath(p, CONFIGS),
)
def test_every_config_builds_and_trains_a_step(path):
    cfg = retinanet_d2.load_config(path, SMALL)
    model = build_model(cfg)
    assert type(model).__name__ == "FocalRetinaNet"
    record = image_with_boxes(height=96, width=128)
    record["instances"].gt_classes = record["instances"].gt_classes % cfg.MODEL.RETINANET.NUM_CLASSES
    model.train()
    with EventStorage():
        losses = model([record])
    assert set(losses) == {"loss_cls", "loss_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.head.cls_score.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["retinanet_R50_FPN_1x.yaml", "retinanet_R101_FPN_1x.yaml"])
def test_the_paper_configs_build_detectron2s_retinanet_at_full_size(name):
    """Full size where size is what is tested: the same parameter names and shapes as detectron2's
    own RetinaNet built from the same config (37,915,572 parameters for R50)."""
    cfg = retinanet_d2.load_config(os.path.join(CONFIGS, name), ["MODEL.DEVICE", "cpu"])
    ours = {k: tuple(v.shape) for k, v in build_model(cfg).state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in build_model(as_detectron2_retinanet(cfg)).state_dict().items()}
    assert ours == theirs
    if name.startswith("retinanet_R50"):
        assert sum(p.numel() for p in build_model(cfg).parameters()) == 37_915_572


def test_num_classes_that_disagrees_with_the_dataset_is_named(tmp_path):
    with pytest.raises(ValueError, match="MODEL.RETINANET.NUM_CLASSES=80, but dataset 'shapes_tiny_train' has 3 classes"):
        train_net_main("--config-file", INSTANT, "MODEL.RETINANET.NUM_CLASSES", "80", "OUTPUT_DIR", str(tmp_path))


@pytest.mark.e2e
def test_demo_trains_evaluates_and_draws(tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "demo.py"), "--config-file", INSTANT, "--images", "3",
         "OUTPUT_DIR", str(tmp_path)],
        capture_output=True, text=True, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "copypaste: AP,AP50,AP75,APs,APm,APl" in result.stdout + result.stderr
    from PIL import Image

    with Image.open(tmp_path / "detections.png") as image:
        assert image.format == "PNG" and image.size == (4 * 128, 128)  # 3 images on a 4-column grid


@pytest.mark.e2e
def test_eval_only_with_a_detectron_pickle_gives_the_reference_detections(tmp_path):
    """--eval-only MODEL.WEIGHTS=<Detectron pickle> evaluates the same detections as the
    detectron2 checkpoint it was made from (Detectron has no GroupNorm: frozen BN, plain head)."""
    overrides = ["MODEL.RESNETS.NORM", "FrozenBN", "MODEL.RETINANET.NORM", ""]
    cfg = retinanet_d2.load_config(INSTANT, overrides + ["MODEL.DEVICE", "cpu"])
    reference = well_scaled_model(cfg)
    randomize_norms(reference, seed=0)
    torch.save({"model": reference.state_dict()}, tmp_path / "reference.pth")
    write_pickle({"blobs": detectron_blobs(reference)}, tmp_path / "detectron.pkl")
    detections = {}
    for name in ("reference.pth", "detectron.pkl"):
        log = run_train_net(
            "--config-file", INSTANT, "--eval-only", "MODEL.WEIGHTS", str(tmp_path / name),
            "OUTPUT_DIR", str(tmp_path / f"eval_{name}"), *overrides,
        )
        assert "copypaste: AP,AP50,AP75,APs,APm,APl" in log
        with open(tmp_path / f"eval_{name}" / "inference" / "coco_instances_results.json") as f:
            results = json.load(f)
        detections[name] = sorted((r["image_id"], r["category_id"], r["bbox"], r["score"]) for r in results)
    reference_results, detectron_results = detections["reference.pth"], detections["detectron.pkl"]
    assert len(detectron_results) == len(reference_results) > 10
    for (image, category, box, score), (ref_image, ref_category, ref_box, ref_score) in zip(detectron_results, reference_results):
        assert (image, category) == (ref_image, ref_category)
        assert box == pytest.approx(ref_box, abs=1e-2) and score == pytest.approx(ref_score, abs=1e-5)


@pytest.mark.e2e
def test_eval_only_with_a_detectron2_zoo_pickle_gives_detectron2s_own_detections(tmp_path):
    """--eval-only MODEL.WEIGHTS=<detectron2 model-zoo pickle of detectron2's own RetinaNet> writes
    the detections that detectron2's RetinaNet makes on the same test images."""
    from detectron2.data import MetadataCatalog, build_detection_test_loader
    from detectron2.evaluation.coco_evaluation import instances_to_coco_json
    from detections import matched_fraction

    overrides = ["MODEL.RETINANET.NORM", ""]  # detectron2 0.6's RetinaNetHead cannot build its GN
    cfg = retinanet_d2.load_config(INSTANT, overrides + ["MODEL.DEVICE", "cpu"])
    ref_cfg = as_detectron2_retinanet(cfg)
    reference = well_scaled_model(ref_cfg).eval()
    randomize_norms(reference, seed=0)
    arrays = {k: v.numpy() for k, v in reference.state_dict().items()}
    zoo = write_pickle({"model": arrays, "__author__": "detectron2 model zoo (test)"}, tmp_path / "model_final.pkl")
    run_train_net("--config-file", INSTANT, "--eval-only", "MODEL.WEIGHTS", zoo, "OUTPUT_DIR", str(tmp_path), *overrides)
    with open(tmp_path / "inference" / "coco_instances_results.json") as f:
        ours = json.load(f)
    expected = []
    with torch.no_grad():
        for inputs in build_detection_test_loader(ref_cfg, cfg.DATASETS.TEST[0]):
            expected += instances_to_coco_json(reference(inputs)[0]["instances"], inputs[0]["image_id"])
    assert len(ours) == len(expected) > 100
    # The evaluator writes dataset category ids, detectron2's instances_to_coco_json contiguous ones.
    contiguous = MetadataCatalog.get(cfg.DATASETS.TEST[0]).thing_dataset_id_to_contiguous_id
    for image_id in {r["image_id"] for r in expected}:
        def columns(results):
            rows = sorted((r for r in results if r["image_id"] == image_id), key=lambda r: -r["score"])
            return ([r["bbox"] for r in rows], [r["score"] for r in rows], [r["category_id"] for r in rows])
        ref_boxes, ref_scores, ref_ids = columns(expected)
        boxes, scores, ids = columns(ours)
        assert matched_fraction((boxes, scores, [contiguous[i] for i in ids]), (ref_boxes, ref_scores, ref_ids)) >= 0.99


@pytest.mark.e2e
def test_training_starts_from_a_detectron_pickle(tmp_path):
    """Fine-tuning: the training loop's checkpointer reads MODEL.WEIGHTS in other formats too (one step
    at learning rate 0 leaves the loaded weights as they are)."""
    from retinanet_d2.engine import run_parts, train

    cfg = retinanet_d2.load_config(
        INSTANT, ["MODEL.RESNETS.NORM", "FrozenBN", "MODEL.RETINANET.NORM", "", "MODEL.DEVICE", "cpu",
                  "SOLVER.BASE_LR", "0.0", "SOLVER.MAX_ITER", "1", "TEST.EVAL_PERIOD", "0"]
    )
    reference = well_scaled_model(cfg)
    cfg.MODEL.WEIGHTS = write_pickle({"blobs": detectron_blobs(reference)}, tmp_path / "detectron.pkl")
    cfg.OUTPUT_DIR = str(tmp_path / "train")
    parts = run_parts(cfg)
    model = parts.build_model()
    train(parts, model, resume=False)
    loaded = dict(model.named_parameters())
    for name, param in reference.named_parameters():
        if ".norm." not in name:  # frozen BN is loaded folded (scale, shift)
            assert torch.equal(loaded[name], param), name
