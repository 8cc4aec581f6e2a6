"""tools/imbalance_sweep.py: its settings, the phases (seed 1, then the best of each m on seeds 2
and 3, seeds 4-5 when inconclusive, the sparse-canvas check), reuse of the study's m 1 runs, a diverged
run recorded as AP 0, and the verdict rule."""
import json
import math
import os

import pytest

from helpers import INSTANT, load_tool

sweep = load_tool("imbalance_sweep")


def test_settings_are_named_as_the_study_names_them_at_m_1():
    names = {m: [s.name for group in groups.values() for s in group] for m, groups in sweep.sweep_settings().items()}
    assert names[1] == ["FL g2 a.25", "FL g2 a.5", "CE a0.25", "CE a0.5", "CE a0.75", "CE a0.9"]
    assert names[100] == ["FL g2 a.25 m100", "FL g2 a.5 m100", "CE a0.9 m100", "CE a0.99 m100", "CE a0.999 m100"]
    ce = sweep.setting("CE", "0.99", 10)
    assert ce.overrides == ["MODEL.RETINANET.FOCAL_LOSS_GAMMA", "0.0", "MODEL.RETINANET.FOCAL_LOSS_ALPHA", "0.99",
                            "MODEL.FOCAL_RETINANET.FAR_NEGATIVE_WEIGHT", "10.0"]


def fake_ap(overrides, seed, fl_drop_at_100=0.0):
    """FL: 50 + alpha + seed at every m (minus ``fl_drop_at_100`` at m 100); CE: 50 - m / 10 + alpha + seed
    (its best is its highest alpha); CE alpha .999 at m 100 diverges."""
    alpha = float(overrides[overrides.index("MODEL.RETINANET.FOCAL_LOSS_ALPHA") + 1])
    m = float(overrides[overrides.index("MODEL.FOCAL_RETINANET.FAR_NEGATIVE_WEIGHT") + 1]) \
        if "MODEL.FOCAL_RETINANET.FAR_NEGATIVE_WEIGHT" in overrides else 1.0
    if "MODEL.RETINANET.FOCAL_LOSS_GAMMA" not in overrides:
        return 50.0 + alpha + seed - (fl_drop_at_100 if m == 100 else 0.0)
    if alpha == 0.999:
        raise RuntimeError(f"training failed:\nFloatingPointError: {sweep.DIVERGED}, iteration 7")
    return 50.0 - m / 10 + alpha + seed


@pytest.mark.parametrize("fl_drop_at_100,extra_runs", [(0.0, 0), (5.0, 4)], ids=["held", "inconclusive"])
def test_phases_reuse_and_divergence(tmp_path, monkeypatch, fl_drop_at_100, extra_runs):
    """Held on seeds 1-3 (FL stable at m 100): two phases. Inconclusive (FL loses 5 AP at m 100): then
    the best FL and CE at m 100 on seeds 4 and 5 too (VERDICT_RULE)."""
    calls = []

    def fake_train_net_run(config_file, overrides, output_dir, threads=0):
        seed = int(overrides[overrides.index("SEED") + 1])
        calls.append((tuple(overrides), seed))
        ap = fake_ap(overrides, seed, fl_drop_at_100)
        os.makedirs(output_dir, exist_ok=True)
        with open(os.path.join(output_dir, "metrics.json"), "w") as f:
            for iteration in (19, 499, 519):
                f.write(json.dumps({"iteration": iteration, sweep.SHARE_KEY: iteration / 1000}) + "\n")
        return {"bbox/AP": ap, "bbox/AP50": ap, "bbox/AP75": ap, "wall_s": 1.0}

    monkeypatch.setattr(sweep, "train_net_run", fake_train_net_run)
    # The natural check on the tiny split at twice its size (the real sparse split is 2000 images of 384 px).
    sparse_overrides = ["INPUT.MIN_SIZE_TRAIN", "(256,)", "INPUT.MAX_SIZE_TRAIN", "256"]
    monkeypatch.setattr(sweep, "SPARSE_OVERRIDES", sparse_overrides)
    reused = tmp_path / "study.json"
    reused.write_text(json.dumps({f"CE a0.9 | seed {k}": {"setting": "CE a0.9", "seed": k, "bbox/AP": 60.0 + k,
                                                          "bbox/AP50": 0, "bbox/AP75": 0} for k in (1, 2, 3)}))
    results = tmp_path / "sweep.json"
    argv = ["--config-file", INSTANT, "--results", str(results), "--reuse", str(reused), "--pretrain-iters", "0",
            "--output-root", str(tmp_path / "out"), "MODEL.WEIGHTS", ""]
    assert sweep.main(argv) == 0
    runs = json.loads(results.read_text())
    # Phase 1: every setting at seed 1 except the reused CE a0.9 (5 new at m 1, 5 at m 10, 5 at m 100);
    # phase 4: four more.
    assert sum(seed == 1 for _, seed in calls) == 15 + 4
    # Best by seed 1: m 1 CE a0.9 (61, reused) and FL a.5 (51.5); m 10: FL a.5, CE a0.99; m 100: FL a.5,
    # CE a0.99 (a0.999 diverged: AP 0). Phase 2 runs those on seeds 2 and 3, except the reused CE a0.9.
    later = {overrides[:-2] for overrides, seed in calls if seed > 1}  # without "SEED k"
    assert len(later) == 5 and sum(1 < seed < 4 for _, seed in calls) == 10
    extra = sorted((overrides[:-2], seed) for overrides, seed in calls if seed > 3)
    assert len(extra) == extra_runs and all("100" in o[o.index("MODEL.FOCAL_RETINANET.FAR_NEGATIVE_WEIGHT") + 1]
                                            for o, _ in extra)
    assert {seed for _, seed in extra} == ({4, 5} if extra_runs else set())
    # Phase 4 at seed 1: FL a.25 and the best CE of the grid m nearest m* (a0.9 at m 1, else a0.99), on the
    # sparse split and weighted by m* on the study's split.
    sparse = [o for o, seed in calls if seed == 1 and o[-6:-2] == tuple(sparse_overrides)]
    weighted = [o for o, seed in calls if seed == 1 and "MODEL.FOCAL_RETINANET.FAR_NEGATIVE_WEIGHT" in o
                and float(o[o.index("MODEL.FOCAL_RETINANET.FAR_NEGATIVE_WEIGHT") + 1]) not in sweep.WEIGHTS]
    weight = {float(o[o.index("MODEL.FOCAL_RETINANET.FAR_NEGATIVE_WEIGHT") + 1]) for o in weighted}
    assert len(sparse) == 2 and len(weighted) == 2 and len(weight) == 1 and weight.pop() > 1
    ce_alpha = "0.9" if min(sweep.WEIGHTS, key=lambda m: abs(math.log(m / float(weighted[0][-3])))) == 1 else "0.99"
    assert [o[o.index("MODEL.RETINANET.FOCAL_LOSS_ALPHA") + 1] if "MODEL.RETINANET.FOCAL_LOSS_ALPHA" in o else "0.25"
            for o in sparse + weighted] == ["0.25", ce_alpha, "0.25", ce_alpha]
    assert "FL g2 a.25 sparse | seed 1" in runs
    assert runs["CE a0.999 m100 | seed 1"]["diverged"] and runs["CE a0.999 m100 | seed 1"]["bbox/AP"] == 0.0
    assert runs["CE a0.9 | seed 2"]["reused"] and runs["CE a0.9 m100 | seed 1"]["far_share_first500"] == pytest.approx(0.259)
    assert runs["CE a0.99 m10 | seed 3"]["far_share"] == [[19, 0.019], [499, 0.499], [519, 0.519]]
    assert os.path.exists(tmp_path / "sweep.png")
    calls.clear()
    assert sweep.main(argv) == 0 and calls == []  # resumed: nothing repeats


