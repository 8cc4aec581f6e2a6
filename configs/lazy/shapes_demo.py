# The demo (configs/shapes_demo.yaml) as a LazyConfig: FocalRetinaNet trained from scratch on CPU on
# the embedded shapes dataset; ResNet-18 with GroupNorm, FPN 64 channels, GN head with 2 convs, trained
# at 224 px, tested at 352 px, as the yacs demo.
#   python train_net.py --config-file configs/lazy/shapes_demo.py
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import build_detection_test_loader, build_detection_train_loader, get_detection_dataset_dicts
from detectron2.layers import ShapeSpec
from detectron2.model_zoo import get_config
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler
from omegaconf import OmegaConf

import retinanet_d2  # noqa: F401  (registers the shapes splits)
from retinanet_d2.data.mapper import FileNamingDatasetMapper
from retinanet_d2.evaluation import AnalyzedCOCOEvaluator

from .focal_retinanet_model import model

model.backbone.bottom_up.stem.norm = "GN"
model.backbone.bottom_up.stages.depth = 18
del model.backbone.bottom_up.stages.stride_in_1x1  # basic blocks have one 3x3 stride
model.backbone.bottom_up.stages.norm = "GN"
model.backbone.bottom_up.freeze_at = 0
model.backbone.out_channels = 64
model.head.input_shape = [ShapeSpec(channels=64)] * 5
model.head.conv_dims = [64, 64]
model.head.norm = "GN"
model.anchor_generator.octave_base_scale = 2.0
model.num_classes = 3
model.pixel_std = [57.375, 57.120, 58.395]

dataloader = OmegaConf.create()
dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="shapes_train"),
    mapper=L(FileNamingDatasetMapper)(
        is_train=True,
        augmentations=[
            L(T.ResizeShortestEdge)(short_edge_length=(224,), max_size=224, sample_style="choice"),
            L(T.RandomFlip)(horizontal=True),
        ],
        image_format="BGR",
    ),
    total_batch_size=4,
    num_workers=2,
)
dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="shapes_val", filter_empty=False),
    mapper=L(FileNamingDatasetMapper)(
        is_train=False, augmentations=[L(T.ResizeShortestEdge)(short_edge_length=352, max_size=352)], image_format="BGR"
    ),
    num_workers=2,
)
dataloader.evaluator = L(AnalyzedCOCOEvaluator)(  # COCOEvaluator, then the error analysis
    dataset_name="${..test.dataset.names}", output_dir="${...train.output_dir}/inference",
    max_dets_per_image="${...model.max_detections_per_image}",
)

optimizer = get_config("common/optim.py").SGD
optimizer.lr = 0.03
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1, 0.01], milestones=[1550, 1850], num_updates=2000),
    warmup_length=100 / 2000,
    warmup_method="linear",
    warmup_factor=0.001,
)
train = get_config("common/train.py").train
train.init_checkpoint = ""
train.max_iter = 2000
train.device = "cpu"
train.output_dir = "./output/shapes_demo_lazy"
train.eval_period = 0
train.checkpointer.period = 100000
train.seed = 1
