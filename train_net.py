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
from detectron2.data import build_detection_test_loader
from detectron2.engine import DefaultTrainer, SimpleTrainer, TrainerBase, default_argument_parser, launch
from detectron2.engine.hooks import PeriodicWriter
from detectron2.utils import comm

import retinanet_d2
from retinanet_d2.amp import MixedPrecisionTrainer, amp_dtype, device_type, inference_autocast
from retinanet_d2.checkpoint import RetinaNetCheckpointer
from retinanet_d2.checkpoint.best import ResumableBestCheckpointer
from retinanet_d2.checkpoint.resolve import resolve_weights
from retinanet_d2.compat import create_ddp_model, default_trainer_saves_optimizer, replace_train_loader
from retinanet_d2.config import retinanet_node
from retinanet_d2.config_files import find_config_file
from retinanet_d2.data import check_dataset_files, check_num_classes, register_coco_dataset
from retinanet_d2.data.mapper import FileNamingDatasetMapper
from retinanet_d2.data.resumable import build_resumable_train_loader
from retinanet_d2.evaluation import build_coco_evaluator
from retinanet_d2.lazy_engine import lazy_eval_only, lazy_train
from retinanet_d2.modeling.tta import FocalRetinaNetWithTTA
from retinanet_d2.run_setup import (
    check_config_values,
    check_model_builds,
    output_dir_of,
    prepare_output_dir,
    require_weights,
    save_config,
    setup_run,
)
from retinanet_d2.schedule import config_learning_rates, restore_config_learning_rates
from retinanet_d2.validation_loss import ValidationLoss, build_validation_loader


class Trainer(DefaultTrainer):
    """DefaultTrainer with COCOEvaluator, clear errors for missing or mismatched datasets, weights in
    any format RetinaNetCheckpointer reads, checkpoints written atomically and resumed from the newest
    readable one, the config's learning rate applied on resume, and exact resumption: the optimizer
    state is checkpointed (detectron2 0.6 does not) and the train loader continues where the
    checkpointed run stopped; SOLVER.AMP.ENABLED trains in mixed precision on CUDA and CPU alike
    (retinanet_d2/amp.py); CPU models train in several processes on every detectron2 (compat.py)."""

    def __init__(self, cfg):
        """DefaultTrainer's construction, with this project's step trainer and checkpointer built
        once (DefaultTrainer's own would build detectron2's and a DDP that refuses CPU models)."""
        TrainerBase.__init__(self)
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, broadcast_buffers=False)
        if cfg.SOLVER.AMP.ENABLED:  # CPU (bfloat16) too, and float16 or bfloat16 on CUDA
            self._trainer = MixedPrecisionTrainer(
                model, data_loader, optimizer, device_type=device_type(cfg), dtype=amp_dtype(cfg)
            )
        else:
            self._trainer = SimpleTrainer(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.config_lrs = config_learning_rates(optimizer)
        self.checkpointer = RetinaNetCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def build_hooks(self):
        """DefaultTrainer's hooks, plus the validation loss every MODEL.FOCAL_RETINANET.VALIDATION_LOSS_PERIOD
        iterations (before the writers) and model_best.pth by BEST_METRIC when TEST.EVAL_PERIOD > 0
        (after the evaluation hook, which stores the metric)."""
        hooks = super().build_hooks()
        node = retinanet_node(self.cfg)
        if node.VALIDATION_LOSS_PERIOD > 0:
            writers = [i for i, h in enumerate(hooks) if isinstance(h, PeriodicWriter)]
            hooks.insert(writers[0] if writers else len(hooks),
                         ValidationLoss(node.VALIDATION_LOSS_PERIOD, build_validation_loader(self.cfg)))
        if self.cfg.TEST.EVAL_PERIOD > 0 and node.BEST_METRIC and comm.is_main_process():
            hooks.append(ResumableBestCheckpointer(self.cfg.TEST.EVAL_PERIOD, self.checkpointer, node.BEST_METRIC, node.BEST_MODE))
        return hooks

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        """COCOEvaluator scoring TEST.DETECTIONS_PER_IMAGE detections, then the error analysis (evaluation.py)."""
        return build_coco_evaluator(cfg, dataset_name, output_folder or os.path.join(cfg.OUTPUT_DIR, "inference"))

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """DefaultTrainer.test under MODEL.FOCAL_RETINANET.TEST_AMP; with TEST.AUG.ENABLED, also the
        test-time augmented model (modeling/tta.py), its results in OUTPUT_DIR/inference_TTA and
        under "<task>_TTA", as detectron2's R-CNN TTA reports them."""
        with inference_autocast(cfg):
            results = super().test(cfg, model, evaluators)
            if cfg.TEST.AUG.ENABLED and evaluators is None:
                tta_evaluators = [cls.build_evaluator(cfg, name, os.path.join(cfg.OUTPUT_DIR, "inference_TTA"))
                                  for name in cfg.DATASETS.TEST]
                tta_results = super().test(cfg, FocalRetinaNetWithTTA(cfg, model), tta_evaluators)
                results.update({f"{task}_TTA": metrics for task, metrics in tta_results.items()})
        return results

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
        """The newest readable checkpoint of OUTPUT_DIR with ``resume`` (model, optimizer, scheduler,
        iteration, then the data stream from there and the config's learning rate), else MODEL.WEIGHTS."""
        self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume=resume)
        if self.checkpointer.resumed_from:
            self.start_iter = self.iter + 1
            restore_config_learning_rates(self.optimizer, self.config_lrs, self.scheduler, self.start_iter)
            replace_train_loader(self._trainer, self.build_train_loader(self.cfg, self.start_iter))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        check_dataset_files(dataset_name)
        loader = build_detection_test_loader(cfg, dataset_name, mapper=FileNamingDatasetMapper(cfg, is_train=False))
        check_num_classes(dataset_name, cfg.MODEL.RETINANET.NUM_CLASSES)
        return loader


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
    if args.config_file.endswith(".py"):  # LazyConfig (retinanet_d2/lazy_engine.py)
        if args.eval_only:
            return lazy_eval_only(cfg, resume=args.resume, allow_random_weights=args.allow_random_weights)
        return lazy_train(cfg, resume=args.resume)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        checkpointer = RetinaNetCheckpointer(model, save_dir=cfg.OUTPUT_DIR, require_complete=not args.allow_random_weights)
        require_weights(checkpointer, cfg.MODEL.WEIGHTS, "MODEL.WEIGHTS", resume=args.resume,
                        allow_random_weights=args.allow_random_weights)
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return Trainer.test(cfg, model)
    if not args.resume:
        resolve_weights(cfg.MODEL.WEIGHTS)  # fail before building the data loader, naming the file
    trainer = Trainer(cfg)
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
