"""model_best.pth: the weights of the best evaluation during training (yacs and LazyConfig), kept
across a resume."""
import os

import pytest
import torch

from helpers import INSTANT, REPO, run_train_net

EVERY_2 = ["TEST.EVAL_PERIOD", "2", "SOLVER.CHECKPOINT_PERIOD", "2", "DATALOADER.NUM_WORKERS", "0",
           "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0"]  # a few-iteration model: keep every candidate


def evaluations(log, period=2):
    """[(training iteration, AP50)] of the evaluations a train_net.py log prints ("copypaste:" lines),
    in order: every ``period`` iterations, after iterations period-1, 2*period-1, ..., and the last."""
    lines = log.splitlines()
    heads = [i for i, line in enumerate(lines) if line.endswith("copypaste: AP,AP50,AP75,APs,APm,APl")]
    ap50 = [float(lines[i + 1].split("copypaste: ")[1].split(",")[1]) for i in heads]
    return [((k + 1) * period - 1, score) for k, score in enumerate(ap50)]


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def best_iteration(evaluated):
    """The iteration of the first best score (BestCheckpointer replaces only on improvement)."""
    best = max(score for _, score in evaluated)
    return next(iteration for iteration, score in evaluated if score == best)


def assert_same_weights(a, b):
    assert a["model"].keys() == b["model"].keys()
    for name, value in a["model"].items():
        assert torch.equal(b["model"][name], value), name


@pytest.mark.e2e
def test_model_best_holds_the_best_evaluated_iterations_weights(tmp_path):
    log = run_train_net("--config-file", INSTANT, *EVERY_2, "SOLVER.MAX_ITER", "6",
                        "MODEL.FOCAL_RETINANET.BEST_METRIC", "bbox/AP50", "OUTPUT_DIR", str(tmp_path))
    evaluated = evaluations(log)
    assert [i for i, _ in evaluated] == [1, 3, 5] and len({s for _, s in evaluated}) > 1
    best = best_iteration(evaluated)
    assert_same_weights(load(tmp_path / "model_best.pth"), load(tmp_path / f"model_{best:07d}.pth"))


@pytest.mark.e2e
def test_a_resumed_run_keeps_the_best_from_before_the_resume(tmp_path):
    """The metric is the learning rate (stored at every iteration, as an evaluation's would be), which
    falls at iteration 2: the best stays iteration 1's, also after resuming from iteration 3."""
    by_lr = [*EVERY_2, "SOLVER.STEPS", "(2,)", "MODEL.FOCAL_RETINANET.BEST_METRIC", "lr", "OUTPUT_DIR", str(tmp_path)]
    run_train_net("--config-file", INSTANT, *by_lr, "SOLVER.MAX_ITER", "4")
    run_train_net("--config-file", INSTANT, "--resume", *by_lr, "SOLVER.MAX_ITER", "6")
    assert_same_weights(load(tmp_path / "model_best.pth"), load(tmp_path / "model_0000001.pth"))


@pytest.mark.e2e
def test_lazy_config_keeps_the_best_too(tmp_path):
    lazy = os.path.join(REPO, "configs", "lazy", "shapes_demo.py")
    log = run_train_net(
        "--config-file", lazy, "dataloader.train.dataset.names=shapes_tiny_train",
        "dataloader.test.dataset.names=shapes_tiny_val", "dataloader.train.total_batch_size=2",
        "dataloader.train.num_workers=0", "dataloader.test.num_workers=0", "train.max_iter=4", "train.eval_period=2",
        "train.checkpointer.period=2", "+train.best_checkpointer.val_metric=bbox/AP50",
        "model.test_score_thresh=0.0", f"train.output_dir={tmp_path}",
    )
    evaluated = evaluations(log)
    assert [i for i, _ in evaluated] == [1, 3]
    best = best_iteration(evaluated)
    assert_same_weights(load(tmp_path / "model_best.pth"), load(tmp_path / f"model_{best:07d}.pth"))
