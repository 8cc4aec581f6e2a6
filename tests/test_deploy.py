"""Using a model: tools/predict.py on a folder (torchvision weights, compared with torchvision's own
detections) and export by tracing (TorchScript, ONNX) compared with the eager model."""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from torchvision.models.detection import retinanet_resnet50_fpn

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances

import retinanet_d2
from helpers import REPO, image_with_boxes, load_tool, tiny_cfg, well_scaled_model
from retinanet_d2.checkpoint import RetinaNetCheckpointer
from retinanet_d2.export import TRACED_OUTPUTS, export_onnx, script, trace
from retinanet_d2.predict import IMAGE_IDS_FILE, RESULTS_FILE, image_ids
from detections import HEIGHT, WIDTH, assert_same_detection_sets, torchvision_detections
from weights_files import detectron_blobs, randomize_norms, torchvision_reference, write_pickle


def test_image_ids_are_cocos_for_numbered_files():
    assert image_ids(["a/000000000139.jpg", "b/785.png"]) == [139, 785]
    assert image_ids(["a/139.jpg", "b/cat.png"]) == [1, 2]


def test_predict_folder_reproduces_torchvision_and_skips_unreadable_files(tmp_path, capsys):
    reference = torchvision_reference(retinanet_resnet50_fpn, min_size=HEIGHT, max_size=WIDTH)
    weights = str(tmp_path / "torchvision_v1.pth")
    torch.save(reference.state_dict(), weights)
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.RandomState(0)
    images = {}
    for image_id in (7, 42):
        rgb = rng.randint(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        cv2.imwrite(str(folder / f"{image_id:012d}.png"), rgb[:, :, ::-1])
        images[image_id] = rgb
    (folder / "000000000099.jpg").write_bytes(b"not an image")
    output = tmp_path / "out"

    status = load_tool("predict").main([
        "--config-file", os.path.join(REPO, "configs", "torchvision", "retinanet_resnet50_fpn.yaml"),
        "--input", str(folder), "--output", str(output),
        "MODEL.WEIGHTS", weights, "MODEL.DEVICE", "cpu",
        "INPUT.MIN_SIZE_TEST", str(HEIGHT), "INPUT.MAX_SIZE_TEST", str(WIDTH),
    ])

    assert status == 1
    assert "skipped " + str(folder / "000000000099.jpg") in capsys.readouterr().err
    assert sorted(os.listdir(output)) == sorted(["000000000007.png", "000000000042.png", IMAGE_IDS_FILE, RESULTS_FILE])
    drawn = cv2.imread(str(output / "000000000007.png"))
    assert drawn.shape == (HEIGHT, WIDTH, 3)
    results = json.loads((output / RESULTS_FILE).read_text())
    assert json.loads((output / IMAGE_IDS_FILE).read_text()) == {
        "7": str(folder / "000000000007.png"), "42": str(folder / "000000000042.png")
    }
    for image_id, rgb in images.items():
        mine = [r for r in results if r["image_id"] == image_id]
        xywh = torch.tensor([r["bbox"] for r in mine])
        xyxy = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
        assert_same_detection_sets(
            (xyxy, torch.tensor([r["score"] for r in mine]), torch.tensor([r["category_id"] for r in mine])),
            torchvision_detections(reference, torch.from_numpy(rgb).permute(2, 0, 1).float()),
        )


@pytest.fixture(scope="module")
def traced_tiny_model():
    model = well_scaled_model(tiny_cfg()).eval()
    traced, adapter = trace(model, image_with_boxes(seed=0)["image"])
    return model, traced, adapter


def eager_and_exported(model, adapter, outputs, image):
    with torch.no_grad():
        eager = model([{"image": image}])[0]["instances"]
    return eager, adapter.outputs_schema(outputs)[0]["instances"]


def assert_same(eager, exported, atol):
    assert len(eager) == len(exported) > 10
    torch.testing.assert_close(exported.pred_boxes.tensor, eager.pred_boxes.tensor, atol=atol, rtol=0)
    torch.testing.assert_close(exported.scores, eager.scores, atol=1e-5, rtol=0)
    assert torch.equal(exported.pred_classes, eager.pred_classes)


# The traced image (160x224, padded to 256x256), another image of that size with another number of
# candidates, and another size with another padded size (96x300, padded to 128x384).
IMAGES = [dict(seed=0), dict(seed=1), dict(seed=2, height=96, width=300)]


@pytest.mark.parametrize("image", IMAGES)
def test_torchscript_matches_the_eager_model(traced_tiny_model, image, tmp_path):
    model, traced, adapter = traced_tiny_model
    path = str(tmp_path / "model.ts")
    traced.save(path)
    x = image_with_boxes(**image)["image"]
    with torch.no_grad():
        outputs = torch.jit.load(path)(x)
    assert_same(*eager_and_exported(model, adapter, outputs, x), atol=1e-4)


@pytest.mark.parametrize("image", IMAGES)
def test_onnx_matches_the_eager_model(traced_tiny_model, image, tmp_path):
    import onnxruntime  # in requirements.txt

    model, _, adapter = traced_tiny_model
    path = str(tmp_path / "model.onnx")
    export_onnx(adapter, image_with_boxes(**IMAGES[0])["image"], path)
    session = onnxruntime.InferenceSession(path)
    assert [o.name for o in session.get_inputs()] == ["image"]
    assert [o.name for o in session.get_outputs()] == list(TRACED_OUTPUTS)  # documented names, in order
    x = image_with_boxes(**image)["image"]
    outputs = [torch.from_numpy(o) for o in session.run(None, {"image": x.numpy()})]
    assert_same(*eager_and_exported(model, adapter, outputs, x), atol=1e-2)


# A fresh process that imports only torch and torchvision (for its nms op), as a deployment would.
FRESH_PROCESS = """
import sys, torch, torchvision
model, x = torch.jit.load(sys.argv[1]), torch.load(sys.argv[2])
with torch.no_grad():
    out = model([{"image": x}])[0] if sys.argv[4] == "scripting" else list(model(x))
torch.save(out, sys.argv[3])
print(sorted(name for name in sys.modules if name.split(".")[0] in ("detectron2", "retinanet_d2")))
"""


@pytest.mark.e2e
@pytest.mark.parametrize("method", ["scripting", "tracing"])
def test_an_export_runs_in_a_fresh_process_with_torch_and_torchvision_only(tmp_path, method):
    """The saved module loads and runs where neither detectron2 nor this package is imported (a
    scripted model used to fail there: its output was a class only the exporting process knew)."""
    model = well_scaled_model(tiny_cfg()).eval()
    x = image_with_boxes(seed=3)["image"]
    if method == "scripting":
        script(model).save(str(tmp_path / "model.ts"))
    else:
        traced, adapter = trace(model, image_with_boxes(seed=0)["image"])
        traced.save(str(tmp_path / "model.ts"))
    torch.save(x, tmp_path / "x.pt")
    result = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(tmp_path / "model.ts"), str(tmp_path / "x.pt"),
                             str(tmp_path / "out.pt"), method], capture_output=True, text=True, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    if method == "tracing":
        assert_same(*eager_and_exported(model, adapter, out, x), atol=1e-4)
        return
    assert sorted(out) == ["pred_boxes", "pred_classes", "scores"]
    exported = detector_postprocess(Instances(x.shape[1:], pred_boxes=Boxes(out["pred_boxes"]), scores=out["scores"],
                                              pred_classes=out["pred_classes"]), *x.shape[1:])
    with torch.no_grad():
        assert_same(model([{"image": x}])[0]["instances"], exported, atol=1e-4)


