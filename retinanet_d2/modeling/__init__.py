"""FocalRetinaNet's modules; importing this package registers them into detectron2's registries."""
from .anchors import OctaveAnchorGenerator  # noqa: F401  (registration)
from .backbone import build_focal_retinanet_resnet_fpn_backbone  # noqa: F401  (registration)
from .head import FocalRetinaNetHead  # noqa: F401
from .meta_arch import FocalRetinaNet  # noqa: F401  (registration)
