"""Loading weights from detectron2, Detectron (Caffe2) and torchvision files; see formats.py."""
from .checkpointer import RetinaNetCheckpointer, load_model_weights
from .formats import FORMATS, read_weights

__all__ = ["FORMATS", "RetinaNetCheckpointer", "load_model_weights", "read_weights"]
