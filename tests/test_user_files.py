"""Users' files that used to give answers that looked fine and were wrong (exit 0, a number, no
warning): high bit-depth and EXIF-rotated images, class ids that differ between splits and weights,
results files' category ids, two runs in one folder, configs by name. Each case with a made file."""
import json
import os
import signal
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data.datasets import register_coco_instances
from detectron2.modeling import build_model

from coco_files import box, image_record, write_coco, write_image
from helpers import INSTANT, REPO, tiny_cfg, train_net_main
from retinanet_d2.data.checks import DatasetError, allow_image_pixels, check_coco_dataset
from retinanet_d2.predict import Predictor, image_ids, predict_files, require_writable_folder


def one_image_dataset(folder, name, size=(40, 30), **record):
    """A COCO json of one image ``name`` (already written into ``folder``) with one box."""
    return write_coco(folder, [{**image_record(1, name, width=size[1], height=size[0]), **record}],
                      [box(1, 1, [2, 2, 10, 10])])


@pytest.mark.parametrize("mode, values, what", [("I;16", np.array([[0, 4000], [60000, 1000]], np.uint16), "16-bit"),
                                                ("F", np.array([[0.0, 0.25], [0.5, 1.0]], np.float32), "32-bit float")])
def test_high_bit_depth_images_are_refused_with_the_file_and_mode(tmp_path, mode, values, what):
    """detectron2's read_image turns them into a flat 8-bit image (white, black); the check says so."""
    name = "deep.png" if mode == "I;16" else "deep.tif"  # as microscopy / thermal tools write them
    assert cv2.imwrite(str(tmp_path / name), np.kron(values, np.ones((20, 15), values.dtype)))
    with Image.open(tmp_path / name) as image:
        assert image.mode.startswith(mode[0]) and image.size == (30, 40)
    with pytest.raises(DatasetError, match=rf"{name}: has {what} pixels \(PIL mode {mode[0]}"):
        check_coco_dataset(str(one_image_dataset(tmp_path, name)), str(tmp_path))


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_eight_bit_modes_still_pass(tmp_path, mode):
    Image.new(mode, (30, 40)).save(tmp_path / ("img.jpg" if mode == "CMYK" else "img.png"))
    name = "img.jpg" if mode == "CMYK" else "img.png"
    assert check_coco_dataset(str(one_image_dataset(tmp_path, name)), str(tmp_path))["images"] == 1


def test_predict_skips_a_16_bit_image_naming_why(tmp_path):
    assert cv2.imwrite(str(tmp_path / "deep.png"), np.full((40, 30), 50000, np.uint16))
    write_image(tmp_path / "plain.png")
    predictor = Predictor(tiny_cfg(**{"DATASETS.TEST": ()}), allow_random_weights=True)
    _, skipped = predict_files(predictor, [str(tmp_path / "deep.png"), str(tmp_path / "plain.png")], str(tmp_path / "out"))
    assert [path for path, _ in skipped] == [str(tmp_path / "deep.png")]
    assert "16-bit pixels" in skipped[0][1]


