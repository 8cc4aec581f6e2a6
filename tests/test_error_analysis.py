"""tools/analyze_errors.py (and the analysis train_net.py writes after evaluation) on a hand-made
result set whose confusion matrix, threshold metrics and COCO AP are derived by hand below."""
import json
import os
import subprocess
import sys

import pytest

from coco_files import box, image_record, write_coco, write_image
from helpers import INSTANT, REPO, run_train_net

CATEGORIES = ({"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 5, "name": "bird"})


def det(image_id, category_id, bbox, score):
    return {"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score}


def hand_made(tmp_path):
    """Image 1: cat and dog found, a bird where nothing is (background), a low-scoring cat on the
    dog (below 0.5). Image 2: the bird detected as a cat (confused), the dog found. Image 3: a cat
    nobody found (missed)."""
    for name in ("a.png", "b.png", "c.png"):
        write_image(tmp_path / name, size=(100, 100))
    gt = write_coco(tmp_path, [image_record(i, n, 100, 100) for i, n in enumerate(("a.png", "b.png", "c.png"), 1)],
                    [box(1, 1, [10, 10, 20, 20], 1), box(2, 1, [50, 50, 20, 20], 2), box(3, 2, [0, 0, 30, 30], 5),
                     box(4, 2, [60, 60, 30, 30], 2), box(5, 3, [20, 20, 40, 40], 1)], CATEGORIES)
    results = [det(1, 1, [10, 10, 20, 20], 0.9), det(1, 2, [50, 50, 20, 20], 0.8), det(1, 5, [80, 0, 10, 10], 0.7),
               det(1, 1, [50, 50, 20, 20], 0.3), det(2, 1, [0, 0, 30, 30], 0.95), det(2, 2, [60, 60, 30, 30], 0.6)]
    results_file = tmp_path / "results.json"
    results_file.write_text(json.dumps(results))
    return gt, results_file


@pytest.mark.e2e
def test_the_report_of_a_hand_made_result_set(tmp_path):
    gt, results_file = hand_made(tmp_path)
    out = tmp_path / "analysis"
    subprocess.run([sys.executable, os.path.join(REPO, "tools", "analyze_errors.py"), "--results", str(results_file),
                    "--dataset", "hand_made", str(gt), str(tmp_path), "--output", str(out), "--worst", "2"],
                   check=True, capture_output=True, text=True, cwd=REPO)
    report = json.loads((out / "errors.json").read_text())
    assert report["classes"] == ["cat", "dog", "bird"]
    # Rows: ground truth cat, dog, bird, background; columns: the same as predictions.
    assert report["confusion_matrix"]["counts"] == [[1, 0, 0, 1], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0]]
    cat, dog, bird = report["per_class"]
    # cat: detections .95 (image 2: no cat), .9 (hit), .3 (miss) against 2 cats -> precision 1/2 up
    # to recall 1/2, then none: AP = 51 recall points x 0.5 / 101, the same at every IoU (exact boxes).
    assert cat["AP"] == pytest.approx(100 * 25.5 / 101) and cat["AP50"] == pytest.approx(100 * 25.5 / 101)
    assert cat["recall50"] == 50.0 and dog["AP"] == 100.0 and bird["AP"] == 0.0 and bird["recall50"] == 0.0
    assert (cat["precision"], cat["recall"], cat["F1"]) == (0.5, 0.5, 0.5)
    assert (dog["precision"], dog["recall"], dog["F1"]) == (1.0, 1.0, 1.0)
    assert (bird["precision"], bird["recall"], bird["F1"]) == (0.0, 0.0, 0.0)
    # One error each; ties by image id: images 1 and 2 are drawn.
    worst = report["worst_images"]
    assert [(w["image_id"], w["true_positives"], [e["kind"] for e in w["errors"]]) for w in worst] == [
        (1, 2, ["background"]), (2, 1, ["confused"])]
    assert worst[1]["errors"][0] == {"kind": "confused", "gt_class": 2, "pred_class": 0, "box": [0, 0, 30, 30],
                                     "score": 0.95}
    for w in worst:
        assert (out / w["drawn"]).stat().st_size > 0
    assert (out / "pr_curves.png").stat().st_size > 0 and (out / "confusion_matrix.png").stat().st_size > 0


@pytest.mark.e2e
def test_a_missing_results_file_is_named(tmp_path):
    gt, _ = hand_made(tmp_path)
    result = subprocess.run([sys.executable, os.path.join(REPO, "tools", "analyze_errors.py"), "--results",
                             str(tmp_path / "nope.json"), "--dataset", "hand_made", str(gt), str(tmp_path),
                             "--output", str(tmp_path / "analysis")], capture_output=True, text=True, cwd=REPO)
    assert result.returncode != 0 and "nope.json" in result.stderr and not (tmp_path / "analysis").exists()


@pytest.mark.e2e
def test_train_net_writes_the_analysis_after_evaluation(tmp_path):
    run_train_net("--config-file", INSTANT, "OUTPUT_DIR", str(tmp_path), "SOLVER.MAX_ITER", "2",
                  "MODEL.FOCAL_RETINANET.ERROR_ANALYSIS_WORST_IMAGES", "3",
                  "MODEL.FOCAL_RETINANET.ERROR_ANALYSIS_SCORE_THRESH", "0.0")
    report = json.loads((tmp_path / "inference" / "errors_shapes_tiny_val" / "errors.json").read_text())
    assert report["score_thresh"] == 0.0 and len(report["worst_images"]) == 3
    assert all(os.path.exists(tmp_path / "inference" / "errors_shapes_tiny_val" / w["drawn"])
               for w in report["worst_images"])


@pytest.mark.e2e
def test_an_unreadable_image_is_reported_not_drawn(tmp_path):
    gt, results_file = hand_made(tmp_path)
    (tmp_path / "c.png").write_bytes(b"not an image")
    out = tmp_path / "analysis"
    result = subprocess.run([sys.executable, os.path.join(REPO, "tools", "analyze_errors.py"), "--results",
                             str(results_file), "--dataset", "hand_made", str(gt), str(tmp_path), "--output", str(out)],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    third = json.loads((out / "errors.json").read_text())["worst_images"][2]
    assert third["image_id"] == 3 and "drawn" not in third and "c.png" in third["draw_error"]
    assert "image 3 not drawn" in result.stderr


def test_the_worst_folder_holds_only_the_latest_analysis(tmp_path):
    """A second analysis (as after the next evaluation) replaces the first one's drawings; a file of
    the user's in the folder stays."""
    from pycocotools.coco import COCO

    from retinanet_d2.analysis.error_report import analyze_errors

    gt, results_file = hand_made(tmp_path)
    coco_gt = COCO(str(gt))
    files = {i: str(tmp_path / n) for i, n in enumerate(("a.png", "b.png", "c.png"), 1)}
    out = tmp_path / "analysis"
    results = json.loads(results_file.read_text())
    analyze_errors(coco_gt, results, ["cat", "dog", "bird"], files, str(out), worst=3)
    assert sorted(os.listdir(out / "worst")) == ["01_a.png", "02_b.png", "03_c.png"]
    (out / "worst" / "notes.txt").write_text("mine")
    found_all = results + [det(3, 1, [20, 20, 40, 40], 0.9)]  # image 3's cat found: two images with errors left
    analyze_errors(coco_gt, found_all, ["cat", "dog", "bird"], files, str(out), worst=3)
    assert sorted(os.listdir(out / "worst")) == ["01_a.png", "02_b.png", "notes.txt"]
