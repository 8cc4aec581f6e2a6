#!/usr/bin/env python
"""Train or evaluate FocalRetinaNet with detectron2's step trainers and hooks (retinanet_d2.engine),
from a yacs config (.yaml) or a LazyConfig (.py).

    python train_net.py --config-file configs/retinanet_R50_FPN_1x.yaml --num-gpus 8
    python train_net.py --config-file configs/retinanet_R50_FPN_1x.yaml --eval-only MODEL.WEIGHTS model.pth
    python train_net.py --config-file configs/torchvision/retinanet_resnet50_fpn.yaml --eval-only
    python train_net.py --config-file configs/lazy/retinanet_R50_FPN_1x.py --num-gpus 8 train.max_iter=90000
"""
import contextlib

import torch.distributed as dist
from detectron2.config import LazyConfig
from detectron2.engine import default_argument_parser, launch
from detectron2.utils import comm

import retinanet_d2
from retinanet_d2.config_files import find_config_file
from retinanet_d2.data import register_coco_dataset
from retinanet_d2.data.checks import allow_image_pixels
from retinanet_d2.engine import evaluate, run_parts, train
from retinanet_d2.engine.run_setup import output_dir_lock, prepare_output_dir, seed_run, setup_logging

__all__ = ["load_run_config", "setup", "main", "argument_parser"]


def load_run_config(config_file: str, opts):
    """The config of ``config_file`` (a path, or the name of one of the project's configs): a yacs
    file (.yaml) with this project's node and ``opts`` as KEY VALUE pairs (frozen), or a LazyConfig
    file (.py) with ``opts`` as key=value. The one place that picks the kind."""
    path = find_config_file(config_file)
    if path.endswith(".py"):
        return LazyConfig.apply_overrides(LazyConfig.load(path), opts)
    cfg = retinanet_d2.load_config(path, opts)
    cfg.freeze()
    return cfg


@contextlib.contextmanager
def setup(args):
    """The run's parts (engine.RunParts) and its model, for the block's duration: the config's values
    checked, the generators seeded, the model built once (a config error surfaces before anything is
    written); for training the output folder locked for this run and checked
    (run_setup.output_dir_lock, prepare_output_dir); then logging set up."""
    args.config_file = find_config_file(args.config_file)
    parts = run_parts(load_run_config(args.config_file, args.opts))
    parts.check_values()
    seed_run(parts.settings, args.eval_only)
    model = parts.build_model()
    folder, key = parts.settings.output_dir, parts.settings.output_dir_key
    with contextlib.nullcontext() if args.eval_only else output_dir_lock(folder, key):
        if not args.eval_only:
            prepare_output_dir(folder, resume=args.resume, start_over=args.start_over, key=key)
        setup_logging(parts.settings, args)
        yield parts, model


def argument_parser():
    """detectron2's default_argument_parser with --dataset NAME JSON IMAGE_DIR (repeatable),
    --max-image-pixels, --start-over and --allow-random-weights."""
    parser = default_argument_parser()
    parser.add_argument(
        "--dataset", nargs=3, action="append", default=[], metavar=("NAME", "JSON", "IMAGE_DIR"),
        help="register a COCO-format dataset (instances json + image folder) as NAME before the "
        "loaders are built; then name it in DATASETS.TRAIN / DATASETS.TEST (yacs) or "
        "dataloader.train.dataset.names / dataloader.test.dataset.names (LazyConfig)",
    )
    parser.add_argument(
        "--max-image-pixels", type=int, default=0, metavar="N",
        help="read images of up to N pixels (Pillow refuses more than ~179 million by default, as a guard "
        "against decompression bombs); for your own large scenes",
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
    """Register the --dataset entries, then train or evaluate as the config and flags say."""
    if getattr(args, "max_image_pixels", 0):
        allow_image_pixels(args.max_image_pixels)
    for name, json_file, image_root in getattr(args, "dataset", []):  # in every process
        register_coco_dataset(name, json_file, image_root)
    with setup(args) as (parts, model):
        if args.eval_only:
            return evaluate(parts, model, resume=args.resume, allow_random_weights=args.allow_random_weights)
        return train(parts, model, resume=args.resume)


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
