#!/usr/bin/env python
"""Train or evaluate FocalRetinaNet with detectron2's stock DefaultTrainer.

    python train_net.py --config-file configs/retinanet_R50_FPN_1x.yaml --num-gpus 8
    python train_net.py --config-file configs/retinanet_R50_FPN_1x.yaml --eval-only MODEL.WEIGHTS model.pth
    python train_net.py --config-file configs/torchvision/retinanet_resnet50_fpn.yaml --eval-only
    python train_net.py --config-file configs/lazy/retinanet_R50_FPN_1x.py --num-gpus 8 train.max_iter=90000
"""
import os
import weakref

import torch.distributed as dist
from detectron2.config import LazyConfig
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch
from detectron2.evaluation import COCOEvaluator
from detectron2.utils import comm

import retinanet_d2
from retinanet_d2.amp import MixedPrecisionTrainer, amp_dtype, device_type, inference_autocast
from retinanet_d2.checkpoint import RetinaNetCheckpointer
from retinanet_d2.compat import default_trainer_saves_optimizer, replace_train_loader
from retinanet_d2.data import check_dataset_files, check_num_classes, register_coco_dataset
from retinanet_d2.data.resumable import build_resumable_train_loader
from retinanet_d2.lazy_engine import lazy_eval_only, lazy_train
from retinanet_d2.weights import resolve_weights


class Trainer(DefaultTrainer):
    """DefaultTrainer with COCOEvaluator, clear errors for missing or mismatched datasets,
    MODEL.WEIGHTS in any format RetinaNetCheckpointer reads, and exact resumption: the optimizer
    state is checkpointed (detectron2 0.6 does not) and the train loader continues where the
    checkpointed run stopped; SOLVER.AMP.ENABLED trains in mixed precision on CUDA and CPU alike
    (retinanet_d2/amp.py)."""

    def __init__(self, cfg):
        super().__init__(cfg)
        if cfg.SOLVER.AMP.ENABLED:  # CPU (bfloat16) too, and float16 or bfloat16 on CUDA
            amp = self._trainer
            self._trainer = MixedPrecisionTrainer(
                amp.model, amp.data_loader, amp.optimizer, device_type=device_type(cfg), dtype=amp_dtype(cfg)
            )
        # Loads detectron2, Detectron and torchvision files; saves as detectron2's does (the
        # PeriodicCheckpointer hook keeps detectron2's checkpointer, which saves the same state).
        self.checkpointer = RetinaNetCheckpointer(
            self._trainer.model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
        return COCOEvaluator(dataset_name, output_dir=output_folder)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        with inference_autocast(cfg):  # MODEL.FOCAL_RETINANET.TEST_AMP
            return super().test(cfg, model, evaluators)

    @classmethod
    def build_train_loader(cls, cfg, start_iter=0):
        for name in cfg.DATASETS.TRAIN:
            check_dataset_files(name)
        loader = build_resumable_train_loader(cfg, start_iter)
        for name in cfg.DATASETS.TRAIN:
            check_num_classes(name, cfg.MODEL.RETINANET.NUM_CLASSES)
        return loader

    def state_dict(self):
        state = super().state_dict()
        if not default_trainer_saves_optimizer():
            state["_trainer"] = self._trainer.state_dict()
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        if not default_trainer_saves_optimizer() and "_trainer" in state:
            self._trainer.load_state_dict(state["_trainer"])

    def resume_or_load(self, resume=True):
        super().resume_or_load(resume=resume)
        if self.start_iter > 0:
            replace_train_loader(self._trainer, self.build_train_loader(self.cfg, self.start_iter))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        check_dataset_files(dataset_name)
        loader = super().build_test_loader(cfg, dataset_name)
        check_num_classes(dataset_name, cfg.MODEL.RETINANET.NUM_CLASSES)
        return loader


def setup(args):
    """The config of ``args``: a yacs file (.yaml) with this project's node, or a LazyConfig file
    (.py), with the command line's overrides (KEY VALUE pairs for yacs, key=value for LazyConfig)."""
    if args.config_file.endswith(".py"):
        cfg = LazyConfig.apply_overrides(LazyConfig.load(args.config_file), args.opts)
    else:
        cfg = retinanet_d2.load_config(args.config_file, args.opts)
        cfg.freeze()
    default_setup(cfg, args)
    return cfg


def argument_parser():
    """detectron2's default_argument_parser with --dataset NAME JSON IMAGE_DIR (repeatable)."""
    parser = default_argument_parser()
    parser.add_argument(
        "--dataset", nargs=3, action="append", default=[], metavar=("NAME", "JSON", "IMAGE_DIR"),
        help="register a COCO-format dataset (instances json + image folder) as NAME before the "
        "loaders are built; then name it in DATASETS.TRAIN / DATASETS.TEST (yacs) or "
        "dataloader.train.dataset.names / dataloader.test.dataset.names (LazyConfig)",
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
    if args.config_file.endswith(".py"):  # LazyConfig (retinanet_d2/lazy_engine.py)
        if args.eval_only:
            return lazy_eval_only(cfg, resume=args.resume)
        return lazy_train(cfg, resume=args.resume)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        RetinaNetCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            resolve_weights(cfg.MODEL.WEIGHTS), resume=args.resume
        )
        return Trainer.test(cfg, model)
    if not args.resume:
        resolve_weights(cfg.MODEL.WEIGHTS)  # fail before building the data loader, naming the file
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
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
