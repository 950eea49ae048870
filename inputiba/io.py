"""Writing result files atomically, so an interrupted run never leaves half a file."""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Iterator

import numpy as np

__all__ = ["atomic_path", "save_npy"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[str]:
    """Yield a temporary file name beside ``path``; rename it to ``path`` on success.

    The folder is created if needed. If the block raises, the temporary file
    is removed and ``path`` is untouched.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".", suffix=suffix)
    os.close(fd)
    try:
        yield tmp
        # mkstemp makes the file private; give it the permissions open() would
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_npy(path: str | os.PathLike, array) -> None:
    """Save an array (or tensor) as ``.npy``, atomically, as float data."""
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, np.asarray(array))
