"""Install-time bridges: rewriting the registry's detectron2 v0.6 sources before they are installed.

detectron2 is not on PyPI. The registry's ``pb1-detectron2==0.6`` is detectron2 v0.6's Python
sources without ``detectron2/layers/csrc``, so ``detectron2._C`` never exists, and four gaps stop it on
today's libraries (see ``../shared/DESIGN.md``). ``tools/setup_env.sh`` installs those sources only when
no official detectron2 is present, after ``bridge_sources`` has rewritten the extracted sdist:

* ``_C``: a placeholder module whose ops raise :class:`MissingCompiledOpError` naming the op;
  the stock ``COCOEvaluator``'s fast COCOeval (C++ in ``_C``) becomes faster-coco-eval's C++
  ``COCOeval_faster`` (the same 12 metrics), or pycocotools' official COCOeval where that package is
  missing.
* ``PIL.Image.LINEAR`` (removed in Pillow 10) -> ``Image.BILINEAR`` (the same filter).
* ``np.int`` / ``np.float`` / ``np.bool`` (removed in numpy 1.24) -> ``int`` / ``float`` / ``bool``.
* ``pkg_resources`` (gone from recent setuptools) -> the path of ``detectron2/model_zoo``.
* ``caffe2`` (not in today's torch), imported by v0.6's ``detectron2.export``: its Caffe2 API is
  imported only when caffe2 exists, as in current detectron2, so TracingAdapter works.
* CPU-only distributed training (gloo), which v0.6's ``launch`` refuses: it picks gloo without CUDA.
  (``create_ddp_model``'s device_ids for CPU models is bridged at run time, in compat.py, for every
  detectron2.)

The rewrite touches only the extracted detectron2 sources, so nothing changes for other libraries or
user code, and an official detectron2 (with its compiled ops) is never touched. Each rule must match
in the file it names, so a different sdist fails loudly instead of being half-bridged.

This module imports only the standard library: setup runs it as a script
(``python tools/source_bridges.py DIR``) before detectron2 exists. Run-time differences
between detectron2 versions live in compat.py.
"""
import os
import re
import sys
from dataclasses import dataclass
from typing import List

# What a user who needs a compiled op should do; quoted by every error about missing ops.
FULL_BUILD_HINT = (
    "this detectron2 was installed from the package registry's Python sources, without compiled "
    "ops; install a full build for your torch/CUDA instead, e.g. "
    "`pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'` "
    "(see README, 'Install on your own machine')"
)

# Placeholder written as detectron2/_C.py. Introspection functions answer honestly; every op raises.
PLACEHOLDER_C_SOURCE = '''"""Placeholder for detectron2's compiled ops, written by retinanet_d2's setup.

This detectron2 was installed from the package registry's Python sources, which lack
detectron2/layers/csrc. Every compiled op raises MissingCompiledOpError naming the op.
"""
IS_PLACEHOLDER = True


class MissingCompiledOpError(RuntimeError):
    """Raised when code reaches a compiled detectron2 op that this install lacks."""


def get_compiler_version():
    return "none (installed without compiled ops)"


def get_cuda_version():
    return "none (installed without compiled ops)"


def has_cuda():
    return False


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    raise MissingCompiledOpError(
        f"detectron2 compiled op '{name}' is not available: " + %r
    )
''' % FULL_BUILD_HINT


@dataclass(frozen=True)
class SourceBridge:
    """One rewrite of detectron2 v0.6's sources: ``pattern`` (a regex) -> ``replacement`` in ``path``."""

    path: str  # relative to the sdist root
    pattern: str
    replacement: str
    why: str


_NUMPY_ALIAS = r"\bnp\.(int|float|bool)\b(?![\w.])"