def exif_rotated_png(path, stored=(160, 120)):
    """A PNG stored ``stored`` = (width, height) with EXIF orientation 6 (shown rotated by 90 degrees)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", stored, (90, 120, 30)).save(path, exif=exif)
    return path


def test_exif_rotated_photo_sizes_follow_detectron2s_reading(tmp_path):
    """detectron2 reads the photo rotated (120 x 160): a JSON with that size passes; one with the
    stored size is refused with a message naming EXIF (it used to pass and crash mid-training)."""
    exif_rotated_png(tmp_path / "phone.png")
    from detectron2.data.detection_utils import read_image
    assert read_image(str(tmp_path / "phone.png"), format="BGR").shape[:2] == (160, 120)
    displayed = write_coco(tmp_path, [image_record(1, "phone.png", width=120, height=160)], [box(1, 1, [2, 2, 10, 10])])
    assert check_coco_dataset(str(displayed), str(tmp_path))["images"] == 1
    stored = write_coco(tmp_path, [image_record(1, "phone.png", width=160, height=120)], [box(1, 1, [2, 2, 10, 10])])
    with pytest.raises(DatasetError, match=r"phone.png: is stored 160x120, as the JSON says, but its EXIF orientation "
                                           r"rotates it to 120x160"):
        check_coco_dataset(str(stored), str(tmp_path))


def test_images_without_width_or_height_are_named(tmp_path):
    write_image(tmp_path / "a.png")
    json_file = write_coco(tmp_path, [{"id": 7, "file_name": "a.png"}], [box(1, 7, [2, 2, 10, 10])])
    with pytest.raises(DatasetError, match=r"1 images without width/height: id=7 \(a.png\)"):
        check_coco_dataset(str(json_file), str(tmp_path))


def two_splits(folder, val_categories):
    """Train and val COCO files of the same 4 images; val names the classes with ``val_categories``."""
    for i in range(4):
        write_image(folder / f"{i}.png", size=(64, 64))
    images = [image_record(i + 1, f"{i}.png", width=64, height=64) for i in range(4)]
    boxes = [box(i + 1, i + 1, [8, 8, 30, 30], category_id=1 + i % 3) for i in range(4)]
    train = {"images": images, "annotations": boxes,
             "categories": [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}, {"id": 3, "name": "triangle"}]}
    ids = {c["name"]: c["id"] for c in val_categories}
    names = {c["id"]: c["name"] for c in train["categories"]}
    val = {"images": images, "categories": val_categories,
           "annotations": [{**b, "category_id": ids[names[b["category_id"]]]} for b in boxes]}
    (folder / "train.json").write_text(json.dumps(train))
    (folder / "val.json").write_text(json.dumps(val))
    return str(folder / "train.json"), str(folder / "val.json")


@pytest.mark.e2e
def test_a_validation_split_with_other_class_ids_is_refused_with_both_mappings(tmp_path):
    """The same names under other ids (exported separately): index 0 would mean 'circle' in training
    and 'triangle' in evaluation. It used to score AP 9.3 instead of 73.4, silently."""
    train_json, val_json = two_splits(tmp_path, [{"id": 1, "name": "triangle"}, {"id": 2, "name": "circle"},
                                                 {"id": 3, "name": "square"}])
    with pytest.raises(ValueError, match=r"dataset 'scrambled_val' names its classes in another order .*"
                                         r"\{0: 'triangle', 1: 'circle', 2: 'square'\} there and "
                                         r"\{0: 'circle', 1: 'square', 2: 'triangle'\} in 'scrambled_train'"):
        train_net_main("--config-file", INSTANT, "--dataset", "scrambled_train", train_json, str(tmp_path),
            "--dataset", "scrambled_val", val_json, str(tmp_path), "DATASETS.TRAIN", "('scrambled_train',)",
            "DATASETS.TEST", "('scrambled_val',)", "SOLVER.MAX_ITER", "1", "OUTPUT_DIR", str(tmp_path / "run"))


def test_predict_results_carry_the_datasets_category_ids(tmp_path):
    """A dataset registered from a JSON is loaded first, so coco_results.json has its ids (5, 7, 9),
    not class indices 0..2 (which pycocotools scored as AP 6.7 for a model of 69.0)."""
    for i in range(2):
        write_image(tmp_path / f"{i}.png", size=(64, 64))
    json_file = write_coco(tmp_path, [image_record(i + 1, f"{i}.png", width=64, height=64) for i in range(2)],
                           [box(1, 1, [8, 8, 30, 30], category_id=7)],
                           categories=[{"id": 5, "name": "a"}, {"id": 7, "name": "b"}, {"id": 9, "name": "c"}])
    register_coco_instances("predict_ids_test", {}, str(json_file), str(tmp_path))
    cfg = tiny_cfg(**{"DATASETS.TEST": ("predict_ids_test",), "MODEL.RETINANET.NUM_CLASSES": 3,
                      "MODEL.RETINANET.SCORE_THRESH_TEST": 0.0})
    results, _ = predict_files(Predictor(cfg, allow_random_weights=True),
                               [str(tmp_path / "0.png"), str(tmp_path / "1.png")], str(tmp_path / "out"))
    found = {r["category_id"] for r in results}
    assert len(results) > 0 and len(found) >= 2 and found <= {5, 7, 9}


def test_numbered_files_that_share_a_number_get_their_own_ids():
    assert image_ids(["a/1.png", "b/001.png"]) == [1, 2]
    assert image_ids(["000000000139.jpg", "000000000285.jpg"]) == [139, 285]


def weights_for(tmp_path, num_classes):
    path = tmp_path / f"classes{num_classes}.pth"
    torch.save({"model": build_model(tiny_cfg(**{"MODEL.RETINANET.NUM_CLASSES": num_classes})).state_dict()}, path)
    return str(path)


def test_weights_for_another_class_count_are_refused_for_evaluation_and_prediction(tmp_path):
    weights = weights_for(tmp_path, 5)
    cfg = tiny_cfg(**{"MODEL.RETINANET.NUM_CLASSES": 3, "MODEL.WEIGHTS": weights, "DATASETS.TEST": ()})
    message = r"it was trained for 5 classes, the config has 3 .*random classifier"
    with pytest.raises(ValueError, match=message):
        Predictor(cfg)
    with pytest.raises(ValueError, match=message):
        train_net_main("--config-file", INSTANT, "--eval-only", "MODEL.WEIGHTS", weights, "MODEL.RESNETS.DEPTH", "18",
            "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.RETINANET.NUM_CONVS", "1",
            "MODEL.RESNETS.NORM", "FrozenBN", "MODEL.RETINANET.NORM", "", "MODEL.FPN.NORM", "",
            "MODEL.PIXEL_STD", "[57.375, 57.120, 58.395]", "OUTPUT_DIR", str(tmp_path / "eval"))
    assert Predictor(cfg, allow_random_weights=True).model.num_classes == 3  # asked for: allowed


@pytest.mark.e2e
def test_a_resume_with_another_class_count_is_refused_before_the_folder_changes(tmp_path):
    """A run of 3 classes resumed with a 5-class dataset and NUM_CLASSES 5: refused at the checkpoint
    (it used to crash at the first step with a tensor-size error, after config.yaml was rewritten)."""
    for i in range(2):
        write_image(tmp_path / f"{i}.png", size=(64, 64))
    five = write_coco(tmp_path, [image_record(i + 1, f"{i}.png", width=64, height=64) for i in range(2)],
                      [box(1, 1, [8, 8, 30, 30], category_id=4)], categories=[{"id": k, "name": str(k)} for k in range(1, 6)])
    out = str(tmp_path / "run")
    common = ["--config-file", INSTANT, "SOLVER.MAX_ITER", "2", "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()", "OUTPUT_DIR", out]
    train_net_main(*common)
    kept = ("config.yaml", "last_checkpoint", "metrics.json", "model_final.pth")
    before = {name: open(os.path.join(out, name), "rb").read() for name in kept}
    with pytest.raises(ValueError, match=r"cannot resume.*trained for 3 classes, the config has 5.*its checkpoints and config.yaml are left"):
        train_net_main("--resume", "--dataset", "five_classes", str(five), str(tmp_path), *common, "DATASETS.TRAIN", "('five_classes',)",
            "MODEL.RETINANET.NUM_CLASSES", "5", "SOLVER.MAX_ITER", "4")
    assert {name: open(os.path.join(out, name), "rb").read() for name in kept} == before


@pytest.mark.e2e
def test_a_second_training_run_into_a_busy_folder_is_refused_and_a_killed_one_leaves_no_lock(tmp_path):
    """Another process holds the folder (as a running train_net.py does): refused, naming it; once that
    process is killed the folder is free (the kernel drops the lock)."""
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from retinanet_d2.engine.run_setup import output_dir_lock\n"
         f"with output_dir_lock({str(out)!r}, 'OUTPUT_DIR'):\n    print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "held"
        common = ["--config-file", INSTANT, "SOLVER.MAX_ITER", "1", "DATASETS.TEST", "()", "OUTPUT_DIR", str(out)]
        with pytest.raises(RuntimeError, match=rf"OUTPUT_DIR={out} is in use by another running training run"):
            train_net_main(*common)
        assert os.listdir(out) == []  # nothing written
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    train_net_main(*common)
    assert os.path.isfile(out / "model_final.pth")


def test_an_output_dir_that_is_a_file_is_named(tmp_path):
    (tmp_path / "taken").write_text("a user's file")
    with pytest.raises(NotADirectoryError, match=rf"OUTPUT_DIR={tmp_path / 'taken'} is a file, not a folder"):
        train_net_main("--config-file", INSTANT, "SOLVER.MAX_ITER", "1", "OUTPUT_DIR", str(tmp_path / "taken"))
    assert (tmp_path / "taken").read_text() == "a user's file"


@pytest.mark.e2e
def test_a_shipped_config_named_without_its_path_trains(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the checkout: found by name among the project's configs
    train_net_main("--config-file", "shapes_instant_test.yaml", "SOLVER.MAX_ITER", "1", "DATASETS.TEST", "()",
        "OUTPUT_DIR", str(tmp_path / "run"))
    assert os.path.isfile(tmp_path / "run" / "model_final.pth")
    assert "Contents of args.config_file=" in (tmp_path / "run" / "log.txt").read_text()


def test_a_file_listed_twice_is_named(tmp_path):
    """Two records of one picture: each record's ground truth would meet the other's detections as
    false positives."""
    write_image(tmp_path / "a.png")
    json_file = write_coco(tmp_path, [image_record(1, "a.png"), image_record(2, "a.png")],
                           [box(1, 1, [2, 2, 10, 10]), box(2, 2, [2, 2, 10, 10])])
    with pytest.raises(DatasetError, match=r"1 files listed more than once: a.png \(image ids \[1, 2\]\)"):
        check_coco_dataset(str(json_file), str(tmp_path))


def test_a_split_without_annotations_is_refused_before_it_gives_nan(tmp_path):
    write_image(tmp_path / "a.png")
    json_file = write_coco(tmp_path, [image_record(1, "a.png")], [])
    with pytest.raises(DatasetError, match=r"no annotations: 1 images and no boxes.*tools/predict.py"):
        check_coco_dataset(str(json_file), str(tmp_path))


def test_a_box_whose_segmentation_detectron2_would_drop_is_counted_in_the_warning(tmp_path, caplog):
    """A 2-point "polygon" beside a valid bbox: detectron2's loader drops the annotation, box included."""
    write_image(tmp_path / "a.png")
    annotations = [{**box(1, 1, [2, 2, 10, 10]), "segmentation": [[2, 2, 12, 12]]},
                   {**box(2, 1, [5, 5, 10, 10]), "segmentation": [[5, 5, 15, 5, 15, 15]]}]
    json_file = write_coco(tmp_path, [image_record(1, "a.png")], annotations)
    import logging
    logger = logging.getLogger("retinanet_d2.data.checks")
    with caplog.at_level(logging.WARNING, logger=logger.name):
        counts = check_coco_dataset(str(json_file), str(tmp_path))
    assert counts["dropped_boxes"] == 1
    assert "annotation id=1 (image_id=1): its 'segmentation' has no polygon of 3 or more points" in caplog.text
    from detectron2.data.datasets import load_coco_json
    assert [a["bbox"] for a in load_coco_json(str(json_file), str(tmp_path))[0]["annotations"]] == [[5, 5, 10, 10]]


