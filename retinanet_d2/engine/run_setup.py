"""What train_net.py does around a run so that a mistake loses nothing, for either kind of config
(it reads only the adapter's RunSettings, engine/settings.py):

1. the adapter's ``check_values``: values that could only crash later (a checkpoint period of 0, no
   iterations, an empty batch, an unknown ``train.*`` key of a LazyConfig) are refused by key;
2. the model is built once, before anything is written (a config error surfaces first), after
   ``seed_run`` so that its initialisation is the seeded one, and handed to the training loop;
3. ``output_dir_lock``: one training run per output folder at a time; ``prepare_output_dir``: a new
   run into a folder that holds checkpoints is refused (``--resume`` goes on; ``--start-over`` moves
   the earlier run into a subfolder first);
4. ``setup_logging``: detectron2's ``default_setup`` (logging, environment) without its
   ``config.yaml``, which ``save_config`` writes atomically once the checkpoint is loaded.
"""
import contextlib
import fcntl
import logging
import os
import shutil
import time

import torch
from detectron2.utils import comm
from detectron2.utils.collect_env import collect_env_info
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

from ..atomic import is_unfinished_write
from .settings import RunSettings

logger = logging.getLogger(__name__)

BEST_MODES = ("max", "min")
CONFIG_FILE = "config.yaml"
# What a run writes into its output folder and what --start-over moves away.
RUN_FILES = ("last_checkpoint", CONFIG_FILE, "metrics.json", "log.txt", "inference")


def positive(values) -> None:
    """ValueError naming every (key, value) of ``values`` that is not None and <= 0."""
    bad = [f"{key}={value}" for key, value in values if value is not None and value <= 0]
    if bad:
        raise ValueError(f"{', '.join(bad)}: must be > 0")


def one_of(key: str, value, allowed) -> None:
    """ValueError naming ``key`` unless ``value`` is in ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{key}={value!r}: must be one of {', '.join(map(repr, allowed))}")


def holds_checkpoints(folder: str) -> bool:
    """Whether ``folder`` holds a checkpoint (a .pth file) or a ``last_checkpoint`` tag."""
    if not os.path.isdir(folder):
        return False
    names = [n for n in os.listdir(folder) if not is_unfinished_write(n)]
    return "last_checkpoint" in names or any(n.endswith(".pth") for n in names)


@contextlib.contextmanager
def output_dir_lock(folder: str, key: str):
    """Hold an exclusive lock on the folder ``folder`` itself (flock on the directory, main process
    only; nothing is written into it) while the block runs: a second training run into the same folder
    is refused (RuntimeError naming ``key``) instead of overwriting the first one's checkpoints. The
    kernel drops the lock when the holder exits, so a killed run leaves nothing stuck.
    NotADirectoryError when ``folder`` is a file."""
    if not comm.is_main_process() or not folder:
        yield
        return
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise NotADirectoryError(f"{key}={folder} is a file, not a folder; choose another {key}")
    os.makedirs(folder, exist_ok=True)
    handle = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"{key}={folder} is in use by another running training run (it holds the folder's "
                               f"lock); two runs in one folder would overwrite each other's checkpoints. Wait for it "
                               f"to end, or choose another {key}") from None
        yield
    finally:
        os.close(handle)  # releases the lock


def prepare_output_dir(folder: str, *, resume: bool, start_over: bool, key: str) -> None:
    """Refuse a new run into ``folder`` when it holds an earlier run's checkpoints (FileExistsError
    naming ``key``, --resume and --start-over); with ``start_over``, move that run's files into
    ``folder/replaced_<time>/`` first (main process only). Nothing is written otherwise."""
    if resume or not holds_checkpoints(folder):
        return
    if not start_over:
        raise FileExistsError(
            f"{key}={folder} holds the checkpoints of an earlier run; nothing was changed. "
            "Pass --resume to continue that run, --start-over to train anew (the earlier run's "
            f"files are moved into {folder}/replaced_<time>/), or choose another {key}"
        )
    if not comm.is_main_process():
        return
    keep = os.path.join(folder, time.strftime("replaced_%Y%m%d-%H%M%S"))
    os.makedirs(keep)
    moved = [n for n in os.listdir(folder) if n.endswith(".pth") or n in RUN_FILES]
    for name in moved:
        shutil.move(os.path.join(folder, name), os.path.join(keep, name))
    logger.warning(f"--start-over: moved the earlier run's {len(moved)} files into {keep}")


def seed_run(settings: RunSettings, eval_only: bool) -> None:
    """Seed every generator with the config's seed plus the process's rank (a random seed when it is
    < 0), as detectron2's default_setup does; cudnn's benchmark mode as the config says for training."""
    seed_all_rng(None if settings.seed < 0 else settings.seed + comm.get_rank())
    if not eval_only:
        torch.backends.cudnn.benchmark = settings.cudnn_benchmark


def setup_logging(settings: RunSettings, args) -> None:
    """detectron2's default_setup without its config.yaml and seeding: the detectron2, fvcore and
    retinanet_d2 loggers (console and ``log.txt`` in the output folder), the environment, arguments
    and config file logged."""
    folder = settings.output_dir
    rank = comm.get_rank()
    if comm.is_main_process() and folder:
        os.makedirs(folder, exist_ok=True)
    setup_logger(folder, distributed_rank=rank, name="fvcore")
    setup_logger(folder, distributed_rank=rank, name="retinanet_d2", abbrev_name="rd2")
    log = setup_logger(folder, distributed_rank=rank)
    log.info(f"Rank of current process: {rank}. World size: {comm.get_world_size()}")
    log.info("Environment info:\n" + collect_env_info())
    log.info(f"Command line arguments: {args}")
    with open(args.config_file, encoding="utf-8") as f:
        log.info(f"Contents of args.config_file={args.config_file}:\n{f.read()}")


def save_config(parts) -> None:
    """Write the run's full config to ``<output folder>/config.yaml`` atomically (main process only)."""
    folder = parts.settings.output_dir
    if not (comm.is_main_process() and folder):
        return
    path = os.path.join(folder, CONFIG_FILE)
    parts.save_config(path)
    logger.info(f"Full config saved to {path}")


def require_weights(checkpointer, weights: str, key: str, *, resume: bool, allow_random_weights: bool) -> None:
    """--eval-only: ValueError unless there are weights to evaluate (``weights``, from ``key``, or with
    ``resume`` a checkpoint in the checkpointer's folder) or ``allow_random_weights`` asks for none."""
    if weights or allow_random_weights or (resume and checkpointer.has_checkpoint()):
        return
    raise ValueError(
        f"--eval-only without weights would evaluate an untrained model: set {key} (or pass --resume "
        "with an output folder that holds checkpoints); --allow-random-weights evaluates one on purpose"
    )
