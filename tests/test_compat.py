"""The bridges over detectron2 0.6's gaps (tools/source_bridges.py), tested on the installed
detectron2 and skipped where an official detectron2 with compiled ops is installed (nothing bridged);
the compiled ops this project reaches, tested on an official build and skipped on the registry's.
CI runs the suite on both builds (.ci/run)."""
import inspect
import logging
import os
import re
import subprocess
import sys

import pytest
import torch
from PIL import Image

from helpers import load_tool
from retinanet_d2 import compat

bridges = load_tool("source_bridges")

bridged = pytest.mark.skipif(compat.has_compiled_ops(), reason="official detectron2: not bridged")
official = pytest.mark.skipif(not compat.has_compiled_ops(), reason="registry detectron2: no compiled ops")


def test_bridge_rewrites_and_refuses_an_unknown_source():
    bridge = bridges.SourceBridge("x.py", r"np\.int\b", "int", "why")
    assert bridges.bridge_source_text("a = np.int(3)", bridge) == "a = int(3)"
    with pytest.raises(bridges.BridgeError, match="x.py"):
        bridges.bridge_source_text("a = 3", bridge)


def test_numpy_alias_pattern_leaves_sized_types_alone():
    bridge = next(b for b in bridges.SOURCE_BRIDGES if b.path == "detectron2/data/build.py")
    text = "np.zeros(3, dtype=np.int)\nnp.int64(1)\nx.astype(np.bool)\nnp.float32"
    assert bridges.bridge_source_text(text, bridge) == (
        "np.zeros(3, dtype=int)\nnp.int64(1)\nx.astype(bool)\nnp.float32"
    )


@pytest.mark.e2e
def test_detectron2_imports_on_its_own():
    code = (
        "import sys; import detectron2.modeling, detectron2.engine, detectron2.evaluation, "
        "detectron2.model_zoo; assert 'retinanet_d2' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@bridged
def test_pillow_linear_bridge():
    from detectron2.data.transforms.transform import ExtentTransform

    default = inspect.signature(ExtentTransform.__init__).parameters["interp"].default
    assert default == Image.BILINEAR


@bridged
def test_numpy_alias_bridge_in_the_class_histogram(caplog):
    """detectron2 0.6 builds this table with np.int (AttributeError on numpy >= 1.24 without the bridge)."""
    from detectron2.data.build import print_instances_class_histogram

    dicts = [{"annotations": [{"category_id": 0, "iscrowd": 0}, {"category_id": 1, "iscrowd": 0},
                              {"category_id": 1, "iscrowd": 0}]}]
    with caplog.at_level(logging.INFO):
        print_instances_class_histogram(dicts, ["cat", "dog"])
    table = next(r.getMessage() for r in caplog.records if "Distribution of instances" in r.getMessage())
    assert re.search(r"cat\S*\s*\|\s*1\b", table) and re.search(r"dog\S*\s*\|\s*2\b", table), table


def test_model_zoo_configs_on_todays_setuptools():
    """The registry's sources are bridged; an official build keeps a setuptools with pkg_resources (setup)."""
    from detectron2 import model_zoo

    path = model_zoo.get_config_file("COCO-Detection/retinanet_R_50_FPN_1x.yaml")
    assert os.path.isfile(path)


@bridged
def test_coco_evaluator_uses_a_compiled_cocoeval():
    from faster_coco_eval import COCOeval_faster

    from detectron2.evaluation import coco_evaluation

    assert coco_evaluation.COCOeval_opt is COCOeval_faster


@bridged
def test_missing_compiled_ops_raise_naming_the_op():
    from detectron2 import _C
    from detectron2.layers import ROIAlignRotated, nms_rotated
    from detectron2.layers.rotated_boxes import pairwise_iou_rotated

    with pytest.raises(_C.MissingCompiledOpError, match="'roi_align_rotated_forward'.*full build"):
        ROIAlignRotated((2, 2), 1.0, 0)(torch.zeros(1, 1, 4, 4), torch.tensor([[0.0, 2, 2, 2, 2, 0]]))
    with pytest.raises(_C.MissingCompiledOpError, match="'box_iou_rotated'"):
        pairwise_iou_rotated(torch.zeros(1, 5), torch.zeros(1, 5))
    with pytest.raises(_C.MissingCompiledOpError, match="'nms_rotated'"):
        nms_rotated(torch.zeros(1, 5), torch.zeros(1), 0.5)


@bridged
def test_collect_env_reports_the_missing_compiler():
    from detectron2.utils.collect_env import collect_env_info

    assert "installed without compiled ops" in collect_env_info()


@official
def test_coco_evaluator_fast_path_is_detectron2s_compiled_cocoeval():
    """COCOEvaluator's fast path on an official build is detectron2's C++ COCOeval (test_evaluation
    checks its 12 metrics against pycocotools' on both builds)."""
    from detectron2 import _C
    from detectron2.evaluation import coco_evaluation, fast_eval_api

    assert coco_evaluation.COCOeval_opt is fast_eval_api.COCOeval_opt
    assert callable(_C.COCOevalEvaluateImages) and callable(_C.COCOevalAccumulate)


def test_ddp_of_a_cpu_model_takes_no_device_ids(monkeypatch):
    """compat.create_ddp_model passes device_ids=None for a CPU model, whatever detectron2 defaults to."""
    from detectron2.engine import defaults

    seen = {}
    monkeypatch.setattr(defaults.comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(defaults, "DistributedDataParallel", lambda model, **kwargs: seen.update(kwargs) or model)
    model = torch.nn.Linear(2, 2)
    assert compat.create_ddp_model(model, broadcast_buffers=False) is model
    assert seen == {"device_ids": None, "broadcast_buffers": False}
