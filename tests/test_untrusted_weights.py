"""Weights files are downloads: a file that carries code is refused before any of it runs, on every
outer format, while every real format still loads."""
import os
import pickle

import numpy as np
import pytest
import torch

from detectron2.modeling import build_model
from detectron2.solver import build_lr_scheduler, build_optimizer

from helpers import image_with_boxes, tiny_cfg
from retinanet_d2.checkpoint import RetinaNetCheckpointer, read_weights
from weights_files import detectron_blobs, write_pickle


class Payload:
    """Unpickling this runs ``touch <marker>`` through os.system (pickled as posix.system)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def model():
    return build_model(tiny_cfg())


def _hostile_files(model, tmp_path):
    """(name, path) of code-carrying files in each outer format a weights file comes in."""
    marker = tmp_path / "code_ran"
    arrays = {k: v.numpy() for k, v in model.state_dict().items()}
    payload = Payload(marker)
    files = {
        "bare_pickle": payload,
        "zoo_pickle": {"model": arrays, "__author__": payload},
        "detectron_pickle": {"blobs": {**detectron_blobs(model), "retnet_cls_pred_fpn3_b": payload}},
        "caffe2_pickle": {"conv1_w": payload},
    }
    paths = {name: write_pickle(obj, tmp_path / f"{name}.pkl") for name, obj in files.items()}
    for name, legacy in (("torch_zip", False), ("torch_legacy", True)):
        paths[name] = str(tmp_path / f"{name}.pth")
        torch.save({"model": model.state_dict(), "x": payload}, paths[name], _use_new_zipfile_serialization=not legacy)
    return marker, paths


@pytest.mark.parametrize(
    "name", ["bare_pickle", "zoo_pickle", "detectron_pickle", "caffe2_pickle", "torch_zip", "torch_legacy"]
)
def test_code_carrying_files_are_refused_without_running_it(model, tmp_path, name):
    marker, paths = _hostile_files(model, tmp_path)
    with pytest.raises(ValueError, match=rf"{name}\.p.*refused.*posix.*system") as error:
        RetinaNetCheckpointer(model).load(paths[name])
    assert not marker.exists(), f"loading {name} ran the pickle's code"
    assert paths[name] in str(error.value)
    # The pickle really does run code when loaded the ordinary way (so the test can fail).
    if name.endswith("pickle"):
        with open(paths[name], "rb") as f:
            pickle.load(f)
        assert marker.exists()


def test_python2_era_pickles_still_load(tmp_path):
    """Detectron's pickles were written by Python 2 with NumPy 1 (numpy.core.multiarray, byte
    strings through _codecs.encode under protocol 2)."""
    cfg = tiny_cfg()
    ref = build_model(cfg)
    data = pickle.dumps({"blobs": detectron_blobs(ref)}, protocol=2)
    assert b"numpy._core.multiarray" in data and b"_codecs" in data
    path = tmp_path / "py2.pkl"
    path.write_bytes(data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    state = read_weights(str(path))["model"]
    assert set(state) == set(ref.state_dict())
    torch.testing.assert_close(torch.as_tensor(state["head.bbox_pred.bias"]).sum(), ref.head.bbox_pred.bias.sum())


def test_training_checkpoint_with_optimizer_and_scheduler_state_loads(tmp_path):
    cfg = tiny_cfg()
    model = build_model(cfg)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer)
    model.train()
    losses = model([image_with_boxes()])
    sum(losses.values()).backward()
    optimizer.step()
    scheduler.step()
    path = str(tmp_path / "model_0000001.pth")
    torch.save(
        {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
         "iteration": 1, "_trainer": {"optimizer": optimizer.state_dict()}},
        path,
    )
    checkpoint = read_weights(path)
    assert checkpoint["iteration"] == 1
    momentum = next(iter(checkpoint["optimizer"]["state"].values()))["momentum_buffer"]
    assert momentum.abs().sum() > 0
    restored = build_model(cfg)
    RetinaNetCheckpointer(restored).load(path)
    for (name, a), b in zip(model.state_dict().items(), restored.state_dict().values()):
        assert torch.equal(a, b), name


def test_numpy_scalars_and_ordered_dicts_load(tmp_path):
    from collections import OrderedDict

    obj = {"model": OrderedDict(w=np.ones((2, 2), np.float32)), "__author__": "x", "step": np.int64(3)}
    loaded = read_weights(write_pickle(obj, tmp_path / "m.pkl"))
    assert loaded["step"] == 3 and np.array_equal(loaded["model"]["w"], np.ones((2, 2), np.float32))
