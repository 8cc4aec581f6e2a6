"""Side-by-side benchmark of FocalRetinaNet and detectron2's built-in RetinaNet.

Both models are built from the same config with the same weights and run on the same inputs,
interleaved, ``repeats`` times; the table reports medians and the ratio ours / detectron2. On CUDA the
timings are synchronised. Peak training memory is measured in a fresh subprocess per model (CPU: peak
RSS growth over the step; CUDA: ``max_memory_allocated``).
"""
import contextlib
import copy
import io
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, Iterator, List

import numpy as np
import torch

from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from retinanet_d2.amp import autocast_if, cpu_has_units_for, resolve_amp_dtype
from retinanet_d2.config import load_config
from lab.reference import detectron2_retinanet_cfg
from retinanet_d2.modeling.losses import focal_loss_from_labels, sigmoid_focal_loss

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "retinanet_R50_FPN_1x.yaml")


def benchmark_configs(device: str, num_classes: int = 80):
    """(ours, detectron2's) configs: R50-FPN RetinaNet, the paper's anchors, no weights file."""
    cfg = load_config(
        CONFIG, ["MODEL.WEIGHTS", "", "MODEL.DEVICE", device, "MODEL.RETINANET.NUM_CLASSES", num_classes]
    )
    return cfg, detectron2_retinanet_cfg(cfg)


def build_pair(device: str):
    """(ours, detectron2's) R50-FPN RetinaNet with identical weights."""
    cfg, ref_cfg = benchmark_configs(device)
    torch.manual_seed(0)
    ours = build_model(cfg)
    ref = build_model(ref_cfg)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def channels_last_copy(model):
    """A copy of FocalRetinaNet ``model`` as MODEL.FOCAL_RETINANET.CHANNELS_LAST builds it (NHWC weights)."""
    copied = copy.deepcopy(model)
    copied.channels_last = True
    return copied.to(memory_format=torch.channels_last)


