"""The study tool: resumable grid of settings x seeds, one JSON, mean +- std per setting."""
import json
import math
import os

import pytest

from helpers import CONFIGS
from retinanet_d2.analysis.study import PAPER_GRID, Setting, load_results, plot_summary, run_grid, summarize

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


def test_a_bad_results_file_is_named(tmp_path):
    path = tmp_path / "study.json"
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"study\.json: not a study results file"):
        load_results(str(path))


def test_paper_grid_settings_are_distinct_and_complete():
    names = [s.name for s in PAPER_GRID]
    assert len(set(names)) == len(names) == 11
    assert {"CE a0.25", "CE a0.5", "CE a0.75", "CE a0.9", "FL g0.5 a.25", "FL g1.0 a.25", "FL g5.0 a.25"} <= set(names)


def test_tool_trains_a_tiny_grid_for_real(tmp_path):
    from test_deploy import load_tool

    results = str(tmp_path / "study.json")
    argv = ["--settings", "FL g2 a.25", "CE a0.75", "--seeds", "1", "--results", results,
            "--config-file", os.path.join(CONFIGS, "shapes_instant_test.yaml"), "--output-root", str(tmp_path / "runs"),
            "SOLVER.MAX_ITER", "2", "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0"]
    assert load_tool("study").main(argv) == 0
    runs = json.load(open(results))
    assert sorted(r["setting"] for r in runs.values()) == ["CE a0.75", "FL g2 a.25"]
    assert all(math.isfinite(r["bbox/AP"]) and r["wall_s"] > 0 for r in runs.values())
    before = os.path.getmtime(results)
    assert load_tool("study").main(argv) == 0  # nothing left to run: the file is not rewritten
    assert os.path.getmtime(results) == before


def test_imbalance_measure_counts_every_anchor():
    from detectron2.modeling import build_model

    from helpers import image_with_boxes, tiny_cfg
    from retinanet_d2.analysis.study import anchors_per_foreground

    model = build_model(tiny_cfg())
    batch = [image_with_boxes(seed=0)]  # 160x224: P3 20x28, P4 10x14, P5 5x7, P6 3x4, P7 2x2 positions
    measured = anchors_per_foreground(model, [batch])
    assert measured["anchors_per_image"] == 9 * (560 + 140 + 35 + 12 + 4)
    assert 10 < measured["anchors_per_foreground"] < measured["anchors_per_image"]
