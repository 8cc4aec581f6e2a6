"""The adapter of yacs configs (``.yaml``, detectron2's keys plus MODEL.FOCAL_RETINANET): the parts
detectron2's DefaultTrainer would build from the same keys."""
import os
from typing import Dict, Iterable, List

import torch

import detectron2.data.transforms as T
from detectron2.data import build_detection_test_loader, get_detection_dataset_dicts
from detectron2.engine import DefaultTrainer
from detectron2.modeling import build_model
from detectron2.solver import build_lr_scheduler, build_optimizer
from detectron2.utils import comm

from ..amp import resolve_amp_dtype
from ..atomic import atomic_open
from ..config import retinanet_node
from ..data.mapper import FileNamingDatasetMapper
from ..data.resumable import build_resumable_train_loader
from ..evaluation import build_coco_evaluator
from ..validation_loss import build_validation_loader
from .parts import RunParts
from .run_setup import BEST_MODES, one_of, positive
from .settings import RunSettings
from .step import check_step_precision


def yacs_settings(cfg) -> RunSettings:
    """The RunSettings of a yacs config (DefaultTrainer's keys, MODEL.FOCAL_RETINANET's)."""
    node = retinanet_node(cfg)
    device = torch.device(cfg.MODEL.DEVICE).type
    return RunSettings(
        output_dir=cfg.OUTPUT_DIR, output_dir_key="OUTPUT_DIR", weights=cfg.MODEL.WEIGHTS, weights_key="MODEL.WEIGHTS",
        max_iter=cfg.SOLVER.MAX_ITER, checkpointer={"period": cfg.SOLVER.CHECKPOINT_PERIOD},
        eval_period=cfg.TEST.EVAL_PERIOD, log_period=20,  # DefaultTrainer's writers' period
        train_amp=cfg.SOLVER.AMP.ENABLED, test_amp=node.TEST_AMP, device=device,
        amp_dtype=resolve_amp_dtype(node.AMP_DTYPE, device),
        best={"val_metric": node.BEST_METRIC, "mode": node.BEST_MODE},
        validation_loss_period=node.VALIDATION_LOSS_PERIOD,
        tta={"enabled": cfg.TEST.AUG.ENABLED, "min_sizes": tuple(cfg.TEST.AUG.MIN_SIZES),
             "max_size": cfg.TEST.AUG.MAX_SIZE, "flip": cfg.TEST.AUG.FLIP},
        tiles={"size": node.TILE_SIZE, "overlap": node.TILE_OVERLAP, "batch_size": node.TILE_BATCH_SIZE},
        precise_bn={"enabled": cfg.TEST.PRECISE_BN.ENABLED, "num_iter": cfg.TEST.PRECISE_BN.NUM_ITER},
        train_datasets=tuple(cfg.DATASETS.TRAIN), test_datasets=tuple(cfg.DATASETS.TEST),
        num_classes=cfg.MODEL.RETINANET.NUM_CLASSES, num_classes_key="MODEL.RETINANET.NUM_CLASSES",
        seed=cfg.SEED, cudnn_benchmark=bool(cfg.CUDNN_BENCHMARK), ddp={"broadcast_buffers": False},
    )


class YacsParts(RunParts):
    """A yacs config's run parts, built by detectron2's builders from detectron2's keys."""

    TILE_KEYS = {"tile_size": "MODEL.FOCAL_RETINANET.TILE_SIZE", "overlap": "MODEL.FOCAL_RETINANET.TILE_OVERLAP",
                 "batch_size": "MODEL.FOCAL_RETINANET.TILE_BATCH_SIZE"}

    def __init__(self, cfg):
        """cfg: a yacs CfgNode; its batch size and learning rate are scaled to the world size as
        DefaultTrainer does (SOLVER.REFERENCE_WORLD_SIZE)."""
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        super().__init__(cfg, yacs_settings(cfg))

    def check_values(self) -> None:
        cfg = self.cfg
        positive([("SOLVER.MAX_ITER", cfg.SOLVER.MAX_ITER), ("SOLVER.IMS_PER_BATCH", cfg.SOLVER.IMS_PER_BATCH),
                  ("SOLVER.CHECKPOINT_PERIOD", cfg.SOLVER.CHECKPOINT_PERIOD)])
        one_of("MODEL.FOCAL_RETINANET.BEST_MODE", retinanet_node(cfg).BEST_MODE, BEST_MODES)
        self.check_tiles()
        check_step_precision(self.settings)

    def build_model(self) -> torch.nn.Module:
        return build_model(self.cfg)

    def build_optimizer(self, model):
        return build_optimizer(self.cfg, model)

    def build_lr_scheduler(self, optimizer):
        return build_lr_scheduler(self.cfg, optimizer)

    def training_records(self) -> List[Dict]:
        return get_detection_dataset_dicts(self.cfg.DATASETS.TRAIN, filter_empty=self.cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)

    def build_train_loader(self, records: List[Dict], start_iter: int) -> Iterable:
        return build_resumable_train_loader(self.cfg, records, start_iter)

    def build_test_loader(self, dataset_name: str) -> Iterable:
        return build_detection_test_loader(self.cfg, dataset_name, mapper=FileNamingDatasetMapper(self.cfg, is_train=False))

    def build_evaluator(self, dataset_name: str, tta: bool = False):
        folder = os.path.join(self.cfg.OUTPUT_DIR, "inference_TTA" if tta else "inference")
        return build_coco_evaluator(self.cfg, dataset_name, folder)

    def build_validation_loader(self) -> Iterable:
        return build_validation_loader(self.cfg)

    def test_resize(self) -> T.Augmentation:
        return T.ResizeShortestEdge([self.cfg.INPUT.MIN_SIZE_TEST] * 2, self.cfg.INPUT.MAX_SIZE_TEST)

    @property
    def input_format(self) -> str:
        return self.cfg.INPUT.FORMAT

    def save_config(self, path: str) -> None:
        with atomic_open(path, "w", encoding="utf-8") as f:
            f.write(self.cfg.dump())
