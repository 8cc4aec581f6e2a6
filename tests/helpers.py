"""Tiny models for CPU tests: R18 + FPN 32 channels + 1-conv heads, with weights scaled so that
activations stay O(1) and scores are spread (no ties from saturated sigmoids)."""
import importlib.util
import logging
import os
import subprocess
import sys

import torch
from torch import nn

from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

import retinanet_d2
from lab.reference import detectron2_retinanet_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")
INSTANT = os.path.join(CONFIGS, "shapes_instant_test.yaml")
LAZY_DEMO = os.path.join(CONFIGS, "lazy", "shapes_demo.py")
# The LazyConfig demo shrunk to the tiny splits and 128-px images, as INSTANT is for yacs.
LAZY_TINY = [
    "dataloader.train.dataset.names=shapes_tiny_train", "dataloader.test.dataset.names=shapes_tiny_val",
    "dataloader.train.total_batch_size=2", "dataloader.train.num_workers=0", "dataloader.test.num_workers=0",
    "dataloader.train.mapper.augmentations.0.short_edge_length=[128]", "dataloader.train.mapper.augmentations.0.max_size=128",
    "dataloader.test.mapper.augmentations.0.short_edge_length=128", "dataloader.test.mapper.augmentations.0.max_size=128",
    "train.checkpointer.period=2", "train.log_period=1",
]


def load_tool(name):
    """tools/<name>.py as a module."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train_net_process(*args, **kwargs):
    """train_net.py run with ``args`` in a new process (the repository as working folder)."""
    return subprocess.run([sys.executable, os.path.join(REPO, "train_net.py"), *args],
                          capture_output=True, text=True, cwd=REPO, **kwargs)


def reset_logging():
    """detectron2's loggers as a fresh process has them. train_net.main sets them up (handlers to the
    console and the run's log.txt, propagation off) and caches that by output folder, and the open
    log.txt streams by path: a second run in this process into a folder whose log.txt was moved
    (--start-over) or removed would write into the old file, and caplog would see no record."""
    from detectron2.utils import logger as detectron2_logger

    for name in ("detectron2", "fvcore", "retinanet_d2"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
    detectron2_logger.setup_logger.cache_clear()
    detectron2_logger._cached_log_stream.cache_clear()


def train_net_main(*args):
    """train_net.main with the command line ``args``, in this process as in a new one (logging set up
    afresh); what it returns, what it raises."""
    import train_net

    reset_logging()
    return train_net.main(train_net.argument_parser().parse_args(list(args)))


def _output_dir(args) -> str:
    """The output folder a train_net.py command line names (OUTPUT_DIR X or train.output_dir=X)."""
    for i, arg in enumerate(args):
        if arg == "OUTPUT_DIR":
            return args[i + 1]
        if arg.startswith("train.output_dir="):
            return arg.split("=", 1)[1]
    raise ValueError(f"no OUTPUT_DIR / train.output_dir in {args}")


def run_train_net(*args):
    """train_net.py's main with ``args`` in this process, which must succeed; what the run logged
    (its part of OUTPUT_DIR/log.txt: detectron2's and this project's log lines)."""
    log = os.path.join(_output_dir(args), "log.txt")
    start = os.path.getsize(log) if os.path.isfile(log) else 0
    train_net_main(*args)
    with open(log, encoding="utf-8") as f:
        f.seek(start)
        return f.read()


def run_train_net_process(*args):
    """train_net.py with ``args`` as a command (a new process), which must succeed; its output."""
    result = train_net_process(*args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def tiny_cfg(**overrides):
    """Base-RetinaNet.yaml with R18, FPN 32, 1 conv per tower, 5 classes, on CPU."""
    cfg = retinanet_d2.load_config(os.path.join(CONFIGS, "Base-RetinaNet.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.PIXEL_STD = [57.375, 57.120, 58.395]
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.RETINANET.NUM_CONVS = 1
    cfg.MODEL.RETINANET.NUM_CLASSES = 5
    for key, value in overrides.items():
        node = cfg
        *path, last = key.split(".")
        for part in path:
            node = node[part]
        node[last] = value
    return cfg


def as_detectron2_retinanet(cfg):
    """The same config for detectron2's built-in RetinaNet."""
    return detectron2_retinanet_cfg(cfg)


def well_scaled_model(cfg, seed=0):
    """Build the model and re-initialise every conv with fan-in scaled weights."""
    torch.manual_seed(seed)
    model = build_model(cfg)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) / fan_in**0.5)
    return model


def image_with_boxes(height=160, width=224, seed=0):
    """A random image (3, H, W) in [0, 255] with three boxes of classes 0, 2, 4."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(3, height, width, generator=generator) * 255
    instances = Instances((height, width))
    instances.gt_boxes = Boxes(torch.tensor([[10.0, 20, 80, 100], [100, 30, 210, 150], [40, 60, 72, 90]]))
    instances.gt_boxes.clip((height, width))
    instances.gt_classes = torch.tensor([0, 2, 4])
    return {"image": image, "instances": instances, "height": height, "width": width}


def own_coco_files():
    """[(json, image folder)] of the tiny train and val splits, as a user's own COCO-format dataset."""
    from retinanet_d2.data.shapes import SPLITS, default_root, generate_split, split_paths

    files = []
    for name in ("shapes_tiny_train", "shapes_tiny_val"):
        generate_split(default_root(), SPLITS[name])
        files.append(split_paths(default_root(), SPLITS[name]))
    return files


def cpuinfo_files(folder):
    """Paths of two /proc/cpuinfo stand-ins in ``folder``: (a CPU with bfloat16 units, one with AVX2 only)."""
    with_units, without = folder / "with_units", folder / "avx2_only"
    with_units.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 amx_tile\n")
    without.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2\n")
    return str(with_units), str(without)
