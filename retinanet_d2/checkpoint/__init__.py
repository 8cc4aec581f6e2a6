"""Loading weights from detectron2, Detectron (Caffe2) and torchvision files; see formats.py."""
from .checkpointer import RetinaNetCheckpointer, load_model_weights
from .formats import WEIGHTS_FORMATS, WeightsFormat, read_weights

__all__ = ["WEIGHTS_FORMATS", "WeightsFormat", "RetinaNetCheckpointer", "load_model_weights", "read_weights"]
