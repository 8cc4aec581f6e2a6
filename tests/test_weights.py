"""MODEL.WEIGHTS in every format (detectron2, Detectron, torchvision), made from randomly
initialised reference networks, must reproduce the reference's detections."""
import logging
import os

import numpy as np
import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model

import retinanet_d2
from helpers import CONFIGS, as_detectron2_retinanet, image_with_boxes, tiny_cfg, well_scaled_model
from retinanet_d2.checkpoint import RetinaNetCheckpointer, read_weights
from retinanet_d2.checkpoint.anchor_order import source_anchor_indices
from retinanet_d2.checkpoint.convert import convert_weights_file
from retinanet_d2.checkpoint.detectron_format import DETECTRON_ASPECT_RATIOS
from retinanet_d2.checkpoint.torchvision_format import coco_category_ids
from detections import HEIGHT, TORCHVISION, WIDTH, assert_same_detection_sets, torchvision_detections
from weights_files import detectron_blobs, randomize_norms, torchvision_reference, write_pickle

def config(path, **overrides):
    return retinanet_d2.load_config(
        os.path.join(CONFIGS, path), ["MODEL.DEVICE", "cpu", *[x for kv in overrides.items() for x in kv]]
    )


def detect(model, image):
    model.eval()
    with torch.no_grad():
        return model([{"image": image}])[0]["instances"]


