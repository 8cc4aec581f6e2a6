"""Faults: a non-finite loss stops training by name; a SIGKILLed run resumes exactly; a batch split
over 2 processes (gloo) gives the gradients of the whole batch in one process; train_net in 2
processes closes its process group."""
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from detectron2.engine import SimpleTrainer, launch
from detectron2.utils.events import EventStorage

import retinanet_d2
from helpers import INSTANT, REPO, image_with_boxes, run_train_net, tiny_cfg, well_scaled_model
from retinanet_d2.modeling.meta_arch import FocalRetinaNet

DETERMINISTIC = ["DATALOADER.NUM_WORKERS", "0", "INPUT.RANDOM_FLIP", "none", "SEED", "3"]


@pytest.mark.parametrize("term", ["loss_cls", "loss_box_reg"])
def test_non_finite_loss_stops_training_naming_iteration_and_term(monkeypatch, term):
    model = well_scaled_model(tiny_cfg())
    original = FocalRetinaNet.losses

    def poisoned(self, *args):
        losses = original(self, *args)
        losses[term] = losses[term] * float("nan")
        return losses

    monkeypatch.setattr(FocalRetinaNet, "losses", poisoned)
    batch = [image_with_boxes()]
    trainer = SimpleTrainer(model, [batch] * 3, torch.optim.SGD(model.parameters(), lr=0.0))
    with pytest.raises(FloatingPointError, match=rf"iteration=0(.|\n)*'{term}': (np.float64\()?nan"):
        trainer.train(0, 3)


@pytest.mark.e2e
def test_resume_after_sigkill_continues_exactly(tmp_path):
    common = ["SOLVER.MAX_ITER", "12", "SOLVER.CHECKPOINT_PERIOD", "6",
              "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()", *DETERMINISTIC]
    run_train_net("--config-file", INSTANT, *common, "OUTPUT_DIR", str(tmp_path / "whole"))

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "train_net.py"), "--config-file", INSTANT, *common,
         "OUTPUT_DIR", str(killed)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while not (killed / "last_checkpoint").exists() and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (killed / "model_0000005.pth").exists() and not (killed / "model_final.pth").exists()

    log = run_train_net("--config-file", INSTANT, "--resume", *common, "OUTPUT_DIR", str(killed))
    assert "Starting training from iteration 6" in log
    whole = torch.load(tmp_path / "whole" / "model_final.pth", weights_only=False)
    resumed = torch.load(killed / "model_final.pth", weights_only=False)
    assert whole["iteration"] == resumed["iteration"] == 11
    for name, value in whole["model"].items():
        assert torch.equal(value, resumed["model"][name]), name
    whole_sgd = whole["trainer"]["_trainer"]["optimizer"]["state"]
    resumed_sgd = resumed["trainer"]["_trainer"]["optimizer"]["state"]
    assert len(whole_sgd) == len(resumed_sgd) > 0
    for key, state in whole_sgd.items():
        assert torch.equal(state["momentum_buffer"], resumed_sgd[key]["momentum_buffer"])


def _train_net_then_report(argv, report_dir):
    """A launched worker: train_net's own main, then a file saying whether a process group is still open."""
    sys.path.insert(0, REPO)
    import train_net

    rank = dist.get_rank()
    train_net.main(train_net.argument_parser().parse_args(argv))
    with open(os.path.join(report_dir, f"rank{rank}_group_open"), "w") as f:
        f.write(str(dist.is_initialized()))


@pytest.mark.e2e
def test_train_net_in_two_cpu_processes_closes_its_process_group(tmp_path):
    """detectron2's launch on gloo runs train_net.main in 2 processes; each closes its process group
    (gloo threads left to the interpreter's exit can abort a finished worker)."""
    argv = ["--config-file", INSTANT, "SOLVER.MAX_ITER", "3", "DATASETS.TEST", "()", "OUTPUT_DIR", str(tmp_path)]
    launch(_train_net_then_report, 2, dist_url=f"file://{tmp_path / 'init'}", args=(argv, str(tmp_path)))
    assert torch.load(tmp_path / "model_final.pth", weights_only=False)["iteration"] == 2
    for rank in (0, 1):
        assert (tmp_path / f"rank{rank}_group_open").read_text() == "False"


def _split_batch_worker(rank, world_size, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    model = DistributedDataParallel(well_scaled_model(tiny_cfg()))
    batch = [image_with_boxes(seed=s) for s in range(4)][rank * 2 : rank * 2 + 2]
    with EventStorage():
        losses = model(batch)
    sum(losses.values()).backward()
    grads = {n: p.grad for n, p in model.module.named_parameters()}
    torch.save(grads, os.path.join(out_dir, f"grads_{rank}.pth"))
    dist.destroy_process_group()


@pytest.mark.e2e
def test_batch_split_over_two_processes_gives_the_same_gradients(tmp_path):
    mp.spawn(_split_batch_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    model = well_scaled_model(tiny_cfg())
    with EventStorage():
        losses = model([image_with_boxes(seed=s) for s in range(4)])
    sum(losses.values()).backward()
    split = torch.load(tmp_path / "grads_0.pth")
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert len(trained) > 20
    for name, param in trained:
        error = (split[name] - param.grad).abs().max() / param.grad.abs().max()
        assert error < 1e-4, (name, error)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.e2e
def test_two_machines_train_together_as_one_process_on_the_whole_batch(tmp_path):
    """train_net.py started twice as two machines (one process each, gloo over TCP), one image each,
    takes the same SGD step as one process on both images (the same initial weights, data stream
    and seed): the gradients of the whole batch."""
    initial = tmp_path / "initial.pth"
    cfg = retinanet_d2.load_config(INSTANT, ["MODEL.DEVICE", "cpu"])
    torch.save({"model": well_scaled_model(cfg).state_dict()}, initial)
    step = ["--config-file", INSTANT, *DETERMINISTIC, "MODEL.WEIGHTS", str(initial), "SOLVER.MAX_ITER", "1",
            "SOLVER.IMS_PER_BATCH", "2", "SOLVER.BASE_LR", "0.01", "DATASETS.TEST", "()"]
    run_train_net(*step, "OUTPUT_DIR", str(tmp_path / "one"))
    url = f"tcp://127.0.0.1:{free_port()}"
    machines = [
        subprocess.Popen(
            [sys.executable, os.path.join(REPO, "train_net.py"), "--num-gpus", "1", "--num-machines", "2",
             "--machine-rank", str(rank), "--dist-url", url, *step, "OUTPUT_DIR", str(tmp_path / "two")],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for rank in (0, 1)
    ]
    logs = [machine.communicate(timeout=300)[0] for machine in machines]
    assert [m.returncode for m in machines] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    assert "World size: 2" in logs[0]
    start = torch.load(initial, weights_only=True)["model"]
    one = torch.load(tmp_path / "one" / "model_final.pth", weights_only=True)["model"]
    two = torch.load(tmp_path / "two" / "model_final.pth", weights_only=True)["model"]
    moved = [name for name in one if one[name].is_floating_point() and not torch.equal(one[name], start[name])]
    assert len(moved) > 20
    for name in moved:  # within 0.1% of the step, plus the rounding of w + step (a float32 ulp or two)
        update = (one[name] - start[name]).abs().max()
        rounding = 2 * torch.finfo(torch.float32).eps * start[name].abs().max()
        assert (two[name] - one[name]).abs().max() <= 1e-3 * update + rounding, name
