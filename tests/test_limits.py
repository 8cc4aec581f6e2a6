"""The benchmark's measuring code. lab/limits.py, the limit row: FLOPs are counted as the convolution
formula gives them, the probes compute the same convolution in both layouts, and a path's fraction of the
limit is the median over repeats of its FLOP/s over that repeat's best probe (checked with a scripted
clock). lab/benchmark.py's --paper-step halves its batch until a step fits in the GPU's memory."""
import pytest
import torch
import torch.nn.functional as F

import lab.limits as limits
from helpers import cpuinfo_files
from lab.benchmark import largest_batch, paper_step


def test_counted_flops_is_two_per_multiply_add_of_a_convolution():
    x, weight = torch.randn(2, 8, 5, 6), torch.randn(4, 8, 3, 3)
    # every output element (2 x 4 x 5 x 6) is 8 x 3 x 3 multiply-adds, zero padding included
    assert limits.counted_flops(lambda: F.conv2d(x, weight, padding=1)) == 2 * (2 * 4 * 5 * 6) * (8 * 3 * 3)


def test_probes_are_the_same_convolution_in_both_layouts(monkeypatch):
    monkeypatch.setattr(limits, "PROBE_SHAPES", ((1, 16, 6, 7), (2, 8, 4, 4)))
    probes = limits.limit_probes(torch.float32, "cpu")
    assert sorted(probes) == sorted(f"{layout} {shape}" for layout in ("NCHW", "channels_last")
                                    for shape in ("1x16x6x7", "2x8x4x4"))
    for shape, (n, c, h, w) in (("1x16x6x7", (1, 16, 6, 7)), ("2x8x4x4", (2, 8, 4, 4))):
        (nchw, nchw_flops), (nhwc, nhwc_flops) = probes[f"NCHW {shape}"], probes[f"channels_last {shape}"]
        assert nchw_flops == nhwc_flops == 2 * (n * c * h * w) * (c * 3 * 3)
        assert nhwc().is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(nhwc(), nchw(), rtol=1e-5, atol=1e-5)


def test_fraction_is_the_median_of_per_repeat_ratios_to_the_best_probe(monkeypatch):
    def path():
        pass

    def probe_a():
        pass

    def probe_b():
        pass

    # seconds of each timed call, in order (the warm-up calls are not timed)
    clock = {path: iter([1.0, 2.0, 4.0]), probe_a: iter([1.0, 1.0, 1.0]), probe_b: iter([2.0, 0.5, 2.0])}
    monkeypatch.setattr(limits, "_seconds", lambda fn, device: next(clock[fn]))
    monkeypatch.setattr(limits, "limit_probes", lambda dtype, device: {"a": (probe_a, 300), "b": (probe_b, 300)})
    measured = limits.fractions_of_limit({"path": (path, 100)}, torch.float32, "cpu", repeats=3)
    # path: 100, 50, 25 FLOP/s; best probe per repeat: max(300, 150), max(300, 600), max(300, 150)
    assert measured["path"] == {"flops": 100.0, "flops_per_s": 50.0,
                                "fraction": pytest.approx(sorted([100 / 300, 50 / 600, 25 / 300])[1], rel=1e-12)}
    assert measured["limit"] == {"flops_per_s": 300.0, "a": 300.0, "b": 150.0}
    assert all(next(times, None) is None for times in clock.values())  # each function timed 3 times


def _fits_up_to(largest):
    """A step that runs out of GPU memory above ``largest`` images, and the list of sizes it was tried at."""
    tried = []

    def step_at(images):
        tried.append(images)
        if images > largest:
            raise torch.cuda.OutOfMemoryError(f"{images} images")

    return step_at, tried


def test_largest_batch_halves_until_the_step_fits():
    step_at, tried = _fits_up_to(5)
    assert largest_batch(step_at, 16) == 4
    assert tried == [16, 8, 4]
    step_at, tried = _fits_up_to(16)
    assert largest_batch(step_at, 16) == 16 and tried == [16]


def test_largest_batch_raises_when_one_image_does_not_fit():
    step_at, tried = _fits_up_to(0)
    with pytest.raises(torch.cuda.OutOfMemoryError, match="1 images"):
        largest_batch(step_at, 6)
    assert tried == [6, 3, 1]


def test_paper_step_refuses_a_batch_of_no_images():
    with pytest.raises(ValueError, match=r"images \(--images\) must be >= 1, got 0"):
        next(paper_step("cpu", repeats=1, images=0))


def test_autocast_dtypes_leave_out_an_emulated_cpu_dtype(tmp_path, monkeypatch):
    import retinanet_d2.amp
    from lab.benchmark import autocast_dtypes

    with_units, avx2_only = cpuinfo_files(tmp_path)
    monkeypatch.setattr(retinanet_d2.amp, "CPUINFO", with_units)
    assert autocast_dtypes("cpu") == [torch.bfloat16]
    assert autocast_dtypes("cuda:0") == [torch.float16, torch.bfloat16]
    monkeypatch.setattr(retinanet_d2.amp, "CPUINFO", avx2_only)
    assert autocast_dtypes("cpu") == []
    assert autocast_dtypes("cuda") == [torch.float16, torch.bfloat16]
