"""Resolving a weights path before it is loaded, so that an unreachable file gets an error that
names it, the key it came from, and how to supply it."""
import os

from detectron2.utils.file_io import PathManager


def resolve_weights(path: str, key: str = "MODEL.WEIGHTS") -> str:
    """Local path of ``path`` ("" stays ""); downloads URLs such as detectron2:// when reachable.

    Raises FileNotFoundError naming ``key``, the file and how to point ``key`` at a local copy otherwise.
    """
    if not path:
        return path
    try:
        local = PathManager.get_local_path(path)
        if not os.path.isfile(local):
            raise FileNotFoundError(f"no file at {local}")
        return local
    except Exception as error:  # a download failure has many types (URLError, OSError, ...)
        raise FileNotFoundError(
            f"{key}={path} could not be opened or downloaded ({type(error).__name__}: "
            f"{error}). Download it on a machine with internet access (detectron2:// stands for "
            "https://dl.fbaipublicfiles.com/detectron2/) and pass its local path: "
            f"{key} /path/to/file"
        ) from error
