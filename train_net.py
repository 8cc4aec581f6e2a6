#!/usr/bin/env python
"""Train or evaluate FocalRetinaNet with detectron2's stock DefaultTrainer.

    python train_net.py --config-file configs/retinanet_R50_FPN_1x.yaml --num-gpus 8
    python train_net.py --config-file configs/retinanet_R50_FPN_1x.yaml --eval-only MODEL.WEIGHTS model.pth
"""
import os

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch
from detectron2.evaluation import COCOEvaluator

import retinanet_d2
from retinanet_d2.data import check_dataset_files
from retinanet_d2.weights import resolve_weights


class Trainer(DefaultTrainer):
    """DefaultTrainer with COCOEvaluator and a clear error for missing dataset files."""

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
        return COCOEvaluator(dataset_name, output_dir=output_folder)

    @classmethod
    def build_train_loader(cls, cfg):
        for name in cfg.DATASETS.TRAIN:
            check_dataset_files(name)
        return super().build_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        check_dataset_files(dataset_name)
        return super().build_test_loader(cfg, dataset_name)


def setup(args):
    cfg = get_cfg()
    retinanet_d2.add_retinanet_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            resolve_weights(cfg.MODEL.WEIGHTS), resume=args.resume
        )
        return Trainer.test(cfg, model)
    if not args.resume:
        resolve_weights(cfg.MODEL.WEIGHTS)  # fail before building the data loader, naming the file
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
