"""The embedded shapes dataset; importing this package registers its splits."""
from .register import check_dataset_files  # noqa: F401  (importing registers the splits)
