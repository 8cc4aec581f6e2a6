import pytest
import torch

from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator, build_anchor_generator

from helpers import tiny_cfg
from retinanet_d2.modeling.anchors import OctaveAnchorGenerator, octave_anchor_sizes, rounded_cell_anchors

STRIDES = [8, 16, 32, 64, 128]
PAPER_SIZES = [[x, x * 2 ** (1.0 / 3), x * 2 ** (2.0 / 3)] for x in [32, 64, 128, 256, 512]]


def test_octave_sizes_are_exactly_detectron2s_retinanet_sizes():
    assert octave_anchor_sizes(STRIDES, 4.0, 3) == PAPER_SIZES


def test_paper_anchors_cover_32_to_813_pixels():
    sizes = octave_anchor_sizes(STRIDES, 4.0, 3)
    assert sizes[0][0] == 32.0
    assert round(sizes[-1][-1]) == 813


def test_generator_equals_detectron2_default_generator():
    ratios = [[0.5, 1.0, 2.0]]
    ours = OctaveAnchorGenerator(strides=STRIDES, aspect_ratios=ratios)
    ref = DefaultAnchorGenerator(sizes=PAPER_SIZES, aspect_ratios=ratios, strides=STRIDES, offset=0.0)  # the config default
    features = [torch.zeros(1, 1, 96 // s + 1, 128 // s + 1) for s in STRIDES]
    for a, b in zip(ours(features), ref(features)):
        assert torch.equal(a.tensor, b.tensor)
    assert ours.num_cell_anchors == [9] * 5


def test_hand_computed_cell_anchors_on_p3():
    gen = OctaveAnchorGenerator(strides=[8], aspect_ratios=[[1.0]], scales_per_octave=1, offset=0.0)
    anchors = gen([torch.zeros(1, 1, 1, 2)])[0].tensor
    # one 32x32 anchor centred at (0, 0) and one at (8, 0)
    assert anchors.tolist() == [[-16.0, -16.0, 16.0, 16.0], [-8.0, -16.0, 24.0, 16.0]]
    tall = OctaveAnchorGenerator(strides=[8], aspect_ratios=[[2.0]], scales_per_octave=1, offset=0.5)
    w, h = 32 / 2**0.5, 32 * 2**0.5  # ratio = h / w = 2, area 32^2
    expected = torch.tensor([[4 - w / 2, 4 - h / 2, 4 + w / 2, 4 + h / 2]])
    torch.testing.assert_close(tall([torch.zeros(1, 1, 1, 1)])[0].tensor, expected)


def test_built_from_config_in_paper_terms():
    cfg = tiny_cfg()
    shapes = [ShapeSpec(channels=32, stride=s) for s in STRIDES]
    gen = build_anchor_generator(cfg, shapes)
    assert isinstance(gen, OctaveAnchorGenerator)
    assert gen.num_cell_anchors == [9] * 5
    cfg.MODEL.FOCAL_RETINANET.SCALES_PER_OCTAVE = 1
    cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[1.0]]
    assert build_anchor_generator(cfg, shapes).num_cell_anchors == [1] * 5


def test_bad_anchor_settings_name_the_argument():
    """Config-free: the argument's name (the model's config path names the key: test_model)."""
    with pytest.raises(ValueError, match="^scales_per_octave must be >= 1, got 0$"):
        octave_anchor_sizes(STRIDES, 4.0, 0)
    with pytest.raises(ValueError, match="^octave_base_scale must be > 0, got -1.0$"):
        octave_anchor_sizes(STRIDES, -1.0, 3)


def test_detectron_rounding_by_hand_on_p3():
    # Detectron rounds at the stride (8): ratio 0.5: w0 = round(sqrt(64 / 0.5)) = round(11.31) = 11,
    # h0 = round(5.5) = 6 (half to even); ratio 2: w0 = round(5.66) = 6, h0 = 12; then x 32 / 8 = 4.
    cells = rounded_cell_anchors([32.0], [0.5, 1.0, 2.0], stride=8, rounding="detectron")
    assert cells.tolist() == [[-22.0, -12.0, 22.0, 12.0], [-16.0, -16.0, 16.0, 16.0], [-12.0, -24.0, 12.0, 24.0]]


def test_torchvision_rounding_by_hand():
    # size 40.3 is truncated to 40; ratio 0.5: w = 40 / sqrt(.5) = 56.57, h = 28.28; corners
    # round(28.28) = 28 and round(14.14) = 14.
    cells = rounded_cell_anchors([32 * 2 ** (1 / 3)], [0.5, 1.0], stride=8, rounding="torchvision")
    assert cells.tolist() == [[-28.0, -14.0, 28.0, 14.0], [-20.0, -20.0, 20.0, 20.0]]


def test_torchvision_rounding_reproduces_torchvisions_anchor_generator():
    from torchvision.models.detection.retinanet import _default_anchorgen

    ours = OctaveAnchorGenerator(strides=STRIDES, aspect_ratios=[[0.5, 1.0, 2.0]], offset=0.0, rounding="torchvision")
    for cells, reference in zip(ours.cell_anchors, _default_anchorgen().cell_anchors):
        # torchvision's cell anchors are ratio-major, detectron2's size-major
        assert torch.equal(cells, reference.view(3, 3, 4).transpose(0, 1).reshape(9, 4))
