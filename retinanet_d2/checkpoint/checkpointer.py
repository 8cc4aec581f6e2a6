"""``RetinaNetCheckpointer``: detectron2's checkpointer, reading MODEL.WEIGHTS in any format that
formats.py recognises and refusing to load a checkpoint that does not fit the model."""
from typing import Dict, List, Tuple

from detectron2.checkpoint import DetectionCheckpointer

from ..weights import resolve_weights
from .formats import read_weights

# Parameters whose shape depends on the number of classes: a mismatch there is fine-tuning to
# another dataset (skipped with detectron2's warning, which names the layer and both shapes).
CLASS_DEPENDENT = ("head.cls_score.",)


def shape_mismatches(model_state: Dict, checkpoint_state: Dict) -> List[Tuple[str, tuple, tuple]]:
    """(name, checkpoint shape, model shape) for every shared name whose shapes differ."""
    return [
        (name, tuple(value.shape), tuple(model_state[name].shape))
        for name, value in checkpoint_state.items()
        if name in model_state and tuple(value.shape) != tuple(model_state[name].shape)
    ]


class RetinaNetCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer whose ``load`` recognises the file's format from its contents
    (detectron2, Detectron, Caffe2, torchvision; see formats.py) and raises ValueError, naming the
    file, when no tensor matches the model or any layer other than the class-dependent predictor
    has another shape. Saving is detectron2's."""

    _weights_path = "the checkpoint"  # the file being loaded, for error messages

    def _load_file(self, filename: str):
        self._weights_path = filename
        return read_weights(filename)

    def _load_model(self, checkpoint):
        if not checkpoint.get("matching_heuristics", False):
            self._check_fits_model(checkpoint["model"])
        return super()._load_model(checkpoint)

    def _check_fits_model(self, state: Dict) -> None:
        model_state = self.model.state_dict()
        path = self._weights_path
        if state and not set(state) & set(model_state):
            raise ValueError(
                f"MODEL.WEIGHTS={path}: none of its {len(state)} tensors has a name of this "
                f"model (it has e.g. {sorted(state)[:3]}, the model {sorted(model_state)[:3]})"
            )
        wrong = [m for m in shape_mismatches(model_state, state) if not m[0].startswith(CLASS_DEPENDENT)]
        if wrong:
            lines = "\n".join(f"  {name}: {ckpt} in the checkpoint, {model} in the model" for name, ckpt, model in wrong)
            raise ValueError(
                f"MODEL.WEIGHTS={path} does not fit the model built from the config "
                f"({len(wrong)} layers differ; is the config the one for these weights?):\n{lines}"
            )


def load_model_weights(model, weights: str) -> None:
    """Load MODEL.WEIGHTS ``weights`` (a path or URL, any format RetinaNetCheckpointer reads) into
    ``model``; the one way every tool loads weights. FileNotFoundError naming the file if it
    cannot be had, ValueError if it is refused or does not fit."""
    RetinaNetCheckpointer(model).load(resolve_weights(weights))
