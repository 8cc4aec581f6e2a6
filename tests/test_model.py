import copy
import inspect
import math
import os

import pytest
import torch
import torch.nn.functional as F

from detectron2.layers import Conv2d, FrozenBatchNorm2d
from detectron2.modeling import build_backbone, build_model
from detectron2.utils.events import EventStorage

import retinanet_d2
from helpers import CONFIGS, as_detectron2_retinanet, image_with_boxes, tiny_cfg, well_scaled_model
from retinanet_d2.modeling.anchors import OctaveAnchorGenerator
from retinanet_d2.modeling.backbone import P6P7TopBlock
from retinanet_d2.modeling.losses import FocalLoss, FocalLossStar, OhemLoss
from retinanet_d2.modeling.folded_conv import FrozenBNFoldedConv2d, fold_frozen_batchnorm
from retinanet_d2.modeling.head import FocalRetinaNetHead
from retinanet_d2.modeling.meta_arch import FocalRetinaNet
from weights_files import randomize_norms


def test_fpn_levels_shapes_and_strides():
    cfg = tiny_cfg()
    backbone = build_backbone(cfg)
    shapes = backbone.output_shape()
    assert {k: (v.channels, v.stride) for k, v in shapes.items()} == {
        "p3": (32, 8), "p4": (32, 16), "p5": (32, 32), "p6": (32, 64), "p7": (32, 128)
    }
    # P6 is a 3x3/2 conv on C5 (512 channels for R18), P7 on ReLU(P6).
    assert backbone.top_block.p6.in_channels == 512
    assert backbone.top_block.p6.stride == (2, 2) and backbone.top_block.p6.kernel_size == (3, 3)
    features = backbone(torch.zeros(1, 3, 160, 224))
    assert {k: tuple(v.shape[2:]) for k, v in features.items()} == {
        "p3": (20, 28), "p4": (10, 14), "p5": (5, 7), "p6": (3, 4), "p7": (2, 2)
    }


def test_frozen_bn_folded_into_the_convolution():
    torch.manual_seed(0)
    conv = Conv2d(8, 16, 3, padding=1, bias=True, norm=FrozenBatchNorm2d(16))
    randomize_norms(conv, seed=1)
    reference = copy.deepcopy(conv)
    holder = torch.nn.Sequential(conv)
    rng = torch.get_rng_state()
    assert fold_frozen_batchnorm(holder) == 1 and type(holder[0]) is FrozenBNFoldedConv2d
    assert torch.equal(torch.get_rng_state(), rng)  # the seeded initialisation of later modules is kept
    assert holder[0].weight is conv.weight and holder[0].norm is conv.norm  # shared, not copied
    conv = holder[0]
    x = torch.randn(2, 8, 12, 10, requires_grad=True)
    # conv + frozen BN by hand: (conv(x) - mean) / sqrt(var + eps) * gamma + beta
    bn = reference.norm
    expected = (F.conv2d(x, reference.weight, reference.bias, padding=1) - bn.running_mean.view(-1, 1, 1)) \
        / (bn.running_var.view(-1, 1, 1) + bn.eps).sqrt() * bn.weight.view(-1, 1, 1) + bn.bias.view(-1, 1, 1)
    out = conv(x)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad(out.square().sum(), [x, conv.weight, conv.bias])
    expected_grads = torch.autograd.grad(expected.square().sum(), [x, reference.weight, reference.bias])
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-4)
    assert set(conv.state_dict()) == set(reference.state_dict())


def test_resnet_convs_with_frozen_bn_are_folded():
    backbone = build_backbone(tiny_cfg())
    convs = [m for m in backbone.bottom_up.modules() if isinstance(m, Conv2d)]
    # R18: stem conv + 8 blocks x 2 convs + 3 shortcuts, all with frozen BN
    assert len(convs) == 20 and all(type(m) is FrozenBNFoldedConv2d for m in convs)


def test_p6_from_p5_option():
    cfg = tiny_cfg(**{"MODEL.FOCAL_RETINANET.P6_INPUT": "p5"})
    assert build_backbone(cfg).top_block.p6.in_channels == 32
    cfg = tiny_cfg(**{"MODEL.FOCAL_RETINANET.P6_INPUT": "c4"})
    with pytest.raises(ValueError, match="^MODEL.FOCAL_RETINANET.P6_INPUT must be one of"):
        build_backbone(cfg)
    with pytest.raises(ValueError, match="^in_feature must be one of"):  # config-free: its argument
        P6P7TopBlock(32, 32, in_feature="c4")