SOURCE_BRIDGES: List[SourceBridge] = [
    SourceBridge(
        "setup.py",
        r"ext_modules=get_extensions\(\),",
        "ext_modules=[],",
        "the sdist has no detectron2/layers/csrc, so the extension cannot be built",
    ),
    SourceBridge(
        "setup.py",
        r'glob\.glob\("configs/\*\*/\*\.yaml", recursive=True\) \+ glob\.glob\(\s*"configs/\*\*/\*\.py", recursive=True\s*\)',
        '["configs/**/*.yaml", "configs/**/*.py"]',
        "the sdist keeps the model-zoo configs in detectron2/model_zoo/configs (package-relative)",
    ),
    SourceBridge(
        "detectron2/data/transforms/transform.py",
        r"interp=Image\.LINEAR",
        "interp=Image.BILINEAR",
        "PIL.Image.LINEAR was removed in Pillow 10; it was an alias of BILINEAR",
    ),
    SourceBridge(
        "detectron2/model_zoo/model_zoo.py",
        r"import pkg_resources\n",
        "",
        "pkg_resources is gone from recent setuptools",
    ),
    SourceBridge(
        "detectron2/model_zoo/model_zoo.py",
        r'pkg_resources\.resource_filename\(\s*"detectron2\.model_zoo", os\.path\.join\("configs", config_path\)\s*\)',
        'os.path.join(os.path.dirname(__file__), "configs", config_path)',
        "pkg_resources is gone from recent setuptools",
    ),
    SourceBridge(
        "detectron2/evaluation/coco_evaluation.py",
        r"from detectron2\.evaluation\.fast_eval_api import COCOeval_opt\n",
        "try:  # no compiled ops: faster-coco-eval's C++ COCOeval (the same metrics)\n"
        "    from faster_coco_eval import COCOeval_faster as COCOeval_opt\n"
        "except ImportError:\n"
        "    COCOeval_opt = COCOeval  # pycocotools' official COCOeval (pure Python)\n",
        "the C++ COCOeval lives in detectron2._C",
    ),
    SourceBridge(
        "detectron2/layers/nms.py",
        r"return torch\.ops\.detectron2\.nms_rotated\(boxes, scores, iou_threshold\)",
        "from detectron2 import _C\n\n    return _C.nms_rotated(boxes, scores, iou_threshold)",
        "the rotated NMS op is registered by detectron2._C",
    ),
    SourceBridge(
        "detectron2/engine/launch.py",
        r'assert torch\.cuda\.is_available\(\), "cuda is not available\. Please check your installation\."',
        "has_gpu = torch.cuda.is_available()",
        "v0.6's launch requires CUDA; without it, use gloo",
    ),
    SourceBridge(
        "detectron2/engine/launch.py",
        r'backend="NCCL",',
        'backend="NCCL" if has_gpu else "GLOO",',
        "v0.6's launch requires CUDA; without it, use gloo",
    ),
    SourceBridge(
        "detectron2/engine/launch.py",
        r"assert num_gpus_per_machine <= torch\.cuda\.device_count\(\)\n    torch\.cuda\.set_device\(local_rank\)",
        "if has_gpu:\n        assert num_gpus_per_machine <= torch.cuda.device_count()\n"
        "        torch.cuda.set_device(local_rank)",
        "v0.6's launch requires CUDA; without it, use gloo",
    ),
    SourceBridge(
        "detectron2/export/__init__.py",
        r"from \.api import \*\n",
        "try:  # the Caffe2 export API needs caffe2, which current torch lacks\n"
        "    from caffe2.proto import caffe2_pb2 as _caffe2_pb2  # noqa: F401\n"
        "except ImportError:\n"
        "    pass\n"
        "else:\n"
        "    from .api import *\n",
        "v0.6 imports caffe2 with detectron2.export; TracingAdapter and TorchScript export need none",
    ),
] + [
    SourceBridge(path, _NUMPY_ALIAS, r"\1", "np.int/np.float/np.bool were removed in numpy 1.24")
    for path in (
        "detectron2/data/build.py",
        "detectron2/evaluation/pascal_voc_evaluation.py",
        "detectron2/evaluation/sem_seg_evaluation.py",
        "detectron2/structures/masks.py",
        "detectron2/utils/visualizer.py",
        "detectron2/utils/video_visualizer.py",
    )
]


class BridgeError(RuntimeError):
    """A source bridge did not match the file it names (an sdist other than pb1-detectron2 0.6)."""


def bridge_source_text(text: str, bridge: SourceBridge) -> str:
    """Apply one bridge to a file's text; raise BridgeError when its pattern is absent."""
    new_text, count = re.subn(bridge.pattern, bridge.replacement, text)
    if count == 0:
        raise BridgeError(
            f"{bridge.path}: pattern {bridge.pattern!r} not found ({bridge.why}); "
            "this is not the pb1-detectron2 0.6 sdist the bridges were written for"
        )
    return new_text


def bridge_sources(root: str) -> None:
    """Rewrite an extracted pb1-detectron2 0.6 sdist at ``root`` in place and add the _C placeholder."""
    if os.path.exists(os.path.join(root, "detectron2", "layers", "csrc")):
        raise BridgeError(f"{root} has compiled-op sources (detectron2/layers/csrc): build it as is")
    for bridge in SOURCE_BRIDGES:
        path = os.path.join(root, bridge.path)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        with open(path, "w", encoding="utf-8") as f:
            f.write(bridge_source_text(text, bridge))
    with open(os.path.join(root, "detectron2", "_C.py"), "w", encoding="utf-8") as f:
        f.write(PLACEHOLDER_C_SOURCE)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tools/source_bridges.py EXTRACTED_SDIST_DIR")
    bridge_sources(sys.argv[1])
