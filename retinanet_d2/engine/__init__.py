"""Training and evaluation with detectron2's step trainers and hooks, for yacs and LazyConfig configs.

A config becomes a run's parts by the adapter of its kind (``run_parts``: yacs_parts.py,
lazy_parts.py); past the adapters nothing asks which kind it has. ``train`` and ``evaluate``
(loop.py) are short functions over those parts, in the shape of detectron2's
``tools/lazyconfig_train_net.py``; run_setup.py holds what happens before a run touches its output
folder. detectron2's stock ``DefaultTrainer`` also trains FocalRetinaNet from a yacs config.
"""
from .loop import evaluate, test, train
from .parts import RunParts, run_parts
from .settings import RunSettings

__all__ = ["RunParts", "RunSettings", "evaluate", "run_parts", "test", "train"]
