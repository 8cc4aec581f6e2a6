"""A user's files survive kills, mistakes and bad inputs, through train_net.py and tools/predict.py:
a kill in the middle of a save, damaged checkpoints, a second run into a trained folder, a config
error on resume, a changed learning rate on resume, a broken dataset, predictions into the input
folder, evaluation without (complete) weights."""
import json
import os
import re
import signal
import subprocess
import sys

import pytest
import torch

from detectron2.config import LazyConfig

from helpers import INSTANT, REPO, run_train_net, train_net_main, train_net_process
from coco_files import broken_image_files, image_record, write_coco, write_image

QUICK = ["DATASETS.TEST", "()", "DATALOADER.NUM_WORKERS", "0", "SOLVER.CHECKPOINT_PERIOD", "3"]

# Runs train_net.py with torch.save replaced: a save whose file name contains argv[1] writes half of
# its bytes, flushes them and SIGKILLs the process, the way a kill in the middle of a save leaves a file.
KILLED_IN_SAVE = """
import io, os, runpy, signal, sys
import torch

marker, train_net = sys.argv[1], sys.argv[2]
real_save = torch.save

def save_then_die(obj, f, *args, **kwargs):
    name = f if isinstance(f, (str, os.PathLike)) else getattr(f, "name", "")
    if marker not in os.path.basename(str(name)):
        return real_save(obj, f, *args, **kwargs)
    buffer = io.BytesIO()
    real_save(obj, buffer, *args, **kwargs)
    half = buffer.getvalue()[: buffer.tell() // 2]
    if isinstance(f, (str, os.PathLike)):
        f = open(f, "wb")
    f.write(half)
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)

torch.save = save_then_die
sys.argv = sys.argv[2:]
runpy.run_path(train_net, run_name="__main__")
"""


def iteration_of(path):
    return torch.load(path, map_location="cpu", weights_only=True)["iteration"]


def trained_folder(tmp_path, max_iter=6):
    """OUTPUT_DIR of a finished instant run: model_0000002.pth, model_0000005.pth, model_final.pth."""
    folder = tmp_path / "run"
    run_train_net("--config-file", INSTANT, *QUICK, "SOLVER.MAX_ITER", str(max_iter), "OUTPUT_DIR", str(folder))
    return folder


@pytest.mark.e2e
def test_a_kill_while_extending_a_run_loses_no_checkpoint_and_resume_goes_on(tmp_path):
    folder = trained_folder(tmp_path)
    before = {name: (folder / name).read_bytes() for name in ("model_0000005.pth", "model_final.pth")}
    # Iterations 6-9; model_0000008.pth is saved, then the kill comes while model_final.pth is replaced.
    extend = ["--config-file", INSTANT, "--resume", *QUICK, "SOLVER.MAX_ITER", "10", "OUTPUT_DIR", str(folder)]
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_IN_SAVE, "model_final", os.path.join(REPO, "train_net.py"), *extend],
        capture_output=True, text=True, cwd=REPO,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    for name, data in before.items():  # the earlier model_final.pth too, which the kill was replacing
        assert (folder / name).read_bytes() == data, name
    assert iteration_of(folder / "model_0000008.pth") == 8
    assert (folder / "last_checkpoint").read_text() == "model_0000008.pth"
    log = run_train_net(*extend)
    assert "Starting training from iteration 9" in log
    assert iteration_of(folder / "model_final.pth") == 9


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.e2e
@pytest.mark.parametrize("damage", ["truncated newest", "empty last_checkpoint"])
def test_resume_uses_the_newest_readable_checkpoint_and_names_the_broken_one(tmp_path, damage):
    folder = trained_folder(tmp_path)
    if damage == "truncated newest":
        truncate(folder / "model_final.pth")
        truncate(folder / "model_0000005.pth")
        expected = [f"{folder / 'model_final.pth'} is a truncated or corrupt torch archive",
                    f"Resuming from {folder / 'model_0000002.pth'} instead"]
        start = 3
    else:
        (folder / "last_checkpoint").write_text("")
        expected = [f"{folder / 'last_checkpoint'} is empty"]
        start = 6
    log = run_train_net("--config-file", INSTANT, "--resume", *QUICK, "SOLVER.MAX_ITER", "7", "OUTPUT_DIR", str(folder))
    for line in expected:
        assert line in log
    assert f"Starting training from iteration {start}" in log
    assert iteration_of(folder / "model_final.pth") == 6


