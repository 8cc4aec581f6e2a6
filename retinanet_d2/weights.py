"""Resolving MODEL.WEIGHTS before detectron2 loads it, so that an unreachable file gets an error
that names it and says how to supply it."""
import os

from detectron2.utils.file_io import PathManager


def resolve_weights(path: str) -> str:
    """Local path of ``path`` ("" stays ""); downloads URLs such as detectron2:// when reachable.

    Raises FileNotFoundError naming the file and the key to point at a local copy otherwise.
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
            f"MODEL.WEIGHTS={path} could not be opened or downloaded ({type(error).__name__}: "
            f"{error}). Download it on a machine with internet access (detectron2:// stands for "
            "https://dl.fbaipublicfiles.com/detectron2/) and pass its local path: "
            "MODEL.WEIGHTS /path/to/file"
        ) from error
