"""Files: written atomically, so an interrupted run never leaves half a file, and read safely.

Every checkpoint-like file of the library is read by :func:`load_weights_only`
(``torch.load(..., weights_only=True)``: tensors and plain data, no code).
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import sys
import tempfile
from typing import Iterator, Sequence, TypeVar

import numpy as np

T = TypeVar("T")

__all__ = ["atomic_path", "load_weights_only", "save_npy", "save_npz", "shard", "distributed_rank",
           "writable_folder", "FailureLog", "UsageError", "run_command"]


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
        reason = " ".join(str(err).split())[:200]
        if not reason or reason.isdigit():  # the unpickler names an opcode, not the problem
            reason = "the file was not written by torch.save"
        raise ValueError(f"cannot read {what} from {path}: not a PyTorch checkpoint of tensors and "
                         f"plain data (torch.load with weights_only=True said: {reason})") from err
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


def writable_folder(path: str | os.PathLike, what: str = "output folder") -> str:
    """Create ``path`` (and its parents) if needed and check that files can be written there.

    Raises:
        ValueError: it cannot be created or written, with the reason.
    """
    path = os.fspath(path)
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-test")
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        raise ValueError(f"cannot write to the {what} {path}: {err.strerror or err}; "
                         "choose another with --out") from None
    return path


class FailureLog:
    """The inputs a batch run could not process: ``<out>/failures.jsonl``, one JSON record per line.

    Each record holds the input's ``key`` (a relative path, a text's index)
    and the ``error``. The file is rewritten atomically at every change, so a
    killed run leaves it whole. Under ``torchrun`` every rank keeps its own
    file (``failures.rank<r>.jsonl``); :meth:`keys` reads them all.

    Args:
        folder: the run's output folder.
        rank: this process's rank; ``world``: the number of processes.
    """

    def __init__(self, folder: str | os.PathLike, rank: int = 0, world: int = 1) -> None:
        self.folder = os.fspath(folder)
        name = "failures.jsonl" if world == 1 else f"failures.rank{rank}.jsonl"
        self.path = os.path.join(self.folder, name)
        self.records = {r["key"]: r for r in self._read(self.path)}

    @staticmethod
    def _read(path: str) -> list[dict]:
        if not os.path.isfile(path):
            return []
        records = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError:
                        continue  # a foreign line: the next rewrite drops it
        return [r for r in records if isinstance(r, dict) and "key" in r]

    def keys(self) -> set[str]:
        """Keys recorded as failed by any rank's file in the folder."""
        found = set()
        for path in glob.glob(os.path.join(glob.escape(self.folder), "failures*.jsonl")):
            found |= {r["key"] for r in self._read(path)}
        return found

    def record(self, key: str, error: BaseException | str) -> None:
        """Record that ``key`` failed, with ``error``'s type and message."""
        message = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        self.records[key] = {"key": key, "error": " ".join(str(message).split())}
        self._write()

    def clear(self, key: str) -> None:
        """Forget an earlier failure of ``key`` (it has now succeeded)."""
        if self.records.pop(key, None) is not None:
            self._write()

    def _write(self) -> None:
        body = "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.records.values())
        with atomic_path(self.path, suffix=".jsonl") as tmp, open(tmp, "w", encoding="utf-8") as f:
            f.write(body)


class UsageError(Exception):
    """A mistake in how a command was called: reported in one line, exit status 2."""


#: Errors a command reports in one line (the message names the problem) rather than as a traceback.
REPORTED_ERRORS = (UsageError, ValueError, TypeError, OSError, RuntimeError, KeyError, MemoryError)


def run_command(main, argv, prog: str) -> int:
    """Run a command's ``main(argv)``; report user-facing errors in one line with exit status 2.

    ``--debug`` anywhere in ``argv`` (it is removed before ``main`` sees it)
    lets the traceback through instead.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    try:
        return main(argv) or 0
    except REPORTED_ERRORS as err:
        if debug:
            raise
        message = str(err) if not isinstance(err, KeyError) else f"missing key {err}"
        if isinstance(err, OSError) and err.filename and str(err.filename) not in message:
            message = f"{err.strerror or message}: {err.filename}"
        print(f"{prog}: error: {message} (--debug shows the traceback)", file=sys.stderr)
        return 2
