"""Writing a file so that it is either the old version or the new one, never a torn mix: the one
helper through which the project writes every file a user would miss (checkpoints,
``last_checkpoint``, ``config.yaml``, results, predictions, converted weights, generated data)."""
import contextlib
import os
import tempfile

TMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_path(path: str):
    """A temporary path in ``path``'s folder for the block to write by any means (``torch.save``,
    ``cv2.imwrite``, ``savefig`` ...); when the block ends without error it is fsynced and renamed
    onto ``path``. On an error the temporary file is removed and ``path`` keeps its old content; after
    a kill, ``path`` is intact and a ``.NAME.*.tmp`` file is all that is left (is_unfinished_write)."""
    folder = os.path.dirname(os.path.abspath(path))
    name, ext = os.path.splitext(os.path.basename(path))
    # The extension stays last, so that writers that pick the format by it (cv2, matplotlib) still can.
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=f"{TMP_SUFFIX}{ext}")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # as open() would create it (mkstemp makes it private)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    _fsync_folder(folder)  # the rename itself survives a power loss


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", **kwargs):
    """``open(path, mode)`` ("w" text or "wb" bytes; ``kwargs`` as open takes them) through atomic_path."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'w' or 'wb', got {mode!r}")
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as f:
        yield f


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_folder(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_unfinished_write(name: str) -> bool:
    """Whether a file name is a temporary file of atomic_path (left by a killed process)."""
    return name.startswith(".") and TMP_SUFFIX in name
