# The 1x schedule with ResNet-101 (the paper's R101-FPN-800).
from .retinanet_R50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.stages.depth = 101
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-101.pkl"