def test_an_image_above_pillows_limit_is_named_with_the_way_to_allow_it(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)  # as if 40 x 30 were a 14,000 px scene
    write_image(tmp_path / "a.png")
    json_file = one_image_dataset(tmp_path, "a.png")
    with pytest.raises(DatasetError, match=r"a.png: Image size \(1200 pixels\) exceeds limit.*--max-image-pixels N"):
        check_coco_dataset(str(json_file), str(tmp_path))
    allow_image_pixels(1200)
    assert check_coco_dataset(str(json_file), str(tmp_path))["images"] == 1


def test_predict_names_an_output_folder_it_cannot_create_before_loading_a_model(tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(NotADirectoryError, match=rf"--output {tmp_path / 'a_file' / 'out'}: cannot create it"):
        require_writable_folder(str(tmp_path / "a_file" / "out"), "--output")


@pytest.mark.e2e
def test_a_bad_test_set_fails_before_training_not_at_its_first_evaluation(tmp_path):
    write_image(tmp_path / "a.png", size=(64, 64))
    empty = write_coco(tmp_path, [image_record(1, "a.png", width=64, height=64)], [])
    register_coco_instances("unlabelled_val", {}, str(empty), str(tmp_path))  # as a user's own script registers it
    out = tmp_path / "run"
    with pytest.raises(DatasetError, match=r"no annotations"):
        train_net_main("--config-file", INSTANT, "DATASETS.TEST", "('unlabelled_val',)", "SOLVER.MAX_ITER", "2",
                       "OUTPUT_DIR", str(out))
    assert not (out / "metrics.json").exists() and not (out / "model_final.pth").exists()
