"""Mixed precision for training (``SOLVER.AMP.ENABLED``) and inference
(``MODEL.FOCAL_RETINANET.TEST_AMP``), on CUDA and on CPU.

detectron2's ``AMPTrainer`` autocasts to float16 with a grad scaler and requires CUDA (0.6 asserts it
at the first step); CPUs with bfloat16 units (``amx_bf16``, ``avx512_bf16``) gain as much from
bfloat16 autocast. ``MixedPrecisionTrainer`` keeps ``AMPTrainer``'s semantics (autocast around the
forward pass, a ``GradScaler`` for float16, its state in the checkpoint) on either device and in either
dtype. The model computes its losses and decodes its detections in float32 from upcast predictions
(modeling/losses.py, meta_arch.py), so only the convolutions run in reduced precision.
"""
import contextlib
import time

import torch

from detectron2.engine import AMPTrainer

from .compat import after_backward
from .config import retinanet_node

# Values accepted by MODEL.FOCAL_RETINANET.AMP_DTYPE ("" picks by device: see amp_dtype).
AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


# /proc/cpuinfo flags of CPUs with bfloat16 arithmetic units (Intel AMX, AVX-512 BF16 on Intel and AMD).
BFLOAT16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_has_bfloat16_units(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU lists one of BFLOAT16_CPU_FLAGS (False where the file does not exist)."""
    try:
        with open(cpuinfo, encoding="utf-8") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return any(flag in flags for flag in BFLOAT16_CPU_FLAGS)


def device_type(cfg) -> str:
    """"cuda" or "cpu" for cfg.MODEL.DEVICE ("cuda:1" -> "cuda")."""
    return torch.device(cfg.MODEL.DEVICE).type


def resolve_amp_dtype(name: str, device: str, key: str = "MODEL.FOCAL_RETINANET.AMP_DTYPE") -> torch.dtype:
    """The autocast dtype ``name`` ("float16", "bfloat16"), or for "" the default of ``device``
    ("cuda" or "cpu"): float16 on CUDA (as detectron2's AMPTrainer), bfloat16 on CPU (CPU autocast's
    fast dtype). ValueError naming ``key`` for another name."""
    if not name:
        return torch.float16 if device == "cuda" else torch.bfloat16
    if name not in AMP_DTYPES:
        raise ValueError(f"{key} must be one of {sorted(AMP_DTYPES)} or '' (by device), got {name!r}")
    return AMP_DTYPES[name]


def amp_dtype(cfg) -> torch.dtype:
    """resolve_amp_dtype of a yacs config's MODEL.FOCAL_RETINANET.AMP_DTYPE and MODEL.DEVICE."""
    return resolve_amp_dtype(retinanet_node(cfg).AMP_DTYPE, device_type(cfg))


def autocast_if(enabled: bool, device: str, dtype: torch.dtype):
    """torch.autocast(device, dtype) if ``enabled``, else a context that does nothing."""
    return torch.autocast(device, dtype=dtype) if enabled else contextlib.nullcontext()


def inference_autocast(cfg):
    """A context that runs inference under autocast in amp_dtype(cfg) when
    MODEL.FOCAL_RETINANET.TEST_AMP is set, and does nothing otherwise."""
    return autocast_if(retinanet_node(cfg).TEST_AMP, device_type(cfg), amp_dtype(cfg))


class MixedPrecisionTrainer(AMPTrainer):
    """detectron2's AMPTrainer on CUDA or CPU, in float16 or bfloat16: autocast around the forward
    pass; the loss scaled by a GradScaler only for float16 (bfloat16 has float32's range). Its
    checkpoint holds the scaler's state; one without it (a float32 run's) resumes too."""

    def __init__(self, model, data_loader, optimizer, *, device_type: str, dtype: torch.dtype):
        """
        Args:
            model, data_loader, optimizer: as detectron2's SimpleTrainer takes them.
            device_type: "cuda" or "cpu", where the model runs.
            dtype: torch.float16 or torch.bfloat16.
        """
        scaler = torch.amp.GradScaler(device_type, enabled=dtype == torch.float16)
        super().__init__(model, data_loader, optimizer, grad_scaler=scaler)
        self.device_type = device_type
        self.dtype = dtype

    def run_step(self):
        assert self.model.training, "[MixedPrecisionTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        with torch.autocast(self.device_type, dtype=self.dtype):
            loss_dict = self.model(data)
        losses = sum(loss_dict.values())
        self.optimizer.zero_grad()
        self.grad_scaler.scale(losses).backward()
        after_backward(self)
        self._write_metrics(loss_dict, data_time)
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()

    def load_state_dict(self, state_dict):
        if "grad_scaler" in state_dict:
            super().load_state_dict(state_dict)
        else:  # a float32 run's checkpoint: the scaler starts afresh
            super(AMPTrainer, self).load_state_dict(state_dict)
