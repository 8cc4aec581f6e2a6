"""The step trainer of a run: detectron2's ``SimpleTrainer``, its ``AMPTrainer`` for float16 on CUDA,
and ``AutocastTrainer`` where detectron2's AMP step cannot go (its step asserts CUDA and casts to
float16): bfloat16 autocast, on CPU (whose bfloat16 units gain as much as a GPU's float16) or CUDA.
``TrainerCheckpoint`` is what the checkpointer saves of it."""
import torch
from torch import nn

from detectron2.engine import AMPTrainer, SimpleTrainer

from .settings import RunSettings


class AutocastForward(nn.Module):
    """``model`` whose forward pass runs under torch.autocast(device_type, dtype): the step trainer's
    model, so that detectron2's own step (forward, backward outside autocast, optimizer) runs it."""

    def __init__(self, model: nn.Module, device_type: str, dtype: torch.dtype):
        super().__init__()
        self.model, self.device_type, self.dtype = model, device_type, dtype

    def forward(self, *args, **kwargs):
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.model(*args, **kwargs)


class AutocastTrainer(SimpleTrainer):
    """detectron2's SimpleTrainer with the forward pass under bfloat16 autocast (AutocastForward); the
    losses are computed from upcast predictions in float32 (modeling/precision.py), and bfloat16 has
    float32's range, so no loss scaling is needed."""

    def __init__(self, model, data_loader, optimizer, *, device_type: str):
        """model, data_loader, optimizer: as SimpleTrainer takes them; device_type: "cpu" or "cuda"."""
        super().__init__(AutocastForward(model, device_type, torch.bfloat16), data_loader, optimizer)


def check_step_precision(settings: RunSettings) -> None:
    """ValueError for float16 training off CUDA: detectron2's AMPTrainer (the step with a grad scaler)
    needs CUDA; a CPU trains in bfloat16."""
    if settings.train_amp and settings.amp_dtype == torch.float16 and settings.device != "cuda":
        raise ValueError("float16 mixed-precision training needs CUDA (detectron2's AMPTrainer with its grad scaler); "
                         "on a CPU use bfloat16 (MODEL.FOCAL_RETINANET.AMP_DTYPE bfloat16 / train.amp.dtype=bfloat16)")


def build_step_trainer(model, data_loader, optimizer, settings: RunSettings) -> SimpleTrainer:
    """SimpleTrainer in float32; under AMP, detectron2's AMPTrainer for float16 (CUDA only, see
    check_step_precision) or AutocastTrainer for bfloat16."""
    check_step_precision(settings)
    if not settings.train_amp:
        return SimpleTrainer(model, data_loader, optimizer)
    if settings.amp_dtype == torch.bfloat16:
        return AutocastTrainer(model, data_loader, optimizer, device_type=settings.device)
    return AMPTrainer(model, data_loader, optimizer, grad_scaler=torch.amp.GradScaler("cuda"))


class TrainerCheckpoint:
    """The step trainer's state as DefaultTrainer checkpoints it: ``{"iteration", "hooks", "_trainer":
    {"iteration", "optimizer", ["grad_scaler"]}}``, so that checkpoints move between this project's
    train_net.py and detectron2's DefaultTrainer. Loads that form and the flat one of detectron2's
    lazyconfig_train_net.py; a checkpoint without the grad scaler's state (a float32 or bfloat16 run's)
    leaves a float16 run's scaler as it starts."""

    OUTER = ("iteration", "hooks")

    def __init__(self, step: SimpleTrainer, settings: RunSettings):
        """step: the step trainer; settings: the run's (its folder and weights key, for errors)."""
        self.step, self.settings = step, settings

    def state_dict(self) -> dict:
        state = self.step.state_dict()
        outer = {key: state.pop(key) for key in self.OUTER if key in state}
        return {**outer, "_trainer": {"iteration": outer["iteration"], **state}}

    def load_state_dict(self, state: dict) -> None:
        flat = {**state.get("_trainer", {}), **{key: state[key] for key in self.OUTER if key in state}}
        if "optimizer" not in flat:
            raise ValueError(
                f"the resume checkpoint of {self.settings.output_dir} holds no optimizer state: it was written "
                f"by another trainer. Load it as weights instead ({self.settings.weights_key}=<that file>, "
                "without --resume, into a new output folder)"
            )
        if isinstance(self.step, AMPTrainer) and "grad_scaler" not in flat:
            flat["grad_scaler"] = self.step.grad_scaler.state_dict()
        self.step.load_state_dict(flat)
