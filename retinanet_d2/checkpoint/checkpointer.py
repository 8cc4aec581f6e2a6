"""``RetinaNetCheckpointer``: detectron2's checkpointer, reading weights in any format that
formats.py recognises, refusing a checkpoint that does not fit the model, writing checkpoints
atomically and resuming from the newest readable checkpoint of its folder."""
import logging
import os
import re
from typing import Dict, List, Optional, Tuple

import torch
from detectron2.checkpoint import DetectionCheckpointer

from ..atomic import atomic_open, is_unfinished_write
from .formats import archive_problem, read_weights
from .resolve import resolve_weights

logger = logging.getLogger(__name__)

# Parameters whose shape depends on the number of classes: a mismatch there is fine-tuning to
# another dataset (skipped with detectron2's warning, which names the layer and both shapes).
CLASS_DEPENDENT = ("head.cls_score.",)
LAST_CHECKPOINT = "last_checkpoint"  # fvcore's tag file: the name of the newest checkpoint
RESUME_SOURCE = "the resume checkpoint"


def shape_mismatches(model_state: Dict, checkpoint_state: Dict) -> List[Tuple[str, tuple, tuple]]:
    """(name, checkpoint shape, model shape) for every shared name whose shapes differ."""
    return [
        (name, tuple(value.shape), tuple(model_state[name].shape))
        for name, value in checkpoint_state.items()
        if name in model_state and tuple(value.shape) != tuple(model_state[name].shape)
    ]


def _iteration_in_name(name: str) -> int:
    """7-digit iteration of detectron2's periodic checkpoint names (model_0000039.pth); -1 otherwise."""
    match = re.fullmatch(r"model_(\d+)\.pth", name)
    return int(match.group(1)) if match else -1


class RetinaNetCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer that

    - reads the file's format from its contents (detectron2, Detectron, Caffe2, torchvision; see
      formats.py) and raises ValueError, naming the file and where its path came from
      (``weights_key``, or the resume checkpoint), when it cannot be read, no tensor matches the model,
      or any layer other than the class-dependent predictor has another shape;
    - with ``require_complete``, also refuses weights that leave model layers uninitialised (other
      than the class-dependent predictor): evaluation, prediction and export must not use random
      layers silently;
    - writes each checkpoint and ``last_checkpoint`` atomically (atomic.py): a kill during a save
      leaves every earlier checkpoint intact;
    - resumes from the newest readable checkpoint of ``save_dir``: when the one ``last_checkpoint``
      names is missing, empty or truncated it says so and uses the newest one that reads.
    """

    def __init__(self, model, save_dir: str = "", *, weights_key: str = "MODEL.WEIGHTS",
                 require_complete: bool = False, **checkpointables):
        """
        Args:
            model, save_dir, checkpointables: as DetectionCheckpointer takes them.
            weights_key: where a path given to ``load`` comes from, for error messages
                ("MODEL.WEIGHTS", "train.init_checkpoint", "--weights", ...).
            require_complete: refuse weights that lack any layer of the model but the class-dependent one.
        """
        super().__init__(model, save_dir, **checkpointables)
        self.weights_key = weights_key
        self.require_complete = require_complete
        self._source = weights_key  # where the file being loaded came from
        self._path = ""  # the file being loaded
        self.resumed_from = ""  # set by resume_or_load

    # ---- loading --------------------------------------------------------------------------------
    def _load_file(self, filename: str):
        self._path = filename
        return read_weights(filename, source=self._source)

    def load(self, path: str, checkpointables: Optional[List[str]] = None):
        if path and not os.path.isfile(path):
            path = resolve_weights(path, key=self._source)
        return super().load(path, checkpointables)

    def _load_model(self, checkpoint):
        if not checkpoint.get("matching_heuristics", False):
            self._check_fits_model(checkpoint["model"])
        incompatible = super()._load_model(checkpoint)
        if self.require_complete and incompatible is not None:
            missing = [k for k in incompatible.missing_keys if not k.startswith(CLASS_DEPENDENT)]
            if missing:
                raise ValueError(
                    f"{self._source}={self._path}: leaves {len(missing)} tensors of the model "
                    f"uninitialised (e.g. {missing[:3]}); evaluating or exporting would use random "
                    "layers. Use the weights of this config's model, or ask for it explicitly "
                    "(--allow-random-weights)"
                )
        return incompatible

    def _check_fits_model(self, state: Dict) -> None:
        model_state = self.model.state_dict()
        where = f"{self._source}={self._path}"
        if state and not set(state) & set(model_state):
            raise ValueError(
                f"{where}: none of its {len(state)} tensors has a name of this "
                f"model (it has e.g. {sorted(state)[:3]}, the model {sorted(model_state)[:3]})"
            )
        mismatches = shape_mismatches(model_state, state)
        wrong = [m for m in mismatches if not m[0].startswith(CLASS_DEPENDENT)]
        if not wrong and mismatches and (self.require_complete or self._source == RESUME_SOURCE):
            raise ValueError(self._class_count_problem(where, mismatches[0]))
        if wrong:
            lines = "\n".join(f"  {name}: {ckpt} in the checkpoint, {model} in the model" for name, ckpt, model in wrong)
            raise ValueError(
                f"{where} does not fit the model built from the config "
                f"({len(wrong)} layers differ; is the config the one for these weights?):\n{lines}"
            )

    def _class_count_problem(self, where: str, mismatch: Tuple[str, tuple, tuple]) -> str:
        """Why weights whose class-dependent layer has another shape are refused: evaluation,
        prediction and export would use a random classifier; a resume would continue another model."""
        name, in_checkpoint, in_model = mismatch
        model_classes = getattr(self.model, "num_classes", None)
        counts = ""
        if model_classes and in_model[0] % model_classes == 0:
            anchors = in_model[0] // model_classes
            counts = f" it was trained for {in_checkpoint[0] // anchors} classes, the config has {model_classes} (" \
                     "MODEL.RETINANET.NUM_CLASSES / model.num_classes);"
        if self._source == RESUME_SOURCE:
            return (f"{where}: cannot resume, the checkpoint's classifier {name} is {in_checkpoint}, the model's "
                    f"{in_model};{counts} its checkpoints and config.yaml are left as they were. Resume with the config the run "
                    "was started with, or start a new output folder with this checkpoint as the weights to fine-tune")
        return (f"{where}: its classifier {name} is {in_checkpoint}, the model's {in_model};{counts} evaluating or "
                "predicting with it would use a random classifier. Set the class count of the weights, or fine-tune "
                "them on this dataset first (training loads them and starts a new classifier)")

    def resume_or_load(self, path: str, *, resume: bool = True):
        """With ``resume``: the newest readable checkpoint of save_dir (all checkpointables), if any;
        else ``path`` (the model alone; "" for none). ``resumed_from`` then names the checkpoint
        resumed from ("" if none)."""
        self.resumed_from = self.newest_readable_checkpoint() if resume else ""
        if self.resumed_from:
            self._source = RESUME_SOURCE
            return self.load(self.resumed_from)
        self._source = self.weights_key
        return self.load(path, checkpointables=[])

    def newest_readable_checkpoint(self) -> str:
        """The path of the checkpoint to resume from ("" if save_dir holds none that reads): the one
        ``last_checkpoint`` names, or, when that is missing, empty or broken (logged, naming the
        file), the first readable ``.pth`` of save_dir in the order model_final.pth, then by the
        iteration in the name (model_0000039.pth), then by modification time, newest first."""
        if not self.save_dir or not os.path.isdir(self.save_dir):
            return ""
        names = sorted(
            (n for n in os.listdir(self.save_dir) if n.endswith(".pth") and not is_unfinished_write(n)),
            key=lambda n: (n == "model_final.pth", _iteration_in_name(n), os.path.getmtime(os.path.join(self.save_dir, n))),
            reverse=True,
        )
        tagged = self._tagged_name()
        if tagged:
            names = [tagged] + [n for n in names if n != tagged]
        broken = []
        for name in names:
            path = os.path.join(self.save_dir, name)
            problem = checkpoint_problem(path)
            if problem is None:
                if broken:
                    logger.warning(f"Resuming from {path} instead: " + "; ".join(broken))
                return path
            broken.append(f"{path} is {problem}")
        if broken:
            raise ValueError("--resume: no readable checkpoint in " + self.save_dir + ": " + "; ".join(broken))
        return ""

    def _tagged_name(self) -> str:
        tag = os.path.join(self.save_dir, LAST_CHECKPOINT)
        if not os.path.isfile(tag):
            return ""
        with open(tag, encoding="utf-8") as f:
            name = f.read().strip()
        if not name:
            logger.warning(f"{tag} is empty: looking for the newest readable checkpoint")
        return name

    def has_checkpoint(self) -> bool:
        return bool(self.newest_readable_checkpoint())

    # ---- saving ---------------------------------------------------------------------------------
    def save(self, name: str, **kwargs) -> None:
        """Write ``save_dir/name.pth`` (model, checkpointables, ``kwargs``) atomically, then tag it."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        logger.info(f"Saving checkpoint to {path}")
        with atomic_open(path, "wb") as f:
            torch.save(data, f)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        with atomic_open(os.path.join(self.save_dir, LAST_CHECKPOINT), "w", encoding="utf-8") as f:
            f.write(last_filename_basename)


def checkpoint_problem(path: str) -> Optional[str]:
    """None if ``path`` looks whole, else what is wrong with it: "missing", "empty (0 bytes)" or
    "a truncated or corrupt torch archive". Reads the archive's directory, not its tensors."""
    if not os.path.isfile(path):
        return "missing"
    if os.path.getsize(path) == 0:
        return "empty (0 bytes)"
    return archive_problem(path)


def load_model_weights(model, weights: str, *, key: str = "MODEL.WEIGHTS", require_complete: bool = True) -> None:
    """Load ``weights`` (a path or URL, any format RetinaNetCheckpointer reads; ``key`` says where it
    came from) into ``model``; the one way every tool loads weights. FileNotFoundError naming the file
    if it cannot be had, ValueError if it is refused, does not fit, or (``require_complete``) leaves
    layers of the model uninitialised."""
    RetinaNetCheckpointer(model, weights_key=key, require_complete=require_complete).resume_or_load(weights, resume=False)
