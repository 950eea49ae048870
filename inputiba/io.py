"""Files: written atomically, so an interrupted run never leaves half a file, and read safely.

Every checkpoint-like file of the library is read by :func:`load_weights_only`
(``torch.load(..., weights_only=True)``: tensors and plain data, no code).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Iterator, Sequence, TypeVar

import numpy as np

T = TypeVar("T")

__all__ = ["atomic_path", "load_weights_only", "save_npy", "save_npz", "shard", "distributed_rank"]


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


def load_weights_only(path: str | os.PathLike, what: str, kind: str | None = None,
                      file_format: str | None = None, map_location: str | object = "cpu") -> object:
    """``torch.load(path, weights_only=True)`` with errors that name the file and what it should hold.

    Args:
        path: the file.
        what: what it should hold, for messages (``"a state dict"``).
        kind: with ``file_format``, the file kind for messages
            (``"a text-classifier"``).
        file_format: the value the file's ``"format"`` key must have, if any.
        map_location: where tensors are loaded.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file cannot be read (corrupt, or it holds code
            objects), or its ``"format"`` is not ``file_format``.
    """
    import torch

    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:
        raise ValueError(f"cannot read {what} from {path}: {err}") from err
    if file_format is not None and (not isinstance(state, dict) or state.get("format") != file_format):
        raise ValueError(f"{path} is not {kind or what} file (format {file_format})")
    return state


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


def save_npz(path: str | os.PathLike, **arrays) -> None:
    """Save several arrays (or tensors) in one ``.npz`` file, atomically, uncompressed."""
    plain = {k: v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)
             for k, v in arrays.items()}
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **plain)


def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """The items process ``rank`` of ``world_size`` handles: every ``world_size``-th.

    The shards of all ranks together hold every item exactly once.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of {world_size} processes")
    return list(items[rank::world_size])


def distributed_rank() -> tuple[int, int]:
    """``(rank, world_size)`` from the environment ``torchrun`` sets; ``(0, 1)`` alone."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