def test_export_tool_writes_a_torchscript_that_matches_the_model(tmp_path):
    config = os.path.join(REPO, "configs", "shapes_instant_test.yaml")
    cfg = retinanet_d2.load_config(config, ["MODEL.DEVICE", "cpu"])
    torch.save({"model": well_scaled_model(cfg).state_dict()}, tmp_path / "model.pth")
    rgb = np.random.RandomState(0).randint(0, 256, (128, 160, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "sample.png"), rgb[:, :, ::-1])
    status = load_tool("export_model").main([
        "--config-file", config, "--sample-image", str(tmp_path / "sample.png"), "--output", str(tmp_path / "out"),
        "--onnx", "MODEL.WEIGHTS", str(tmp_path / "model.pth"), "MODEL.DEVICE", "cpu",
    ])
    assert status == 0
    assert sorted(os.listdir(tmp_path / "out")) == ["model.onnx", "model.ts"]
    model = build_model(cfg).eval()
    RetinaNetCheckpointer(model).load(str(tmp_path / "model.pth"))
    image = image_with_boxes(height=128, width=160, seed=3)["image"][[2, 1, 0]]  # any (3, H, W) input
    _, adapter = trace(model, image)
    with torch.no_grad():
        outputs = torch.jit.load(str(tmp_path / "out" / "model.ts"))(image)
    assert_same(*eager_and_exported(model, adapter, outputs, image), atol=1e-4)


