#!/usr/bin/env python
"""Train or evaluate FocalRetinaNet with detectron2's DefaultTrainer (retinanet_d2.engine.Trainer).

    python train_net.py --config-file configs/retinanet_R50_FPN_1x.yaml --num-gpus 8
    python train_net.py --config-file configs/retinanet_R50_FPN_1x.yaml --eval-only MODEL.WEIGHTS model.pth
    python train_net.py --config-file configs/torchvision/retinanet_resnet50_fpn.yaml --eval-only
    python train_net.py --config-file configs/lazy/retinanet_R50_FPN_1x.py --num-gpus 8 train.max_iter=90000
"""
import torch.distributed as dist
from detectron2.config import LazyConfig
from detectron2.engine import default_argument_parser, launch
from detectron2.utils import comm

import retinanet_d2
from retinanet_d2.config_files import find_config_file
from retinanet_d2.data import register_coco_dataset
from retinanet_d2.engine import Trainer, evaluate
from retinanet_d2.run_setup import (
    check_config_values,
    check_model_builds,
    output_dir_of,
    prepare_output_dir,
    save_config,
    setup_run,
)

__all__ = ["Trainer", "setup", "main", "argument_parser"]


def setup(args):
    """The config of ``args``: a yacs file (.yaml) with this project's node, or a LazyConfig file
    (.py), with the command line's overrides (KEY VALUE pairs for yacs, key=value for LazyConfig);
    its values checked and its model built (on the CPU, then discarded) before anything is written, then the
    output folder checked (run_setup.prepare_output_dir) and logging and seeds set up."""
    if args.config_file.endswith(".py"):
        cfg = LazyConfig.apply_overrides(LazyConfig.load(find_config_file(args.config_file)), args.opts)
    else:
        cfg = retinanet_d2.load_config(args.config_file, args.opts)
        cfg.freeze()
    check_config_values(cfg)
    check_model_builds(cfg)
    if not args.eval_only:
        key = "train.output_dir" if args.config_file.endswith(".py") else "OUTPUT_DIR"
        prepare_output_dir(output_dir_of(cfg), resume=args.resume, start_over=args.start_over, key=key)
    setup_run(cfg, args)
    return cfg


def argument_parser():
    """detectron2's default_argument_parser with --dataset NAME JSON IMAGE_DIR (repeatable),
    --start-over and --allow-random-weights."""
    parser = default_argument_parser()
    parser.add_argument(
        "--dataset", nargs=3, action="append", default=[], metavar=("NAME", "JSON", "IMAGE_DIR"),
        help="register a COCO-format dataset (instances json + image folder) as NAME before the "
        "loaders are built; then name it in DATASETS.TRAIN / DATASETS.TEST (yacs) or "
        "dataloader.train.dataset.names / dataloader.test.dataset.names (LazyConfig)",
    )
    parser.add_argument(
        "--start-over", action="store_true",
        help="train anew into an output folder that holds an earlier run's checkpoints, after moving "
        "that run's files into OUTPUT_DIR/replaced_<time>/ (without it such a run is refused)",
    )
    parser.add_argument(
        "--allow-random-weights", action="store_true",
        help="--eval-only without weights, or with weights that leave layers of the model "
        "uninitialised (without it both are refused)",
    )
    return parser


def main(args):
    """One process's run; a distributed process then closes its process group, because gloo's
    threads left to the interpreter's exit can abort the finished process (SIGABRT,
    "terminate called without an active exception")."""
    result = train_or_evaluate(args)
    if comm.get_world_size() > 1:
        comm.synchronize()
        dist.destroy_process_group()
    return result


def train_or_evaluate(args):
    """Register the --dataset entries, then train or evaluate as the config (yacs or LazyConfig) and flags say."""
    for name, json_file, image_root in getattr(args, "dataset", []):  # in every process
        register_coco_dataset(name, json_file, image_root)
    cfg = setup(args)
    if args.eval_only:
        return evaluate(cfg, resume=args.resume, allow_random_weights=args.allow_random_weights)
    trainer = Trainer(cfg)  # one engine for yacs and LazyConfig configs (retinanet_d2/engine.py)
    trainer.resume_or_load(resume=args.resume)
    save_config(cfg)
    return trainer.train()


if __name__ == "__main__":
    args = argument_parser().parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