def assert_same_detections(ours, ref):
    """Equal up to float rounding: our frozen BN is folded into the convolutions (1e-3 px)."""
    assert len(ours) == len(ref) > 10
    torch.testing.assert_close(ours.pred_boxes.tensor, ref.pred_boxes.tensor, atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(ours.scores, ref.scores)
    assert torch.equal(ours.pred_classes, ref.pred_classes)


def test_anchor_orders_hand_derived():
    # Detectron: size-major, ratios (1, 2, 0.5): detectron2's (s, 0.5) is Detectron's 3s+2, (s, 1) 3s, (s, 2) 3s+1.
    assert source_anchor_indices(9, DETECTRON_ASPECT_RATIOS, size_major=True) == [2, 0, 1, 5, 3, 4, 8, 6, 7]
    # torchvision: ratio-major, index r*3 + s.
    assert source_anchor_indices(9, (0.5, 1.0, 2.0), size_major=False) == [0, 3, 6, 1, 4, 7, 2, 5, 8]
    with pytest.raises(ValueError, match="aspect ratios"):
        source_anchor_indices(8, (0.5, 1.0, 2.0), size_major=False)


@pytest.fixture(scope="module")
def detectron2_reference():
    """detectron2's own RetinaNet (tiny), random weights and frozen-BN statistics."""
    cfg = tiny_cfg()
    ref = well_scaled_model(as_detectron2_retinanet(cfg))
    randomize_norms(ref, seed=0)
    return cfg, ref


def test_detectron_pickle_reproduces_the_reference(detectron2_reference, tmp_path):
    cfg, ref = detectron2_reference
    path = write_pickle({"blobs": detectron_blobs(ref), "cfg": "..."}, tmp_path / "model_final.pkl")
    state = read_weights(path)["model"]
    ours = build_model(cfg)
    assert set(state) == set(ours.state_dict())  # nothing missing, nothing extra (momenta ignored)
    RetinaNetCheckpointer(ours).load(path)
    # Frozen BN applies exactly the reference's scale and shift ...
    ref_modules = dict(ref.named_modules())
    for name, module in ours.named_modules():
        if isinstance(module, FrozenBatchNorm2d):
            ref_bn = ref_modules[name]
            scale = module.weight * (module.running_var + module.eps).rsqrt()
            ref_scale = ref_bn.weight * (ref_bn.running_var + ref_bn.eps).rsqrt()
            assert torch.equal(scale, ref_scale), name
            assert torch.equal(module.bias - module.running_mean * scale, ref_bn.bias - ref_bn.running_mean * ref_scale)
    # ... so the detections are the reference's up to float rounding.
    image = image_with_boxes(seed=4)["image"]
    assert_same_detections(detect(ours, image), detect(ref, image))


@pytest.mark.parametrize("kind", ["zoo_pickle", "training_checkpoint", "state_dict"])
def test_detectron2_files_reproduce_the_reference(detectron2_reference, tmp_path, kind):
    cfg, ref = detectron2_reference
    if kind == "zoo_pickle":
        arrays = {k: v.numpy() for k, v in ref.state_dict().items()}
        path = write_pickle({"model": arrays, "__author__": "test"}, tmp_path / "model.pkl")
    else:
        path = str(tmp_path / "model.pth")
        state = ref.state_dict()
        torch.save({"model": state, "iteration": 7} if kind == "training_checkpoint" else state, path)
    ours = build_model(cfg)
    RetinaNetCheckpointer(ours).load(path)
    image = image_with_boxes(seed=5)["image"]
    assert_same_detections(detect(ours, image), detect(ref, image))


def torchvision_file(version, tmp_path):
    builder, _ = TORCHVISION[version]
    reference = torchvision_reference(builder, min_size=HEIGHT, max_size=WIDTH)
    path = str(tmp_path / f"torchvision_{version}.pth")
    torch.save(reference.state_dict(), path)
    return reference, path


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_torchvision_state_dict_reproduces_torchvision(version, tmp_path):
    reference, path = torchvision_file(version, tmp_path)
    ours = build_model(config(f"torchvision/{TORCHVISION[version][1]}.yaml"))
    assert set(read_weights(path)["model"]) == set(ours.state_dict())
    RetinaNetCheckpointer(ours).load(path)
    image = (torch.rand(3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(1)) * 255).round()
    detections = detect(ours, image)
    labels = torch.tensor(coco_category_ids())[detections.pred_classes]
    assert_same_detection_sets(
        (detections.pred_boxes.tensor, detections.scores, labels), torchvision_detections(reference, image)
    )


def test_torchvision_reference_script_checkpoints_load_too(tmp_path):
    reference, path = torchvision_file("v1", tmp_path)
    wrapped = str(tmp_path / "checkpoint.pth")
    torch.save({"model": reference.state_dict(), "epoch": 25}, wrapped)  # torchvision's train.py
    direct, from_wrapped = read_weights(path)["model"], read_weights(wrapped)["model"]
    assert set(direct) == set(from_wrapped)
    assert all(torch.equal(direct[k], from_wrapped[k]) for k in direct)


def test_converted_file_loads_in_stock_detectron2(tmp_path):
    reference, path = torchvision_file("v1", tmp_path)
    cfg = config("torchvision/retinanet_resnet50_fpn.yaml")
    direct = build_model(cfg)
    RetinaNetCheckpointer(direct).load(path)
    for target in ("converted.pkl", "converted.pth"):
        convert_weights_file(path, str(tmp_path / target))
        stock = build_model(cfg)
        DetectionCheckpointer(stock).load(str(tmp_path / target))  # detectron2's own checkpointer
        for (name, a), b in zip(direct.state_dict().items(), stock.state_dict().values()):
            assert torch.equal(a, b), name


def test_caffe2_imagenet_backbone_still_matched_by_detectron2_heuristics(tmp_path):
    weight = np.random.RandomState(0).randn(64, 3, 7, 7).astype(np.float32)
    path = write_pickle({"conv1_w": weight, "res_conv1_bn_s": np.full(64, 2.0, np.float32)}, tmp_path / "R-18.pkl")
    model = build_model(tiny_cfg())
    RetinaNetCheckpointer(model).load(path)
    stem = model.backbone.bottom_up.stem.conv1
    assert np.array_equal(stem.weight.detach().numpy(), weight)
    assert torch.equal(stem.norm.weight, torch.full((64,), 2.0))
    with pytest.raises(ValueError, match="nothing to convert"):
        convert_weights_file(path, str(tmp_path / "out.pth"))


def test_unknown_formats_say_what_the_file_holds(tmp_path):
    model = build_model(tiny_cfg())
    lightning = str(tmp_path / "lightning.ckpt")
    torch.save({"state_dict": {"layer.weight": torch.zeros(2)}, "epoch": 3}, lightning)
    with pytest.raises(ValueError, match=r"lightning\.ckpt.*not a weights file of a known format.*'state_dict'"):
        RetinaNetCheckpointer(model).load(lightning)
    text = tmp_path / "notes.pth"
    text.write_text("not weights")
    with pytest.raises(ValueError, match=r"notes\.pth.*neither a torch\.save file nor a pickle.*b'not weights'"):
        RetinaNetCheckpointer(model).load(str(text))
    foreign = str(tmp_path / "resnet.pth")
    torch.save({"layer1.0.conv1.weight": torch.zeros(64, 64, 3, 3)}, foreign)
    with pytest.raises(ValueError, match=r"resnet\.pth: none of its 1 tensors has a name of this model"):
        RetinaNetCheckpointer(model).load(foreign)


def test_shape_mismatches_name_the_layer_and_both_shapes(detectron2_reference, tmp_path, caplog):
    _, ref = detectron2_reference
    path = str(tmp_path / "model.pth")
    torch.save({"model": ref.state_dict()}, path)
    wider = build_model(tiny_cfg(**{"MODEL.FPN.OUT_CHANNELS": 48}))
    with pytest.raises(ValueError, match=r"backbone\.fpn_lateral3\.weight: \(32, 128, 1, 1\) in the checkpoint, \(48, 128, 1, 1\) in the model"):
        RetinaNetCheckpointer(wider).load(path)
    # Another number of classes is fine-tuning: the classifier is skipped with a warning, the rest loads.
    other_classes = build_model(tiny_cfg(**{"MODEL.RETINANET.NUM_CLASSES": 3}))
    with caplog.at_level(logging.WARNING):
        RetinaNetCheckpointer(other_classes).load(path)
    assert "head.cls_score.weight" in caplog.text and "(45, 32, 3, 3)" in caplog.text and "(27, 32, 3, 3)" in caplog.text
    assert torch.equal(other_classes.head.bbox_pred.weight, ref.head.bbox_pred.weight)


def test_pickled_objects_that_are_not_dicts_are_refused(tmp_path):
    path = write_pickle([1, 2, 3], tmp_path / "list.pkl")
    with pytest.raises(ValueError, match=r"list\.pkl.*holds a builtins\.list object"):
        read_weights(path)


def test_a_project_adds_its_own_weights_format(tmp_path, monkeypatch, caplog):
    """WEIGHTS_FORMATS is the registry read_weights tries in order: a format added in front (a Lightning
    checkpoint whose names carry "model.") is detected and converted, and the model loads its tensors."""
    from retinanet_d2.checkpoint import formats

    lightning = formats.WeightsFormat(
        "lightning", lambda obj: isinstance(obj.get("state_dict"), dict),
        lambda obj: {"model": {k.removeprefix("model."): v for k, v in obj["state_dict"].items()}})
    monkeypatch.setattr(formats, "WEIGHTS_FORMATS", [lightning, *formats.WEIGHTS_FORMATS])
    source, target = build_model(tiny_cfg()), build_model(tiny_cfg())
    path = str(tmp_path / "epoch=3.ckpt")
    torch.save({"state_dict": {"model." + k: v for k, v in source.state_dict().items()}, "epoch": 3}, path)
    logger = logging.getLogger(formats.__name__)  # train_net's setup (in other tests) stops propagation
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger=formats.__name__):
            RetinaNetCheckpointer(target).load(path)
    finally:
        logger.removeHandler(caplog.handler)
    assert f"{path}: lightning format" in caplog.text
    for name, tensor in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], tensor), name
