# The paper's 1x schedule as a LazyConfig: R50-FPN, 800 px, 16 images, LR 0.01 divided by 10 at 60k
# and 80k, 90k iterations. Train: python train_net.py --config-file configs/lazy/retinanet_R50_FPN_1x.py
from detectron2.model_zoo import get_config

from retinanet_d2.data.mapper import FileNamingDatasetMapper
from retinanet_d2.evaluation import AnalyzedCOCOEvaluator

from .focal_retinanet_model import model

dataloader = get_config("common/data/coco.py").dataloader
dataloader.train.mapper.augmentations[0].short_edge_length = (800,)
dataloader.train.mapper.use_instance_mask = False
dataloader.train.mapper._target_ = FileNamingDatasetMapper  # the loader's errors name the image file
dataloader.test.mapper._target_ = FileNamingDatasetMapper
dataloader.evaluator._target_ = AnalyzedCOCOEvaluator  # COCOEvaluator, then the error analysis
dataloader.evaluator.output_dir = "${...train.output_dir}/inference"
dataloader.evaluator.max_dets_per_image = "${...model.max_detections_per_image}"  # as many as the model keeps
optimizer = get_config("common/optim.py").SGD
optimizer.lr = 0.01
lr_multiplier = get_config("common/coco_schedule.py").lr_multiplier_1x
train = get_config("common/train.py").train
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
train.max_iter = 90000
