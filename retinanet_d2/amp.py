"""Mixed precision's dtypes and the CPU facts behind them, for training (``SOLVER.AMP.ENABLED``; the
step trainers are engine/step.py's) and inference (``MODEL.FOCAL_RETINANET.TEST_AMP``), on CUDA and CPU.

CPUs with bfloat16 units (``amx_bf16``, ``avx512_bf16``) gain as much from bfloat16 autocast as a GPU
from float16; on other CPUs torch emulates it, slowly (``emulated_autocast``). The model computes its
losses and decodes its detections in float32 from upcast predictions (modeling/precision.py,
meta_arch.py), so only the convolutions run in reduced precision.
"""
import contextlib
import logging
from typing import Optional

import torch

# Values accepted by MODEL.FOCAL_RETINANET.AMP_DTYPE ("" picks by device: see amp_dtype).
AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


# /proc/cpuinfo flags of CPUs with arithmetic units for each autocast dtype: bfloat16 (Intel AMX,
# AVX-512 BF16 on Intel and AMD) and float16 (AVX-512 FP16, AMX FP16).
CPU_UNIT_FLAGS = {torch.bfloat16: ("amx_bf16", "avx512_bf16"), torch.float16: ("avx512_fp16", "amx_fp16")}
CPUINFO = "/proc/cpuinfo"

logger = logging.getLogger(__name__)


def cpu_has_units_for(dtype: torch.dtype, cpuinfo: Optional[str] = None) -> bool:
    """Whether the first CPU in ``cpuinfo`` (default CPUINFO) lists one of CPU_UNIT_FLAGS[dtype]; False
    where the file does not exist."""
    try:
        with open(cpuinfo or CPUINFO, encoding="utf-8") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return any(flag in flags for flag in CPU_UNIT_FLAGS[dtype])


def emulated_autocast(device: str, dtype: torch.dtype, cpuinfo: Optional[str] = None) -> Optional[str]:
    """Why autocast in ``dtype`` on ``device`` ("cpu", "cuda") would be slow: on a CPU that lists none
    of CPU_UNIT_FLAGS[dtype], a message that says so and how to turn mixed precision off; else None.
    (torch then emulates the dtype; without AVX-512 its convolutions fall back to a single-threaded
    kernel: on an AVX2 AMD EPYC a 3x3 256->256 convolution took 55 s under bfloat16 autocast against
    0.26 s in float32 on 1x256x100x136, 0.54 s against 0.039 s on 1x256x25x34; float16 alike.)"""
    if device != "cpu" or dtype not in CPU_UNIT_FLAGS or cpu_has_units_for(dtype, cpuinfo):
        return None
    name = str(dtype).replace("torch.", "")
    return (f"{name} autocast on this CPU is emulated: {cpuinfo or CPUINFO} lists none of "
            f"{', '.join(CPU_UNIT_FLAGS[dtype])}, so expect no gain over float32 (torch's CPU capability here: "
            f"{torch.backends.cpu.get_cpu_capability()}; without AVX-512 its {name} convolutions run "
            "single-threaded, 10-200x slower than float32). Turn mixed precision off: SOLVER.AMP.ENABLED False "
            "MODEL.FOCAL_RETINANET.TEST_AMP False (LazyConfig: train.amp.enabled=False train.amp.test=False)")


def warn_if_emulated(device: str, dtype: torch.dtype) -> None:
    """Log emulated_autocast's warning, if any."""
    message = emulated_autocast(device, dtype)
    if message:
        logger.warning(message)


def resolve_amp_dtype(name: str, device: str, key: str = "MODEL.FOCAL_RETINANET.AMP_DTYPE") -> torch.dtype:
    """The autocast dtype ``name`` ("float16", "bfloat16"), or for "" the default of ``device``
    ("cuda" or "cpu"): float16 on CUDA (as detectron2's AMPTrainer), bfloat16 on CPU (CPU autocast's
    fast dtype). ValueError naming ``key`` for another name."""
    if not name:
        return torch.float16 if device == "cuda" else torch.bfloat16
    if name not in AMP_DTYPES:
        raise ValueError(f"{key} must be one of {sorted(AMP_DTYPES)} or '' (by device), got {name!r}")
    return AMP_DTYPES[name]


def autocast_if(enabled: bool, device: str, dtype: torch.dtype):
    """torch.autocast(device, dtype) if ``enabled``, else a context that does nothing."""
    return torch.autocast(device, dtype=dtype) if enabled else contextlib.nullcontext()