def test_predict_with_a_detectron_pickle_gives_the_reference_detections(tmp_path):
    overrides = ["MODEL.RESNETS.NORM", "FrozenBN", "MODEL.RETINANET.NORM", "", "MODEL.DEVICE", "cpu"]
    config = os.path.join(REPO, "configs", "shapes_instant_test.yaml")
    reference = well_scaled_model(retinanet_d2.load_config(config, overrides)).eval()
    randomize_norms(reference, seed=0)
    weights = write_pickle({"blobs": detectron_blobs(reference)}, tmp_path / "detectron.pkl")
    DatasetCatalog.get("shapes_tiny_val")  # loads its JSON (and the category-id mapping)
    bgr = np.random.RandomState(1).randint(0, 256, (128, 128, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "5.png"), bgr)

    status = load_tool("predict").main([
        "--config-file", config, "--input", str(tmp_path / "5.png"), "--output", str(tmp_path / "out"),
        "MODEL.WEIGHTS", weights, *overrides,
    ])

    assert status == 0
    results = json.loads((tmp_path / "out" / RESULTS_FILE).read_text())
    with torch.no_grad():  # the config's input format is BGR, 128 px: no resizing
        expected = reference([{"image": torch.from_numpy(bgr).permute(2, 0, 1).float()}])[0]["instances"]
    xywh = torch.tensor([r["bbox"] for r in results])
    boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
    assert [r["image_id"] for r in results] == [5] * len(expected) and len(expected) > 10
    torch.testing.assert_close(boxes, expected.pred_boxes.tensor, atol=1e-3, rtol=0)
    torch.testing.assert_close(torch.tensor([r["score"] for r in results]), expected.scores, atol=1e-5, rtol=0)
    # loaded, the test split's metadata maps classes to its JSON's category ids (sorted, as detectron2 does)
    with open(MetadataCatalog.get("shapes_tiny_val").json_file) as f:
        category_ids = sorted(c["id"] for c in json.load(f)["categories"])
    assert [r["category_id"] for r in results] == [category_ids[c] for c in expected.pred_classes.tolist()]


def scripted_detections(scripted, images):
    """The scripted model's detections of (3, H, W) images, postprocessed as the eager model does
    (detector_postprocess to the input size: clipped, empty boxes dropped), as tensors per image."""
    with torch.no_grad():
        results = scripted([{"image": x} for x in images])
    processed = [detector_postprocess(Instances(x.shape[1:], pred_boxes=Boxes(r["pred_boxes"]), scores=r["scores"],
                                                pred_classes=r["pred_classes"]), *x.shape[1:])
                 for r, x in zip(results, images)]
    return [(r.pred_boxes.tensor, r.scores, r.pred_classes) for r in processed]


def test_scripted_model_matches_the_eager_model(tmp_path):
    """In the style of detectron2's own scripting test: scripted (saved and reloaded) and eager
    outputs agree on images of two sizes, also with clipping before NMS and per-level thresholds."""
    for overrides in ({}, {"MODEL.FOCAL_RETINANET.CLIP_BOXES_BEFORE_NMS": True,
                           "MODEL.FOCAL_RETINANET.LEVEL_SCORE_THRESH_TEST": [0.05, 0.05, 0.05, 0.05, 0.0]}):
        model = well_scaled_model(tiny_cfg(**overrides)).eval()
        path = str(tmp_path / "scripted.ts")
        script(model).save(path)
        scripted = torch.jit.load(path)
        images = [image_with_boxes(seed=0)["image"], image_with_boxes(seed=2, height=96, width=300)["image"]]
        with torch.no_grad():  # one batch (padded together) for both
            eager_outputs = model([{"image": x} for x in images])
        for output, (boxes, scores, classes) in zip(eager_outputs, scripted_detections(scripted, images)):
            eager = output["instances"]
            assert len(eager) == len(scores) > 10
            torch.testing.assert_close(boxes, eager.pred_boxes.tensor, atol=1e-4, rtol=0)
            torch.testing.assert_close(scores, eager.scores, atol=1e-6, rtol=0)
            assert torch.equal(classes, eager.pred_classes)


