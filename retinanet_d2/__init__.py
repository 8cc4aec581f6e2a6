"""RetinaNet (Focal Loss for Dense Object Detection) as a detectron2 extension.

``import retinanet_d2`` registers the meta-architecture ``FocalRetinaNet``, the backbone
``build_focal_retinanet_resnet_fpn_backbone``, the anchor generator ``OctaveAnchorGenerator`` and
the embedded demo dataset; ``add_retinanet_config(cfg)`` adds the project's config node and
``load_config(file, opts)`` builds a config with it; ``get_config_file(name)`` finds a config of the
project by name (installed with the package).
"""
from .config import add_retinanet_config, load_config
from .config_files import get_config_file
from . import modeling  # noqa: F401  (only registration)
from . import data  # noqa: F401  (only registration)

__all__ = ["add_retinanet_config", "get_config_file", "load_config"]
