"""MODEL.FOCAL_RETINANET.CHANNELS_LAST: the model in the channels_last memory layout computes what the
default layout computes (losses, gradients, detections), in float32 and under bfloat16 autocast, with
GroupNorm and frozen-BN backbones; and the layout does reach the convolutions."""
import pytest
import torch
from detectron2.structures import pairwise_iou
from detectron2.utils.events import EventStorage

from helpers import image_with_boxes, tiny_cfg, well_scaled_model
from retinanet_d2.amp import autocast_if


def _pair(norm: str):
    """(default layout, channels_last) models with the same weights."""
    overrides = {"MODEL.RESNETS.NORM": norm, "MODEL.RETINANET.NORM": "GN" if norm == "GN" else ""}
    default = well_scaled_model(tiny_cfg(**overrides))
    channels_last = well_scaled_model(tiny_cfg(**overrides, **{"MODEL.FOCAL_RETINANET.CHANNELS_LAST": True}))
    channels_last.load_state_dict(default.state_dict())
    return default, channels_last


def _losses_and_gradients(model, batch, dtype):
    model.train()
    model.zero_grad(set_to_none=True)
    with EventStorage(), autocast_if(dtype is not None, "cpu", dtype):
        losses = model(batch)
    sum(losses.values()).backward()
    return losses, {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


def _relative_error(gradients, exact):
    """||gradients - exact|| / ||exact|| over all parameters."""
    error = sum(float((gradients[n] - g).norm()) ** 2 for n, g in exact.items()) ** 0.5
    return error / sum(float(g.norm()) ** 2 for g in exact.values()) ** 0.5


@pytest.mark.parametrize("norm", ["GN", "FrozenBN"])
@pytest.mark.parametrize("dtype", [None, torch.bfloat16], ids=["float32", "bfloat16"])
def test_channels_last_computes_what_the_default_layout_computes(norm, dtype):
    default, channels_last = _pair(norm)
    assert channels_last.head.cls_score.weight.is_contiguous(memory_format=torch.channels_last)
    batch = [image_with_boxes(seed=0), image_with_boxes(seed=1)]
    features = channels_last.backbone(channels_last.preprocess_image(batch).tensor)  # an NCHW batch
    assert all(f.is_contiguous(memory_format=torch.channels_last) for f in features.values())

    losses, gradients = _losses_and_gradients(default, batch, dtype)
    cl_losses, cl_gradients = _losses_and_gradients(channels_last, batch, dtype)
    assert set(gradients) == set(cl_gradients)
    if dtype is None:  # float32: the same numbers up to summation order
        for name in losses:
            torch.testing.assert_close(cl_losses[name], losses[name], rtol=1e-4, atol=1e-5)
        scale = max(gradient.abs().max() for gradient in gradients.values())  # GN's conv biases get ~0
        for name, gradient in gradients.items():
            torch.testing.assert_close(cl_gradients[name] / scale, gradient / scale, rtol=0, atol=1e-4, msg=name)
    else:  # bfloat16 rounds differently per layout: channels_last is as close to float32 as the default,
        # up to one bfloat16 rounding of the loss (unit roundoff 2^-8; on an AVX2 CPU, where bfloat16 is
        # emulated, the default's loss_cls was 0.0085 off and channels_last's 0.0288 of 10.7: 2.7e-3)
        exact, exact_gradients = _losses_and_gradients(default, batch, None)
        for name in losses:
            error, cl_error = abs(float(losses[name] - exact[name])), abs(float(cl_losses[name] - exact[name]))
            assert cl_error <= 2 * error + 2 ** -8 * abs(float(exact[name])), name
        error, cl_error = (_relative_error(g, exact_gradients) for g in (gradients, cl_gradients))
        assert cl_error <= 1.5 * error + 1e-3, (cl_error, error)

    default.eval(), channels_last.eval()
    images = [{"image": batch[0]["image"]}]
    with torch.no_grad(), autocast_if(dtype is not None, "cpu", dtype):
        expected = default(images)[0]["instances"]
        got = channels_last(images)[0]["instances"]
    assert len(expected) > 0
    if dtype is None:  # the same detections
        assert torch.equal(got.pred_classes, expected.pred_classes)
        torch.testing.assert_close(got.scores, expected.scores, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(got.pred_boxes.tensor, expected.pred_boxes.tensor, rtol=0, atol=1e-2)
    else:  # bfloat16 may reorder near-equal scores: the top detection is among the default's top 3
        torch.testing.assert_close(got.scores[0], expected.scores[0], rtol=2e-2, atol=0)
        overlaps = pairwise_iou(got.pred_boxes[:1], expected.pred_boxes[:3])[0]
        same_class = expected.pred_classes[:3] == got.pred_classes[0]
        assert bool(((overlaps > 0.9) & same_class).any()), (overlaps, same_class)