def test_exports_of_a_model_trained_under_amp_match_it(tmp_path):
    """A model trained with bfloat16 autocast keeps float32 weights: tracing and scripting work."""
    from detectron2.utils.events import EventStorage

    from retinanet_d2.engine.step import AutocastTrainer

    model = well_scaled_model(tiny_cfg()).train()
    batch = [image_with_boxes(seed=0), image_with_boxes(seed=1)]
    trainer = AutocastTrainer(model, [batch] * 2, torch.optim.SGD(model.parameters(), lr=1e-3), device_type="cpu")
    with EventStorage() as storage:
        trainer.storage = storage
        for _ in range(2):
            trainer.run_step()
            storage.step()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    model.eval()
    x = image_with_boxes(seed=3)["image"]
    traced, adapter = trace(model, x)
    with torch.no_grad():
        assert_same(*eager_and_exported(model, adapter, traced(x), x), atol=1e-4)
    (boxes, scores, classes), = scripted_detections(script(model), [x])
    with torch.no_grad():
        eager = model([{"image": x}])[0]["instances"]
    torch.testing.assert_close(boxes, eager.pred_boxes.tensor, atol=1e-4, rtol=0)
    assert torch.equal(classes, eager.pred_classes)


def test_export_tool_scripts(tmp_path):
    config = os.path.join(REPO, "configs", "shapes_instant_test.yaml")
    cfg = retinanet_d2.load_config(config, ["MODEL.DEVICE", "cpu"])
    model = well_scaled_model(cfg).eval()
    torch.save({"model": model.state_dict()}, tmp_path / "model.pth")
    status = load_tool("export_model").main([
        "--export-method", "scripting", "--config-file", config, "--output", str(tmp_path / "out"),
        "MODEL.WEIGHTS", str(tmp_path / "model.pth"), "MODEL.DEVICE", "cpu",
    ])
    assert status == 0 and os.listdir(tmp_path / "out") == ["model.ts"]
    x = image_with_boxes(height=128, width=160, seed=3)["image"]
    (boxes, scores, _), = scripted_detections(torch.jit.load(str(tmp_path / "out" / "model.ts")), [x])
    with torch.no_grad():
        eager = model([{"image": x}])[0]["instances"]
    torch.testing.assert_close(scores, eager.scores, atol=1e-6, rtol=0)


def test_detections_are_drawn_in_one_colour_per_class():
    """Box edges on a black image: detectron2's Visualizer blends each class's colormap colour at half
    opacity; the two class-0 boxes share it, the class-1 box has its own."""
    from detectron2.structures import Boxes, Instances

    from retinanet_d2.visualize import class_colors, draw_detections

    instances = Instances((200, 200))
    instances.pred_boxes = Boxes(torch.tensor([[10.0, 10, 60, 60], [110, 10, 160, 60], [10, 110, 60, 160]]))
    instances.scores = torch.tensor([0.9, 0.8, 0.7])
    instances.pred_classes = torch.tensor([0, 0, 1])
    drawn = draw_detections(np.zeros((200, 200, 3), np.uint8), instances, ["a", "b"])
    edges = [drawn[60, 35], drawn[60, 135], drawn[160, 35]]  # the middle of each box's bottom edge
    expected = [255 * 0.5 * np.asarray(c) for c in class_colors([0, 0, 1])]
    for edge, colour in zip(edges, expected):
        assert np.abs(edge - colour).max() <= 1, (edge, colour)
    assert np.abs(expected[0] - expected[2]).max() > 20


@pytest.mark.parametrize("input_format", ["BGR", "RGB"])
def test_predictor_is_a_default_predictor_with_the_same_call(tmp_path, input_format):
    """The same weights (a detectron2 checkpoint) give the same detections through detectron2's own
    DefaultPredictor and ours; ours is one (isinstance) and keeps its attributes."""
    from detectron2.engine import DefaultPredictor

    from retinanet_d2.predict import Predictor

    cfg = tiny_cfg(**{"INPUT.FORMAT": input_format, "INPUT.MIN_SIZE_TEST": 96, "INPUT.MAX_SIZE_TEST": 160,
                      "MODEL.RETINANET.SCORE_THRESH_TEST": 0.0})
    model = well_scaled_model(cfg)
    randomize_norms(model, seed=0)
    torch.save({"model": model.state_dict()}, tmp_path / "model.pth")
    cfg.MODEL.WEIGHTS = str(tmp_path / "model.pth")
    image = (np.random.default_rng(0).random((120, 200, 3)) * 255).astype(np.uint8)  # BGR, as cv2 reads it
    ours, reference = Predictor(cfg), DefaultPredictor(cfg)
    assert isinstance(ours, DefaultPredictor) and ours.input_format == input_format and ours.aug.short_edge_length == [96, 96]
    a, b = ours(image)["instances"], reference(image)["instances"]
    assert len(a) > 0 and a.image_size == (120, 200)
    assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor) and torch.equal(a.scores, b.scores)
    assert torch.equal(ours.preprocess(image), torch.as_tensor(
        ours.aug.get_transform(image).apply_image(image[:, :, ::-1] if input_format == "RGB" else image)
        .astype("float32").transpose(2, 0, 1)))
