"""How close a measured path comes to what this machine's convolutions reach.

The limit of a dtype is the best throughput of a few large 3x3 convolutions (PROBE_SHAPES) in that
dtype, in the default (NCHW) and the channels_last layout, measured in the same run and interleaved
with the path it bounds (a shared host drifts by up to 2x within minutes): each repeat times the path
and every probe once, and the path's fraction of the limit is the median over repeats of
(path FLOP/s) / (best probe FLOP/s of that repeat). FLOPs are counted by torch.utils.flop_counter
(2 per multiply-add; a training step's count includes the backward pass), never estimated by hand.
"""
import statistics
import time
from typing import Callable, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

# (N, C, H, W) of the probes' inputs: 3x3 convolutions C -> C, stride 1, the sizes of an FPN's finer levels.
PROBE_SHAPES = ((2, 256, 64, 80), (2, 512, 32, 40), (1, 128, 128, 160))
LAYOUTS = {"NCHW": torch.contiguous_format, "channels_last": torch.channels_last}


def counted_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` as torch.utils.flop_counter counts them."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def convolution_probe(shape: Sequence[int], dtype: torch.dtype, layout: str, device: str) -> Callable[[], object]:
    """A 3x3, C -> C, padding-1 convolution of a random (N, C, H, W) ``shape`` input in ``dtype`` and
    ``layout`` (a key of LAYOUTS), forward only, without autograd."""
    generator = torch.Generator().manual_seed(0)
    channels = shape[1]
    x = torch.randn(*shape, generator=generator).to(device, dtype).contiguous(memory_format=LAYOUTS[layout])
    weight = (torch.randn(channels, channels, 3, 3, generator=generator) * 0.02).to(device, dtype)
    weight = weight.contiguous(memory_format=LAYOUTS[layout])

    def run():
        with torch.no_grad():
            return F.conv2d(x, weight, padding=1)

    return run


def limit_probes(dtype: torch.dtype, device: str) -> Dict[str, Tuple[Callable[[], object], int]]:
    """{"<layout> <N>x<C>x<H>x<W>": (probe, its FLOPs)} for every PROBE_SHAPES x LAYOUTS."""
    probes = {}
    for shape in PROBE_SHAPES:
        for layout in LAYOUTS:
            probe = convolution_probe(shape, dtype, layout, device)
            probes[f"{layout} {'x'.join(map(str, shape))}"] = (probe, counted_flops(probe))
    return probes


def _seconds(fn: Callable[[], object], device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def fractions_of_limit(paths: Dict[str, Tuple[Callable[[], object], int]], dtype: torch.dtype, device: str,
                       repeats: int, warmup: int = 1) -> Dict[str, Dict[str, float]]:
    """Each path's throughput and fraction of the ``dtype`` limit, measured interleaved.

    Args:
        paths: name -> (callable, its FLOPs per call).
    Returns:
        name -> {"flops", "flops_per_s" (median), "fraction" (median of per-repeat ratios)}, and
        "limit" -> {"flops_per_s": median best probe, "<probe name>": its median FLOP/s, ...}.
    """
    probes = limit_probes(dtype, device)
    calls = {**paths, **probes}
    for _ in range(warmup):
        for fn, _ in calls.values():
            fn()
    rates: Dict[str, List[float]] = {name: [] for name in calls}
    best: List[float] = []
    for _ in range(repeats):
        for name, (fn, flops) in calls.items():
            rates[name].append(flops / _seconds(fn, device))
        best.append(max(rates[name][-1] for name in probes))
    results = {
        name: {"flops": float(flops), "flops_per_s": statistics.median(rates[name]),
               "fraction": statistics.median(r / b for r, b in zip(rates[name], best))}
        for name, (_, flops) in paths.items()
    }
    results["limit"] = {"flops_per_s": statistics.median(best), **{name: statistics.median(rates[name]) for name in probes}}
    return results


def limit_table(device: str, repeats: int, dtypes: Sequence[torch.dtype], channels_last: bool = True) -> List[List[str]]:
    """Rows (path, GFLOP per call, GFLOP/s, % of the dtype's limit) for the training step (2 images of
    512x640) and inference (one 800x1088 image) of FocalRetinaNet and detectron2's RetinaNet in each
    of ``dtypes`` (float32 plain; others under autocast), plus FocalRetinaNet with its weights in
    channels_last (CHANNELS_LAST) when ``channels_last``, and each dtype's limit row."""
    from lab.benchmark import build_pair, channels_last_copy, inference, set_score_level, train_step, training_batch

    ours, ref = build_pair(device)
    set_score_level(ours, -6.0)  # typical scores: a few candidates above the test threshold
    ref.load_state_dict(ours.state_dict())
    batch = training_batch(device)
    image = [{"image": torch.rand(3, 800, 1088, generator=torch.Generator().manual_seed(1)).to(device) * 255}]
    models = {"FocalRetinaNet": ours, "detectron2 RetinaNet": ref}
    if channels_last:
        models["FocalRetinaNet channels_last"] = channels_last_copy(ours)
    rows = []
    for dtype in dtypes:
        autocast = None if dtype == torch.float32 else dtype
        paths = {}
        for name, model in models.items():
            step = (lambda m: lambda: train_step(m, batch, device, autocast))(model)
            infer = (lambda m: lambda: inference(m, image, device, autocast))(model)
            paths[f"{name}: training step"] = (step, counted_flops(step))
            paths[f"{name}: inference"] = (infer, counted_flops(infer))
        measured = fractions_of_limit(paths, dtype, device, repeats)
        limit = measured.pop("limit")
        dtype_name = str(dtype).replace("torch.", "")
        layouts = ", ".join(f"{k} {v / 1e9:.0f}" for k, v in limit.items() if k != "flops_per_s")
        rows.append([f"{dtype_name} limit (best convolution; each probe: {layouts} GFLOP/s)", "",
                     f"{limit['flops_per_s'] / 1e9:.0f}", "100%"])
        for name, values in measured.items():
            rows.append([f"{dtype_name} {name}", f"{values['flops'] / 1e9:.1f}", f"{values['flops_per_s'] / 1e9:.0f}",
                         f"{100 * values['fraction']:.0f}%"])
    return rows


def profile_table(device: str, dtype: torch.dtype, rows: int = 15) -> str:
    """torch.profiler's per-operator table (self time, top ``rows``) of one training step and one
    800x1088 inference of FocalRetinaNet (after one warm-up call each), and the share of the
    convolutions (aten::mkldnn_convolution / convolution_backward / cudnn) in each."""
    from lab.benchmark import build_pair, inference, set_score_level, train_step, training_batch

    ours, _ = build_pair(device)
    set_score_level(ours, -6.0)
    batch = training_batch(device)
    image = [{"image": torch.rand(3, 800, 1088, generator=torch.Generator().manual_seed(1)).to(device) * 255}]
    autocast = None if dtype == torch.float32 else dtype
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.startswith("cuda"):
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    sort_key = "self_cuda_time_total" if device.startswith("cuda") else "self_cpu_time_total"
    out = []
    for label, fn in (("training step", lambda: train_step(ours, batch, device, autocast)),
                      ("inference", lambda: inference(ours, image, device, autocast))):
        fn()
        with torch.profiler.profile(activities=activities) as profiler:
            fn()
        averages = profiler.key_averages()
        total = sum(getattr(e, sort_key) for e in averages)
        conv = sum(getattr(e, sort_key) for e in averages if "conv" in e.key)
        out.append(f"--- {label}, {str(dtype).replace('torch.', '')}: convolution operators {100 * conv / total:.0f}% "
                   f"of self time ({total / 1e3:.0f} ms in all)")
        out.append(averages.table(sort_by=sort_key, row_limit=rows))
    return "\n".join(out)


def layout_ratios(config: str, device: str, repeats: int, size: int) -> List[List[str]]:
    """Rows (dtype, path, default ms, channels_last ms, ratio) for ``config``'s model (no weights file)
    on SOLVER.IMS_PER_BATCH random images of ``size`` x ``size`` px (training step) and one (inference),
    in float32 and under each of autocast_dtypes(device); times interleaved, medians of ``repeats``."""
    from detectron2.modeling import build_model

    from lab.benchmark import (autocast_dtypes, channels_last_copy, inference, interleaved_medians, train_step,
                               training_batch)
    from retinanet_d2 import load_config

    cfg = load_config(config, ["MODEL.WEIGHTS", "", "MODEL.DEVICE", device])
    torch.manual_seed(0)
    default = build_model(cfg)
    channels_last = channels_last_copy(default)
    batch = training_batch(device, cfg.SOLVER.IMS_PER_BATCH, size, size, num_classes=cfg.MODEL.RETINANET.NUM_CLASSES)
    images = [{"image": batch[0]["image"]}]
    rows = []
    for dtype in [None] + autocast_dtypes(device):
        times = interleaved_medians({
            "step default": lambda: train_step(default, batch, device, dtype),
            "step channels_last": lambda: train_step(channels_last, batch, device, dtype),
            "inference default": lambda: inference(default, images, device, dtype),
            "inference channels_last": lambda: inference(channels_last, images, device, dtype),
        }, device, repeats)
        name = "float32" if dtype is None else str(dtype).replace("torch.", "")
        for path in ("step", "inference"):
            a, b = times[f"{path} default"], times[f"{path} channels_last"]
            rows.append([name, path, f"{a * 1000:.1f}", f"{b * 1000:.1f}", f"{b / a:.2f}"])
    return rows
