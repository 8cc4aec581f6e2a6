"""The study tool: resumable grid of settings x seeds, one JSON, mean +- std per setting."""
import json
import math
import os

import pytest

from helpers import CONFIGS
from lab.study import (
    PAPER_GRID,
    Setting,
    judge_claims,
    load_results,
    plot_summary,
    run_grid,
    summarize,
)

GRID = [Setting("a", ["X", "1"], "paper a"), Setting("b", ["X", "2"], "paper b")]


def fake_runner(calls):
    def run(config_file, overrides, output_dir):
        calls.append((tuple(overrides), output_dir))
        seed = int(overrides[overrides.index("SEED") + 1])
        value = float(overrides[overrides.index("X") + 1])
        return {"bbox/AP": 10 * value + seed, "bbox/AP50": 0.0, "bbox/AP75": 0.0, "wall_s": 1.0}
    return run


def test_grid_runs_each_pair_once_and_resumes(tmp_path):
    path, calls = str(tmp_path / "study.json"), []
    run_grid("cfg.yaml", GRID, [1, 2], path, str(tmp_path / "out"), ["BASE", "0"], runner=fake_runner(calls))
    assert len(calls) == 4 and all(c[0][:2] == ("BASE", "0") for c in calls)
    assert len({c[1] for c in calls}) == 4  # one folder per run
    run_grid("cfg.yaml", GRID, [1, 2, 3], path, str(tmp_path / "out"), ["BASE", "0"], runner=fake_runner(calls))
    assert len(calls) == 6  # only seed 3 was new
    summary = summarize(load_results(path))
    # a: AP = 10 + seed over seeds 1, 2, 3 -> mean 12, sample std 1; b: 20 + seed -> 22, 1.
    assert summary == {"a": {"mean": 12.0, "std": 1.0, "n": 3}, "b": {"mean": 22.0, "std": 1.0, "n": 3}}
    plot_summary(summary, GRID, str(tmp_path / "study.png"))
    assert os.path.getsize(tmp_path / "study.png") > 1000


def test_parallel_runs_save_each_result_and_a_failure_stops_what_has_not_started(tmp_path):
    path, calls = str(tmp_path / "study.json"), []
    grid = [*GRID, Setting("broken", ["X", "-1"], "paper"), Setting("c", ["X", "3"], "paper c")]
    succeed = fake_runner(calls)

    def runner(config_file, overrides, output_dir):
        if "-1" in overrides:
            raise RuntimeError(f"training in {output_dir} failed")
        return succeed(config_file, overrides, output_dir)

    with pytest.raises(RuntimeError, match=r"broken.seed1 failed"):
        run_grid("cfg.yaml", grid, [1, 2], path, str(tmp_path / "out"), runner=runner, jobs=2)
    # Seed-major, 2 at a time: a and b run first; "broken" starts third and c (seed 1) runs only if it
    # started before the failure was seen; nothing of seed 2 starts.
    saved = load_results(path)
    assert {"a | seed 1", "b | seed 1"} <= set(saved) <= {"a | seed 1", "b | seed 1", "c | seed 1"}
    assert len(saved) == len(calls)
    assert all(saved[f"{s} | seed 1"]["bbox/AP"] == 10 * v + 1 for s, v in (("a", 1), ("b", 2)))


def test_claims_are_judged_against_the_seed_spread():
    def row(mean, std):
        return {"mean": mean, "std": std, "n": 4}

    summary = {"FL g2 a.25": row(30.0, 1.0), "CE a0.25": row(20.0, 1.0), "CE a0.75": row(29.0, 1.0),
               "FL g5.0 a.25": row(33.0, 1.0), "OHEM plain": row(28.5, 1.0)}
    rows = {r["worse"]: r for r in judge_claims(summary)}
    # Best CE is a0.75 (29.0): margin 1.0, spread sqrt(1/4 + 1/4) = 0.707 -> 1.0 < 1.414: noise.
    assert rows["CE a0.75"]["margin"] == 1.0 and rows["CE a0.75"]["spread"] == pytest.approx(math.sqrt(0.5))
    assert rows["CE a0.75"]["verdict"] == "within seed noise"
    assert rows["FL g5.0 a.25"]["verdict"] == "reversed" and rows["FL g5.0 a.25"]["margin"] == -3.0
    assert rows["OHEM plain"]["verdict"] == "held"  # 1.5 > 1.414
    # Claims whose settings were not run (OHEM 1:3, g0.5, g1, no prior) are left out.
    assert set(rows) == {"CE a0.75", "FL g5.0 a.25", "OHEM plain"}