def training_batch(device: str, num_images=2, height=512, width=640, boxes_per_image=10, num_classes=80):
    """Random images (3, H, W) with ``boxes_per_image`` random boxes of random classes (< num_classes)."""
    generator = torch.Generator().manual_seed(0)
    batch = []
    for _ in range(num_images):
        xy = torch.rand(boxes_per_image, 2, generator=generator) * torch.tensor([width * 0.8, height * 0.8])
        wh = 16 + torch.rand(boxes_per_image, 2, generator=generator) * 200
        instances = Instances((height, width))
        instances.gt_boxes = Boxes(torch.cat([xy, xy + wh], dim=1))
        instances.gt_classes = torch.randint(0, num_classes, (boxes_per_image,), generator=generator)
        image = torch.rand(3, height, width, generator=generator) * 255
        batch.append({"image": image.to(device), "instances": instances})
    return batch


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_call(fn: Callable[[], object], device: str) -> float:
    """Seconds of one call, synchronised on CUDA."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def interleaved_medians(fns: Dict[str, Callable[[], object]], device: str, repeats: int, warmup: int = 1):
    """Median seconds of each function, calls interleaved so that load affects all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: Dict[str, List[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(time_call(fn, device))
    return {name: statistics.median(values) for name, values in times.items()}


def autocast_dtypes(device: str) -> List[torch.dtype]:
    """The autocast dtypes worth timing on ``device``: float16 and bfloat16 on CUDA, bfloat16 on a CPU
    with bfloat16 units, none on another CPU (emulated there: 10-200x slower than float32, amp.py)."""
    if device.startswith("cuda"):
        return [torch.float16, torch.bfloat16]
    return [torch.bfloat16] if cpu_has_units_for(torch.bfloat16) else []


def _autocast(device: str, dtype):
    """Autocast in ``dtype`` on ``device`` ("cpu", "cuda:0", ...), or nothing for dtype None."""
    return autocast_if(dtype is not None, torch.device(device).type, dtype)


def train_step(model, batch, device: str = "cpu", dtype=None):
    """One forward + backward of the training losses; forward under autocast in ``dtype`` if given
    (a GradScaler's scaling is one multiply: not timed)."""
    model.train()
    model.zero_grad(set_to_none=True)
    with EventStorage(), _autocast(device, dtype):
        losses = model(batch)
    sum(losses.values()).backward()


def set_score_level(model, bias: float) -> None:
    """Make the classifier's scores about sigmoid(bias) everywhere (weights scaled down)."""
    with torch.no_grad():
        model.head.cls_score.weight.mul_(0.1)
        model.head.cls_score.bias.fill_(bias)


def saturate_logits(model, bias: float = -32.0) -> None:
    """Classifier logits near ``bias`` everywhere: at -32 the exact focal-loss gradient of a negative
    (about 3 alpha p^3 for gamma 2, p = sigmoid(x) = 1.3e-14) lies in float32's subnormal range
    (|g| < 1.2e-38), the slow path of CPU convolution backward."""
    with torch.no_grad():
        model.head.cls_score.bias.fill_(bias)


def inference(model, images, device: str = "cpu", dtype=None):
    model.eval()
    with torch.no_grad(), _autocast(device, dtype):
        return model(images)


def component_fns(model, is_ours: bool, batch, device):
    """Callables for the breakdown: backbone+FPN, head, assignment, losses (fwd+bwd), decode+NMS."""
    model.train()
    images = model.preprocess_image(batch)
    gt = [b["instances"].to(device) for b in batch]
    with torch.no_grad():
        features = model.backbone(images.tensor)
        features = [features[f] for f in model.head_in_features]
        logits, deltas = model.head(features)
    anchors = model.anchor_generator(features)
    num_classes = model.num_classes

    def backbone():
        with torch.no_grad():
            model.backbone(images.tensor)

    def head():
        with torch.no_grad():
            model.head(features)

    if is_ours:
        flat_anchors = Boxes.cat(anchors).tensor

        def assignment():
            model.label_anchors(flat_anchors, gt)

        outputs = model.label_dense_outputs(features, (logits, deltas), gt)

        def losses():
            leaves = outputs._replace(
                logits=outputs.logits.detach().requires_grad_(), deltas=outputs.deltas.detach().requires_grad_()
            )
            sum(model.losses(leaves).values()).backward()
    else:
        labels, matched = model.label_anchors(anchors, gt)

        def assignment():
            model.label_anchors(anchors, gt)

        def losses():
            lg, dl = model._transpose_dense_predictions(
                [[x.detach().requires_grad_() for x in logits], [x.detach().requires_grad_() for x in deltas]],
                [num_classes, 4],
            )
            with EventStorage():
                sum(model.losses(anchors, lg, labels, dl, matched).values()).backward()

    def decode_nms():
        with torch.no_grad():
            model.forward_inference(images, features, ([x.clone() for x in logits], deltas))

    return {"backbone+FPN": backbone, "head": head, "assignment": assignment, "losses": losses, "decode+NMS": decode_nms}


def focal_loss_micro(device: str, repeats: int, anchors: int = 200_000, classes: int = 80):
    """fwd+bwd seconds of fvcore's sigmoid_focal_loss_jit (one-hot targets), ours on the same
    targets, and ours from labels (what FocalRetinaNet runs)."""
    from fvcore.nn import sigmoid_focal_loss_jit

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(anchors, classes, generator=generator).to(device)
    labels = torch.randint(0, classes * 50, (anchors,), generator=generator).clamp(max=classes).to(device)
    one_hot = torch.nn.functional.one_hot(labels, classes + 1)[:, :classes].float()

    def run(fn):
        def call():
            x = logits.detach().requires_grad_()
            fn(x).backward()
        return call

    return interleaved_medians(
        {
            "fvcore jit": run(lambda x: sigmoid_focal_loss_jit(x, one_hot, 0.25, 2.0, "sum")),
            "ours (targets)": run(lambda x: sigmoid_focal_loss(x, one_hot, 0.25, 2.0, "sum")),
            "ours (labels)": run(lambda x: focal_loss_from_labels(x, labels, 0.25, 2.0)),
        },
        device,
        repeats,
    )


def synthetic_coco(num_images: int, detections_per_image: int, num_classes: int = 80, seed: int = 0):
    """A COCO-like ground truth (dict in COCO json layout; 1-12 boxes of 4-300 px per 640x480 image,
    3% crowd) and ``detections_per_image`` results per image (jittered copies of the boxes, some with
    the wrong class, and random boxes), as COCO results (list of dicts)."""
    rng = np.random.RandomState(seed)
    images, annotations, results = [], [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "width": 640, "height": 480, "file_name": f"{image_id:012d}.jpg"})
        count = rng.randint(1, 13)
        xy = rng.uniform(0, 1, (count, 2)) * [560, 400]
        wh = rng.uniform(4, 300, (count, 2)) * rng.uniform(0.3, 1, (count, 1))
        classes = rng.randint(1, num_classes + 1, count)
        for (x, y), (w, h), c in zip(xy, wh, classes):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(c),
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": int(rng.rand() < 0.03)})
        source = rng.randint(0, count, detections_per_image)
        jitter = rng.randn(detections_per_image, 4) * [6, 6, 0.15, 0.15]
        random_box = rng.rand(detections_per_image) < 0.5
        for i in range(detections_per_image):
            x, y = xy[source[i]] + jitter[i, :2]
            w, h = wh[source[i]] * np.exp(jitter[i, 2:])
            c = classes[source[i]] if rng.rand() < 0.8 else rng.randint(1, num_classes + 1)
            if random_box[i]:
                x, y, w, h = rng.uniform(0, 560), rng.uniform(0, 400), rng.uniform(4, 200), rng.uniform(4, 200)
            results.append({"image_id": image_id, "category_id": int(c), "bbox": [float(x), float(y), float(w), float(h)],
                            "score": float(rng.rand())})
    categories = [{"id": c, "name": f"class {c}"} for c in range(1, num_classes + 1)]
    return {"images": images, "annotations": annotations, "categories": categories}, results


def coco_evaluation_seconds(num_images: int = 5000, detections_per_image: int = 100):
    """Seconds of evaluate + accumulate + summarize of pycocotools' COCOeval and faster-coco-eval's
    COCOeval_faster on synthetic_coco(...), and both runs' 12 metrics."""
    from faster_coco_eval import COCOeval_faster
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt, results = synthetic_coco(num_images, detections_per_image)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
    seconds, stats = {}, {}
    for name, evaluator in (("pycocotools", COCOeval), ("faster-coco-eval", COCOeval_faster)):
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            run = evaluator(coco_gt, coco_dt, "bbox")
            run.evaluate()
            run.accumulate()
            run.summarize()
        seconds[name] = time.perf_counter() - start
        stats[name] = [float(v) for v in run.stats[:12]]
    return seconds, stats


def _proc_status_kib(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure_peak_training_memory(which: str, device: str) -> float:
    """MiB of memory one training step of ``which`` ("ours" or "detectron2") adds at its peak:
    CUDA max_memory_allocated, or on CPU the peak RSS (VmHWM, reset through /proc/self/clear_refs)
    minus the RSS before the step. peak_training_memory runs it in a fresh process."""
    cfg, ref_cfg = benchmark_configs(device)
    model = build_model(cfg if which == "ours" else ref_cfg)
    batch = training_batch(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        train_step(model, batch)
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    before = _proc_status_kib("VmRSS")
    train_step(model, batch)
    return (_proc_status_kib("VmHWM") - before) / 1024


def peak_training_memory(which: str, device: str) -> float:
    """measure_peak_training_memory in a fresh subprocess."""
    code = (
        f"import json, sys; sys.path.insert(0, {REPO!r}); import retinanet_d2; "
        "from lab.benchmark import measure_peak_training_memory as m;"
        f"print(json.dumps(m({which!r}, {device!r})))"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(output.stdout.strip().splitlines()[-1])


def row(name: str, ours_s: float, ref_s: float) -> List[str]:
    """A table row: what, our seconds and detectron2's (as ms), ours / detectron2."""
    return [name, f"{ours_s * 1000:.1f} ms", f"{ref_s * 1000:.1f} ms", f"{ours_s / ref_s:.2f}"]


def run(device: str, repeats: int) -> Iterator[List[str]]:
    """Rows (what, ours, detectron2, ratio) of the benchmark table, as they are measured."""

    ours, ref = build_pair(device)
    ours.to(device), ref.to(device)
    amp = resolve_amp_dtype("", torch.device(device).type)
    amp = amp if amp in autocast_dtypes(device) else None  # no AMP rows where it is emulated
    amp_name = str(amp).replace("torch.", "")
    batch = training_batch(device)
    step_fns = {"ours": lambda: train_step(ours, batch), "ref": lambda: train_step(ref, batch)}
    if amp:
        step_fns.update({"ours amp": lambda: train_step(ours, batch, device, amp),
                         "ref amp": lambda: train_step(ref, batch, device, amp)})
    step = interleaved_medians(step_fns, device, repeats)
    yield row("training step, 2 x 512x640 (fwd+bwd)", step["ours"], step["ref"])
    if amp:
        yield row(f"  ours under AMP ({amp_name}) vs d2 float32", step["ours amp"], step["ref"])
        yield row(f"  both under AMP ({amp_name})", step["ours amp"], step["ref amp"])

    breakdown_ours = interleaved_medians(component_fns(ours, True, batch, device), device, repeats)
    breakdown_ref = interleaved_medians(component_fns(ref, False, batch, device), device, repeats)
    for name in breakdown_ours:
        yield row(f"  {name}", breakdown_ours[name], breakdown_ref[name])

    initial = {k: v.clone() for k, v in ours.state_dict().items()}
    saturate_logits(ours)
    ref.load_state_dict(ours.state_dict())
    saturated = interleaved_medians({"ours": lambda: train_step(ours, batch), "ref": lambda: train_step(ref, batch)}, device, repeats)
    yield row("training step, saturated logits (bias -32)", saturated["ours"], saturated["ref"])
    ours.load_state_dict(initial)

    image = [{"image": torch.rand(3, 800, 1088, generator=torch.Generator().manual_seed(1)).to(device) * 255}]
    for label, bias in (("typical", -6.0), ("worst case", 10.0)):
        set_score_level(ours, bias)
        ref.load_state_dict(ours.state_dict())
        latency_fns = {"ours": lambda: inference(ours, image), "ref": lambda: inference(ref, image)}
        if amp:
            latency_fns.update({"ours amp": lambda: inference(ours, image, device, amp),
                                "ref amp": lambda: inference(ref, image, device, amp)})
        latency = interleaved_medians(latency_fns, device, repeats)
        yield row(f"inference 800x1088, {label}", latency["ours"], latency["ref"])
        if amp:
            yield row(f"  ours under AMP ({amp_name}) vs d2 float32", latency["ours amp"], latency["ref"])
            yield row(f"  both under AMP ({amp_name})", latency["ours amp"], latency["ref amp"])

    micro = focal_loss_micro(device, repeats)
    for name in ("ours (targets)", "ours (labels)"):
        yield row(f"focal loss 200k x 80 fwd+bwd: {name} vs fvcore jit", micro[name], micro["fvcore jit"])

    seconds, stats = coco_evaluation_seconds()
    same = "same" if np.allclose(stats["faster-coco-eval"], stats["pycocotools"], rtol=0, atol=1e-12) else "DIFFERENT"
    yield [f"COCO eval 5000 img x 100 dets ({same} metrics): faster-coco-eval vs pycocotools",
           f"{seconds['faster-coco-eval'] * 1000:.0f} ms", f"{seconds['pycocotools'] * 1000:.0f} ms",
           f"{seconds['faster-coco-eval'] / seconds['pycocotools']:.2f}"]

    memory_ours = peak_training_memory("ours", device)
    memory_ref = peak_training_memory("detectron2", device)
    yield ["peak training memory (one step)", f"{memory_ours:.0f} MiB", f"{memory_ref:.0f} MiB",
           f"{memory_ours / memory_ref:.2f}"]


def largest_batch(step_at: Callable[[int], object], images: int) -> int:
    """The largest of ``images``, images // 2, ..., 1 for which ``step_at(n)`` runs without running out
    of GPU memory (torch.cuda.OutOfMemoryError); 1 image's error is raised."""
    while True:
        try:
            step_at(images)
            return images
        except torch.cuda.OutOfMemoryError:
            if images == 1:
                raise
            images //= 2
            torch.cuda.empty_cache()


def paper_step(device: str, repeats: int, images: int = 16, height: int = 800,
               width: int = 1088) -> Iterator[List[str]]:
    """Rows (what, ours, detectron2, ratio) of the paper's R50-FPN 1x training step: ``images`` random
    images of ``height`` x ``width`` (800 px short side, padded to 32) in one step, or the largest
    halving of that which fits in memory; float32, then under each of autocast_dtypes(device);
    FocalRetinaNet in the default layout and with CHANNELS_LAST against detectron2's RetinaNet,
    interleaved, medians of ``repeats``."""
    if images < 1:
        raise ValueError(f"images (--images) must be >= 1, got {images}")
    ours, ref = build_pair(device)
    models = {"ours": ours, "ours channels_last": channels_last_copy(ours), "ref": ref}

    def step_at(n):
        batch = training_batch(device, n, height, width)
        for model in models.values():
            train_step(model, batch)

    fits = largest_batch(step_at, images)
    batch = training_batch(device, fits, height, width)
    for dtype in [None] + autocast_dtypes(device):
        seconds = interleaved_medians(
            {name: (lambda m: lambda: train_step(m, batch, device, dtype))(model) for name, model in models.items()},
            device, repeats,
        )
        precision = "float32" if dtype is None else str(dtype).replace("torch.", "") + " autocast"
        yield row(f"R50-FPN step, {fits} x {height}x{width}, {precision}", seconds["ours"], seconds["ref"])
        yield row("  FocalRetinaNet with CHANNELS_LAST", seconds["ours channels_last"], seconds["ref"])


HEADER = ["", "FocalRetinaNet", "detectron2 RetinaNet", "ours/d2"]
WIDTHS = [48, 16, 22, 8]


def format_row(cells: List[str]) -> str:
    """One markdown table row with fixed column widths."""
    return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, WIDTHS)) + " |"


def table_header() -> str:
    return format_row(HEADER) + "\n|" + "|".join("-" * (w + 2) for w in WIDTHS) + "|"


def dump(rows, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=1)
