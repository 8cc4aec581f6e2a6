# The paper's RetinaNet R50-FPN (§4) as a LazyConfig model: FocalRetinaNet, ResNet + FPN P3-P7 with P6
# from C5, 9 anchors per location (octave base scale 4, 3 scales per octave, ratios 1:2 1:1 2:1), the
# focal loss (gamma 2, alpha .25). The same model as configs/retinanet_R50_FPN_1x.yaml builds.
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BasicStem, ResNet
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher

from retinanet_d2.modeling.anchors import OctaveAnchorGenerator
from retinanet_d2.modeling.backbone import focal_retinanet_fpn
from retinanet_d2.modeling.losses import FocalLoss
from retinanet_d2.modeling.head import FocalRetinaNetHead
from retinanet_d2.modeling.meta_arch import FocalRetinaNet

model = L(FocalRetinaNet)(
    backbone=L(focal_retinanet_fpn)(
        bottom_up=L(ResNet)(
            stem=L(BasicStem)(in_channels=3, out_channels=64, norm="FrozenBN"),
            stages=L(ResNet.make_default_stages)(depth=50, stride_in_1x1=True, norm="FrozenBN"),
            out_features=["res3", "res4", "res5"],
            freeze_at=2,
        ),
        in_features=["res3", "res4", "res5"],
        out_channels=256,
        p6_input="res5",
    ),
    head=L(FocalRetinaNetHead)(
        input_shape=[ShapeSpec(channels=256)] * 5,
        num_classes="${..num_classes}",
        num_anchors=9,
        conv_dims=[256, 256, 256, 256],
        prior_prob=0.01,
    ),
    head_in_features=["p3", "p4", "p5", "p6", "p7"],
    anchor_generator=L(OctaveAnchorGenerator)(
        strides=[8, 16, 32, 64, 128],
        aspect_ratios=[0.5, 1.0, 2.0],
        octave_base_scale=4.0,
        scales_per_octave=3,
        offset=0.0,
    ),
    box2box_transform=L(Box2BoxTransform)(weights=[1.0, 1.0, 1.0, 1.0]),
    anchor_matcher=L(Matcher)(thresholds=[0.4, 0.5], labels=[0, -1, 1], allow_low_quality_matches=True),
    classification_loss=L(FocalLoss)(alpha=0.25, gamma=2.0),
    num_classes=80,
    max_detections_per_image=100,
    pixel_mean=[103.530, 116.280, 123.675],
    pixel_std=[1.0, 1.0, 1.0],
    input_format="BGR",
)
