"""The embedded shapes dataset; importing this package registers its splits."""
from .register import check_dataset_files, check_num_classes, check_same_classes, register_coco_dataset  # noqa: F401  (import registers)