@pytest.mark.e2e
def test_weights_errors_name_their_source_and_a_truncated_archive(tmp_path):
    folder = trained_folder(tmp_path, max_iter=3)
    truncate(folder / "model_final.pth")
    result = train_net_process("--config-file", INSTANT, "--eval-only", "MODEL.WEIGHTS", str(folder / "model_final.pth"),
                               "OUTPUT_DIR", str(tmp_path / "eval"))
    assert result.returncode != 0
    assert f"MODEL.WEIGHTS={folder / 'model_final.pth'}: a truncated or corrupt torch archive" in result.stderr


@pytest.mark.e2e
def test_a_second_run_into_a_trained_folder_is_refused_and_changes_nothing(tmp_path):
    folder = trained_folder(tmp_path, max_iter=3)
    before = {name: (folder / name).read_bytes() for name in os.listdir(folder) if os.path.isfile(folder / name)}
    again = train_net_process("--config-file", INSTANT, *QUICK, "SOLVER.MAX_ITER", "3", "OUTPUT_DIR", str(folder))
    assert again.returncode != 0
    assert f"OUTPUT_DIR={folder} holds the checkpoints of an earlier run" in again.stderr
    assert "--resume" in again.stderr and "--start-over" in again.stderr
    bad_config = train_net_process("--config-file", INSTANT, "--resume", "OUTPUT_DIR", str(folder),
                                   "MODEL.FOCAL_RETINANET.LOSS", "bogus")
    assert bad_config.returncode != 0 and "bogus" in bad_config.stderr
    after = {name: (folder / name).read_bytes() for name in os.listdir(folder) if os.path.isfile(folder / name)}
    assert after == before  # model_final.pth and config.yaml byte for byte, no file added

    run_train_net("--config-file", INSTANT, "--start-over", *QUICK, "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", str(folder))
    (kept,) = [name for name in os.listdir(folder) if name.startswith("replaced_")]
    assert (folder / kept / "model_final.pth").read_bytes() == before["model_final.pth"]
    assert (folder / kept / "config.yaml").read_bytes() == before["config.yaml"]
    assert iteration_of(folder / "model_final.pth") == 1 and not (folder / "model_0000005.pth").exists()


def logged_learning_rates(folder):
    with open(folder / "metrics.json") as f:
        rows = [json.loads(line) for line in f]
    return {row["iteration"]: row["lr"] for row in rows if "lr" in row}


