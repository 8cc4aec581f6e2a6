"""What train_net.py does before a run touches its output folder, so that a mistake loses nothing:

1. ``check_config_values``: values that could only crash later (a checkpoint period of 0, no
   iterations, an empty batch, an unknown ``train.*`` key of a LazyConfig) are refused by key;
2. ``check_model_builds``: the model is built (on the CPU, then discarded), so that a config error
   surfaces before anything is written;
3. ``prepare_output_dir``: a new run into a folder that holds checkpoints is refused (``--resume``
   goes on; ``--start-over`` moves the earlier run into a subfolder first);
4. ``setup_run``: detectron2's ``default_setup`` (logging, environment, seeds) without its
   ``config.yaml``, which ``save_config`` writes atomically once the trainer has been built.
"""
import logging
import os
import shutil
import time

import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.utils import comm
from detectron2.utils.collect_env import collect_env_info
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

from .atomic import atomic_open, atomic_path, is_unfinished_write
from .config import is_lazy, retinanet_node

logger = logging.getLogger(__name__)

# Keys of detectron2's LazyConfig ``train`` node (configs/common/train.py) and this project's.
LAZY_TRAIN_KEYS = {
    "output_dir", "init_checkpoint", "max_iter", "amp", "ddp", "checkpointer", "eval_period",
    "log_period", "device", "seed", "cudnn_benchmark", "float32_precision", "best_checkpointer",
    "validation_loss_period",
}
BEST_MODES = ("max", "min")
LAZY_AMP_KEYS = {"enabled", "dtype", "test"}  # dtype and test are this project's (engine.py)
CONFIG_FILE = "config.yaml"
# What a run writes into its output folder and what --start-over moves away.
RUN_FILES = ("last_checkpoint", CONFIG_FILE, "metrics.json", "log.txt", "inference")


def output_dir_of(cfg) -> str:
    return cfg.train.output_dir if is_lazy(cfg) else cfg.OUTPUT_DIR


def _positive(values) -> None:
    bad = [f"{key}={value}" for key, value in values if value is not None and value <= 0]
    if bad:
        raise ValueError(f"{', '.join(bad)}: must be > 0")


def _one_of(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{key}={value!r}: must be one of {', '.join(map(repr, allowed))}")


def check_config_values(cfg) -> None:
    """Raise ValueError naming the key of a value that would only crash later."""
    if not is_lazy(cfg):
        _positive([("SOLVER.MAX_ITER", cfg.SOLVER.MAX_ITER), ("SOLVER.IMS_PER_BATCH", cfg.SOLVER.IMS_PER_BATCH),
                   ("SOLVER.CHECKPOINT_PERIOD", cfg.SOLVER.CHECKPOINT_PERIOD)])
        _one_of("MODEL.FOCAL_RETINANET.BEST_MODE", retinanet_node(cfg).BEST_MODE, BEST_MODES)
        return
    unknown = sorted(set(cfg.train) - LAZY_TRAIN_KEYS)
    unknown += sorted(f"amp.{k}" for k in set(cfg.train.get("amp", {})) - LAZY_AMP_KEYS)
    if unknown:
        raise ValueError(
            f"unknown key(s) in train: {', '.join('train.' + k for k in unknown)} "
            f"(known: {', '.join(sorted(LAZY_TRAIN_KEYS))}; train.amp: {', '.join(sorted(LAZY_AMP_KEYS))})"
        )
    _one_of("train.best_checkpointer.mode", cfg.train.get("best_checkpointer", {}).get("mode", "max"), BEST_MODES)
    batch = cfg.dataloader.get("train", {}).get("total_batch_size")
    _positive([("train.max_iter", cfg.train.max_iter), ("train.checkpointer.period",
               cfg.train.get("checkpointer", {}).get("period")), ("dataloader.train.total_batch_size", batch)])


def check_model_builds(cfg) -> None:
    """Build the config's model on the CPU and discard it, so that config errors raise now (before the
    output folder is touched; the seed is set afterwards, so the trained model is not affected)."""
    if is_lazy(cfg):
        instantiate(cfg.model)
    else:
        META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)


def holds_checkpoints(folder: str) -> bool:
    """Whether ``folder`` holds a checkpoint (a .pth file) or a ``last_checkpoint`` tag."""
    if not os.path.isdir(folder):
        return False
    names = [n for n in os.listdir(folder) if not is_unfinished_write(n)]
    return "last_checkpoint" in names or any(n.endswith(".pth") for n in names)


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


def setup_run(cfg, args) -> None:
    """detectron2's default_setup without its config.yaml (save_config writes it once the trainer
    is built): the detectron2 and fvcore loggers (console and ``log.txt`` in the output folder), the
    environment, arguments and config file logged, the seed (SEED / train.seed, plus the rank)."""
    folder = output_dir_of(cfg)
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
    seed = cfg.train.get("seed", -1) if is_lazy(cfg) else cfg.SEED
    seed_all_rng(None if seed < 0 else seed + rank)
    if not args.eval_only:
        torch.backends.cudnn.benchmark = bool(cfg.train.get("cudnn_benchmark", False) if is_lazy(cfg) else cfg.CUDNN_BENCHMARK)


def save_config(cfg) -> None:
    """Write the full config to ``<output folder>/config.yaml`` atomically (main process only)."""
    folder = output_dir_of(cfg)
    if not (comm.is_main_process() and folder):
        return
    path = os.path.join(folder, CONFIG_FILE)
    if is_lazy(cfg):
        with atomic_path(path) as tmp:
            LazyConfig.save(cfg, tmp)
            if os.path.exists(tmp + ".pkl"):  # LazyConfig.save adds a cloudpickle of what YAML cannot hold
                with atomic_path(path + ".pkl") as pkl:
                    os.replace(tmp + ".pkl", pkl)
    else:
        with atomic_open(path, "w", encoding="utf-8") as f:
            f.write(cfg.dump())
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