def test_head_initialisation():
    cfg = tiny_cfg(**{"MODEL.RETINANET.NUM_CONVS": 4, "MODEL.FPN.OUT_CHANNELS": 64})
    torch.manual_seed(0)
    head = build_model(cfg).head
    assert torch.equal(head.cls_score.bias, torch.full_like(head.cls_score.bias, -math.log(99)))
    assert head.cls_score.out_channels == 9 * 5 and head.bbox_pred.out_channels == 9 * 4
    convs = [m for m in head.cls_subnet if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 4
    for conv in convs + [head.bbox_pred]:
        assert torch.equal(conv.bias, torch.zeros_like(conv.bias))
        assert conv.weight.mean().abs() < 1e-3 and abs(conv.weight.std() - 0.01) < 1e-3


def test_r50_parameter_count_and_detectron2_module_names():
    cfg = retinanet_d2.load_config(os.path.join(CONFIGS, "retinanet_R50_FPN_1x.yaml"), ["MODEL.DEVICE", "cpu"])
    ours = build_model(cfg)
    assert sum(p.numel() for p in ours.parameters()) == 37_915_572
    ref_cfg = as_detectron2_retinanet(cfg)
    ref = build_model(ref_cfg)
    assert set(ours.state_dict()) == set(ref.state_dict())


@pytest.fixture(scope="module")
def twins():
    """FocalRetinaNet and detectron2's RetinaNet with identical weights (random frozen-BN statistics,
    so that our folded frozen BN is compared with detectron2's)."""
    cfg = tiny_cfg()
    ours = well_scaled_model(cfg)
    randomize_norms(ours, seed=0)
    ref = build_model(as_detectron2_retinanet(cfg))
    ref.load_state_dict(ours.state_dict(), strict=True)
    return ours, ref


def _losses(model, batch, num_foreground=None):
    """The model's training losses on ``batch`` (detectron2's RetinaNet with its normaliser's EMA held
    at ``num_foreground``), and the foreground count of FocalRetinaNet's assignment."""
    model.train()
    model.zero_grad()
    with EventStorage():
        if num_foreground is not None:
            model.loss_normalizer = num_foreground  # detectron2's EMA then stays at this value
        losses = model(batch)
        if num_foreground is None:
            labels = model.dense_outputs(batch).labels
            num_foreground = float(((labels >= 0) & (labels < 5)).sum())
    return losses, num_foreground


def test_same_losses_and_gradients_as_detectron2_under_the_same_normaliser(twins):
    """Losses in float32; gradients in float64, where the two agree to rounding: in float32 a
    pre-activation within rounding of zero can pass a ReLU in one model and not in the other (on an AVX2
    AMD EPYC one such flip among 71,680 activations of res4.1 moved every earlier layer's weight gradient
    by up to 3e-3 of its largest element, both models 1e-6 from float64 otherwise)."""
    ours, ref = twins
    batch = [image_with_boxes(seed=0), image_with_boxes(seed=1)]
    losses, num_foreground = _losses(ours, batch)
    ref_losses, _ = _losses(ref, batch, num_foreground)
    assert num_foreground > 0
    for key in ("loss_cls", "loss_box_reg"):
        torch.testing.assert_close(losses[key], ref_losses[key], rtol=1e-5, atol=1e-6)

    ours, ref = copy.deepcopy(ours).double(), copy.deepcopy(ref).double()
    batch = [{**record, "image": record["image"].double()} for record in batch]
    losses, _ = _losses(ours, batch)
    ref_losses, _ = _losses(ref, batch, num_foreground)
    sum(losses.values()).backward()
    sum(ref_losses.values()).backward()
    ref_params = dict(ref.named_parameters())
    for name, param in ours.named_parameters():
        torch.testing.assert_close(param.grad, ref_params[name].grad, rtol=1e-4, atol=1e-6, msg=name)


def test_same_detections_as_detectron2(twins):
    ours, ref = twins
    ours.eval(), ref.eval()
    inputs = [{"image": image_with_boxes(seed=s)["image"]} for s in (2, 3)]
    with torch.no_grad():
        a = ours(inputs)
        b = ref(inputs)
    for x, y in zip(a, b):
        x, y = x["instances"], y["instances"]
        assert len(x) == len(y) > 10
        # float rounding of the folded frozen BN: ~2e-5 relative
        torch.testing.assert_close(x.pred_boxes.tensor, y.pred_boxes.tensor, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(x.scores, y.scores, rtol=1e-4, atol=1e-6)
        assert torch.equal(x.pred_classes, y.pred_classes)


def _assert_config_gives_the_defaults(cls, from_cfg, skip=()):
    """Every keyword default of ``cls`` equals what from_config reads from the Base config."""
    checked = 0
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if param.default is inspect.Parameter.empty or name not in from_cfg or name in skip:
            continue
        value = from_cfg[name]
        if isinstance(value, (list, tuple)) and not isinstance(param.default, (list, tuple)):
            assert set(value) == {param.default}, (cls.__name__, name)  # per-level copies
        else:
            assert (tuple(value) if isinstance(value, list) else value) == param.default, (cls.__name__, name)
        checked += 1
    assert checked > 0, cls.__name__


def test_config_defaults_equal_constructor_defaults():
    """One source per default: every @configurable of the project built from the Base config gets
    its keyword defaults (losses of each family included)."""
    cfg = tiny_cfg()
    shapes = list(build_backbone(cfg).output_shape().values())
    from_cfg = FocalRetinaNet.from_config(cfg)
    _assert_config_gives_the_defaults(FocalRetinaNet, from_cfg, skip=("classification_loss",))
    loss = from_cfg["classification_loss"]
    assert (type(loss), loss.alpha, loss.gamma) == (FocalLoss, 0.25, 2.0)  # FocalRetinaNet's default loss
    _assert_config_gives_the_defaults(FocalRetinaNetHead, FocalRetinaNetHead.from_config(cfg, shapes))
    _assert_config_gives_the_defaults(OctaveAnchorGenerator, OctaveAnchorGenerator.from_config(cfg, shapes[:5]))
    for loss_class in (FocalLoss, FocalLossStar, OhemLoss):
        _assert_config_gives_the_defaults(loss_class, loss_class.from_config(cfg))
    assert P6P7TopBlock(8, 8).in_feature == cfg.MODEL.FOCAL_RETINANET.P6_INPUT


def test_focal_loss_arguments_and_a_loss_object_together_are_refused():
    kwargs = FocalRetinaNet.from_config(tiny_cfg())
    with pytest.raises(ValueError, match="focal_loss_gamma=0.0 given together with classification_loss"):
        FocalRetinaNet(**{**kwargs, "focal_loss_gamma": 0.0})


def test_constructor_is_a_drop_in_for_detectron2_retinanet():
    """Every keyword of detectron2's RetinaNet is accepted, with RetinaNet's default."""
    from detectron2.modeling.meta_arch.retinanet import RetinaNet

    ours = inspect.signature(FocalRetinaNet.__init__).parameters
    for name, param in inspect.signature(RetinaNet.__init__).parameters.items():
        if name == "self":
            continue
        assert name in ours, name
        assert ours[name].default == param.default, name


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("MODEL.RETINANET.FOCAL_LOSS_GAMMA", -1.0, "FOCAL_LOSS_GAMMA"),
        ("MODEL.RETINANET.FOCAL_LOSS_ALPHA", 1.5, "FOCAL_LOSS_ALPHA"),
        ("MODEL.RETINANET.IOU_THRESHOLDS", [0.5, 0.4], "IOU_THRESHOLDS"),
        ("MODEL.RETINANET.IOU_LABELS", [0, 2, 1], "IOU_LABELS"),
        ("MODEL.RETINANET.IOU_LABELS", [0, 1], "IOU_LABELS"),
        ("MODEL.ANCHOR_GENERATOR.SIZES", [[16, 32, 64]], "ANCHOR_GENERATOR.SIZES.*OCTAVE_BASE_SCALE"),
        ("MODEL.RETINANET.NORM", "BN", "^MODEL.RETINANET.NORM must be one of"),
        ("MODEL.RETINANET.BBOX_REG_LOSS_TYPE", "iou", "^MODEL.RETINANET.BBOX_REG_LOSS_TYPE must be one of"),
        ("MODEL.RETINANET.SMOOTH_L1_LOSS_BETA", -0.1, "^MODEL.RETINANET.SMOOTH_L1_LOSS_BETA must be >= 0"),
        ("MODEL.RETINANET.IN_FEATURES", ["p2", "p3"], "IN_FEATURES"),
        ("MODEL.RETINANET.PRIOR_PROB", 1.0, "^MODEL.RETINANET.PRIOR_PROB must be in"),
        ("MODEL.FOCAL_RETINANET.LOSS", "ohem_typo", "MODEL.FOCAL_RETINANET.LOSS"),
        ("MODEL.FOCAL_RETINANET.MATCHER_CHUNK_BOXES", 0, "^MODEL.FOCAL_RETINANET.MATCHER_CHUNK_BOXES must be >= 1"),
        ("MODEL.FOCAL_RETINANET.ANCHOR_ROUNDING", "caffe2", "^MODEL.FOCAL_RETINANET.ANCHOR_ROUNDING must be one of"),
        ("MODEL.FOCAL_RETINANET.SCALES_PER_OCTAVE", 0, "^MODEL.FOCAL_RETINANET.SCALES_PER_OCTAVE must be >= 1"),
        ("MODEL.FOCAL_RETINANET.OCTAVE_BASE_SCALE", -1.0, "^MODEL.FOCAL_RETINANET.OCTAVE_BASE_SCALE must be > 0"),
        ("MODEL.FOCAL_RETINANET.LEVEL_SCORE_THRESH_TEST", [0.05, 0.0], "^MODEL.FOCAL_RETINANET.LEVEL_SCORE_THRESH_TEST needs"),
    ],
)
def test_bad_settings_fail_at_build_naming_the_key(key, value, message):
    with pytest.raises(ValueError, match=message):
        build_model(tiny_cfg(**{key: value}))