def test_a_bad_results_file_is_named(tmp_path):
    path = tmp_path / "study.json"
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"study\.json: not a study results file"):
        load_results(str(path))


def test_paper_grid_settings_are_distinct_and_complete():
    names = [s.name for s in PAPER_GRID]
    assert len(set(names)) == len(names) == 11
    assert {"CE a0.25", "CE a0.5", "CE a0.75", "CE a0.9", "FL g0.5 a.25", "FL g1.0 a.25", "FL g5.0 a.25"} <= set(names)


@pytest.mark.e2e
def test_tool_trains_a_tiny_grid_for_real(tmp_path):
    from helpers import load_tool

    results, backbone = str(tmp_path / "study.json"), str(tmp_path / "backbone.pth")
    argv = ["--settings", "FL g2 a.25", "CE a0.75", "--seeds", "1", "--results", results,
            "--config-file", os.path.join(CONFIGS, "shapes_instant_test.yaml"), "--output-root", str(tmp_path / "runs"),
            "--pretrain-iters", "1", "--pretrain-datasets", "shapes_tiny_train", "shapes_tiny_val",
            "SOLVER.MAX_ITER", "2", "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0", "MODEL.WEIGHTS", backbone]
    assert load_tool("study").main(argv) == 0
    assert json.load(open(backbone + ".json"))["iterations"] == 1  # pretrained once, then loaded by each run
    runs = json.load(open(results))
    assert sorted(r["setting"] for r in runs.values()) == ["CE a0.75", "FL g2 a.25"]
    assert all(r["wall_s"] > 0 for r in runs.values())
    # Each recorded AP is the one pycocotools gives that run's detections on the split it evaluated.
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from retinanet_d2.data.shapes import SPLITS, default_root, split_paths

    gt = COCO(split_paths(default_root(), SPLITS["shapes_tiny_val"])[0])
    for run in runs.values():
        folder = tmp_path / "runs" / run["setting"].replace(" ", "_") / f"seed{run['seed']}"
        evaluation = COCOeval(gt, gt.loadRes(str(folder / "inference" / "coco_instances_results.json")), "bbox")
        evaluation.evaluate(), evaluation.accumulate(), evaluation.summarize()
        assert run["bbox/AP"] == pytest.approx(100 * evaluation.stats[0], abs=1e-9)
    before = os.path.getmtime(results)
    assert load_tool("study").main(argv) == 0  # nothing left to run: the file is not rewritten
    assert os.path.getmtime(results) == before


def test_imbalance_measure_counts_every_anchor():
    import torch
    from detectron2.modeling import build_model
    from detectron2.modeling.matcher import Matcher
    from detectron2.structures import Boxes, pairwise_iou

    from helpers import image_with_boxes, tiny_cfg
    from lab.study import anchors_per_foreground

    model = build_model(tiny_cfg())
    batch = [image_with_boxes(seed=0)]  # 160x224: P3 20x28, P4 10x14, P5 5x7, P6 3x4, P7 2x2 positions
    measured = anchors_per_foreground(model, [batch])
    assert measured["anchors_per_image"] == 9 * (560 + 140 + 35 + 12 + 4)
    # The same counts from detectron2's Matcher and pairwise_iou on the model's anchors.
    features = [model.backbone(torch.zeros(1, 3, 160, 224))[f] for f in model.head_in_features]
    iou = pairwise_iou(batch[0]["instances"].gt_boxes, Boxes.cat(model.anchor_generator(features)))
    _, match = Matcher([0.4, 0.5], [0, -1, 1], allow_low_quality_matches=True)(iou)
    valid, foreground = int((match >= 0).sum()), int((match == 1).sum())
    far = int((iou.max(dim=0).values == 0).sum())
    assert measured["anchors_per_foreground"] == valid / foreground
    assert measured["negatives_per_positive_pair"] == (valid * 5 - foreground) / foreground
    assert measured["far_negative_fraction"] == far / valid and 0 < far < valid
    assert measured["far_pairs_per_positive_pair"] == far * 5 / foreground