def next_learning_rates(checkpoint):
    """The LR of each param group that the optimizer uses in the iteration after ``checkpoint``'s."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    return sorted({group["lr"] for group in state["trainer"]["_trainer"]["optimizer"]["param_groups"]})


@pytest.mark.e2e
def test_resume_with_a_lower_base_lr_trains_at_the_lower_lr(tmp_path):
    folder = trained_folder(tmp_path, max_iter=4)
    every_iteration = ["SOLVER.CHECKPOINT_PERIOD", "1"]
    log = run_train_net("--config-file", INSTANT, "--resume", *QUICK, *every_iteration, "SOLVER.MAX_ITER", "8",
                        "SOLVER.BASE_LR", "0.001", "SOLVER.STEPS", "(6,)", "OUTPUT_DIR", str(folder))
    assert "learning rate differs from the checkpoint's: 0.005 -> 0.001" in log
    assert next_learning_rates(folder / "model_0000002.pth") == [0.005]  # the first run's
    assert next_learning_rates(folder / "model_0000004.pth") == [pytest.approx(0.001)]
    assert next_learning_rates(folder / "model_0000006.pth") == [pytest.approx(0.0001)]  # the new step at 6
    assert logged_learning_rates(folder)[7] == pytest.approx(0.0001)


LAZY_DEMO = os.path.join(REPO, "configs", "lazy", "shapes_demo.py")
LAZY_TINY = ["dataloader.train.dataset.names=shapes_tiny_train", "dataloader.train.num_workers=0",
             "dataloader.train.total_batch_size=2", "dataloader.test.dataset.names=shapes_tiny_val",
             "train.checkpointer.period=2", "train.log_period=1"]


@pytest.mark.e2e
def test_lazy_resume_with_a_lower_lr_trains_at_the_lower_lr(tmp_path):
    out = f"train.output_dir={tmp_path}"
    run_train_net("--config-file", LAZY_DEMO, *LAZY_TINY, out, "train.max_iter=2")
    log = run_train_net("--config-file", LAZY_DEMO, "--resume", *LAZY_TINY, out, "train.max_iter=4", "optimizer.lr=0.001")
    assert "learning rate differs from the checkpoint's: 0.03 -> 0.001" in log
    rates = logged_learning_rates(tmp_path)  # the LR each iteration trained at (warmup: 5% of 4 iterations)
    assert rates[1] == pytest.approx(0.03) and rates[2] == rates[3] == pytest.approx(0.001)
    saved = LazyConfig.load(str(tmp_path / "config.yaml"))  # the resumed run's config, plain YAML
    assert saved.optimizer.lr == 0.001 and "model" not in saved.optimizer.params
    assert not (tmp_path / "config.yaml.pkl").exists()


@pytest.mark.e2e
def test_a_broken_dataset_fails_before_iteration_0_naming_every_bad_file(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    names = broken_image_files(images)
    json_file = write_coco(tmp_path, [image_record(i + 1, n) for i, n in enumerate(names)],
                           [{"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 0,
                             "area": 25} for i in range(len(names))])
    result = train_net_process("--config-file", INSTANT, "--dataset", "broken", str(json_file), str(images),
                               "DATASETS.TRAIN", "('broken',)", "MODEL.RETINANET.NUM_CLASSES", "1", *QUICK,
                               "OUTPUT_DIR", str(tmp_path / "out"))
    assert result.returncode != 0
    for name in ("missing.jpg", "truncated.jpg", "garbage.jpg"):
        assert str(images / name) in result.stderr
    assert "Starting training" not in result.stdout + result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("override, key", [
    (["SOLVER.CHECKPOINT_PERIOD", "0"], "SOLVER.CHECKPOINT_PERIOD=0"),
    (["SOLVER.MAX_ITER", "0"], "SOLVER.MAX_ITER=0"),
    (["SOLVER.IMS_PER_BATCH", "0"], "SOLVER.IMS_PER_BATCH=0"),
])
def test_values_that_would_crash_later_are_refused_by_key(tmp_path, override, key):
    """train_net.main in this process: refused before the output folder exists."""
    with pytest.raises(ValueError, match=f"{re.escape(key)}: must be > 0"):
        train_net_main("--config-file", INSTANT, *override, "OUTPUT_DIR", str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_unknown_lazy_train_key_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"unknown key\(s\) in train: train.max_itre"):
        train_net_main("--config-file", LAZY_DEMO, "train.max_itre=5", f"train.output_dir={tmp_path / 'out'}")
    assert not (tmp_path / "out").exists()


@pytest.mark.e2e
def test_eval_without_weights_or_with_missing_layers_is_refused_unless_asked(tmp_path):
    no_weights = train_net_process("--config-file", INSTANT, "--eval-only", "OUTPUT_DIR", str(tmp_path / "a"))
    assert no_weights.returncode != 0 and "--eval-only without weights" in no_weights.stderr
    folder = trained_folder(tmp_path, max_iter=1)
    state = torch.load(folder / "model_final.pth", weights_only=True)["model"]
    backbone_only = {k: v for k, v in state.items() if k.startswith("backbone.")}
    torch.save({"model": backbone_only}, tmp_path / "backbone.pth")
    partial = train_net_process("--config-file", INSTANT, "--eval-only", "MODEL.WEIGHTS", str(tmp_path / "backbone.pth"),
                                "OUTPUT_DIR", str(tmp_path / "b"))
    assert partial.returncode != 0
    assert f"MODEL.WEIGHTS={tmp_path / 'backbone.pth'}: leaves" in partial.stderr and "uninitialised" in partial.stderr
    asked = train_net_process("--config-file", INSTANT, "--eval-only", "--allow-random-weights", "MODEL.WEIGHTS",
                              str(tmp_path / "backbone.pth"), "OUTPUT_DIR", str(tmp_path / "c"),
                              "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0")
    assert asked.returncode == 0, asked.stderr[-2000:]


@pytest.mark.e2e
def test_predict_refuses_to_overwrite_its_inputs_and_to_run_untrained(tmp_path):
    folder = trained_folder(tmp_path, max_iter=1)
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.png", "b.jpg"):
        write_image(photos / name)
    before = {name: (photos / name).read_bytes() for name in os.listdir(photos)}
    predict = [sys.executable, os.path.join(REPO, "tools", "predict.py"), "--config-file", INSTANT, "--input", str(photos)]
    result = subprocess.run([*predict, "--output", str(photos), "MODEL.WEIGHTS", str(folder / "model_final.pth")],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode != 0 and "would overwrite 2 of the input files" in result.stderr
    untrained = subprocess.run([*predict, "--output", str(tmp_path / "out")], capture_output=True, text=True, cwd=REPO)
    assert untrained.returncode != 0 and "MODEL.WEIGHTS is empty" in untrained.stderr
    assert {name: (photos / name).read_bytes() for name in os.listdir(photos)} == before