def verdict_of(fl, ce):
    """The verdict on hand-made runs: fl[m] and ce[m] the AP of the best FL and CE at m, seeds 1-3
    (plus seed - 2: seed noise that pairs out)."""
    best = {m: {"FL": sweep.setting("FL", "0.25", m), "CE": sweep.setting("CE", "0.9", m)} for m in sweep.WEIGHTS}
    results = {}
    for m in sweep.WEIGHTS:
        for loss, ap in (("FL", fl[m]), ("CE", ce[m])):
            for seed in (1, 2, 3):
                results[f"{best[m][loss].name} | seed {seed}"] = {"bbox/AP": ap + seed - 2 + 0.1 * (seed == 3)}
    return best, results


@pytest.mark.parametrize("fl,ce,share,expected", [
    ({1: 66, 10: 66, 100: 65}, {1: 67, 10: 65, 100: 62}, 0.8, "held"),  # Δ -1 -> +3, FL -1, CE -5
    ({1: 66, 10: 64, 100: 60}, {1: 67, 10: 65, 100: 61}, 0.8, "not held"),  # Δ stays -1 while the knob bites
    ({1: 66, 10: 64, 100: 60}, {1: 67, 10: 65, 100: 61}, 0.3, "inconclusive"),  # ... but it does not bite
    ({1: 66, 10: 66, 100: 63}, {1: 67, 10: 65, 100: 61.5}, 0.8, "inconclusive"),  # Δ +1.5, FL falls 3
])
def test_verdict_follows_the_rule(fl, ce, share, expected):
    best, results = verdict_of(fl, ce)
    outcome = sweep.verdict(results, best, share, (1, 2, 3))
    assert outcome["verdict"] == expected
    assert outcome["growth"] == pytest.approx((fl[100] - ce[100]) - (fl[1] - ce[1]))
    assert outcome["deltas"][100]["se"] == pytest.approx(0.0, abs=1e-12)  # the seed noise pairs out


def test_matching_weight_and_sparse_check_settings():
    """m* from the measured imbalance: pairs(m) = pairs(1) + (m - 1) * far pairs (the study's split:
    1,075.7 and 864.85; the sparse split 5,028 -> m* 5.6); CE's alpha is the best of the nearest grid m."""
    imbalance = {"negatives_per_positive_pair": 1075.675, "far_pairs_per_positive_pair": 864.85}
    assert sweep.matching_weight(imbalance, 5027.99) == 5.6
    assert sweep.matching_weight(imbalance, 1075.675) == 1.0
    best = {1: {"CE": sweep.setting("CE", "0.75", 1)}, 10: {"CE": sweep.setting("CE", "0.9", 10)},
            100: {"CE": sweep.setting("CE", "0.99", 100)}}
    checks = sweep.sparse_check_settings(5.6, best)  # log distance to 10 (0.58) below that to 1 (1.72)
    assert [s.name for s in checks["sparse"]] == ["FL g2 a.25 sparse", "CE a0.9 sparse"]
    assert checks["sparse"][1].overrides[-len(sweep.SPARSE_OVERRIDES):] == sweep.SPARSE_OVERRIDES
    assert [s.name for s in checks["weighted"]] == ["FL g2 a.25 m5.6", "CE a0.9 m5.6"]
    assert [s.name for s in sweep.sparse_check_settings(2.5, best)["weighted"]] == ["FL g2 a.25 m2.5", "CE a0.75 m2.5"]
