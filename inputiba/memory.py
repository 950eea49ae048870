"""Will a run fit? An estimate of the peak memory of the stages, checked before they start.

The estimate counts what dominates: the activations the network keeps for the
backward pass, times the rows that run at once, plus the GAN critics'
parameters, gradients and optimiser state. Activations per row are measured,
not guessed: one input runs through the network with a hook on every leaf
module that adds up the bytes of its outputs. The estimate is a lower bound of
the true peak (temporary buffers are not counted), so a refused run would
certainly not have fitted; a run that passes can still be tight.

Free memory is what the device reports: ``torch.cuda.mem_get_info`` on a GPU,
``MemAvailable`` of ``/proc/meminfo`` on a Linux CPU (elsewhere nothing is
checked).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

__all__ = ["activation_bytes", "free_bytes", "check_fits", "GiB"]

GiB = 1024 ** 3


def activation_bytes(model: nn.Module, run: Callable[[], object]) -> int:
    """Bytes of the outputs of every leaf module of ``model`` while ``run()`` runs (no gradient).

    Outputs that are their input, rewritten in place (``ReLU(inplace=True)``),
    are not counted.
    """
    total = 0

    def count(module, args, output):
        nonlocal total
        inputs = {a.data_ptr() for a in args if isinstance(a, Tensor)}
        for value in (output if isinstance(output, (tuple, list)) else (output,)):
            if isinstance(value, Tensor) and value.data_ptr() not in inputs:  # in-place ops allocate nothing
                total += value.numel() * value.element_size()

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    return total


def free_bytes(device: torch.device | str) -> int | None:
    """Memory free for the run on ``device``, or ``None`` where it cannot be read."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "cpu":
        try:
            with open("/proc/meminfo", encoding="ascii") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def check_fits(need: int, device: torch.device | str, what: str, advice: str) -> None:
    """Raise ``MemoryError`` naming ``what`` and ``advice`` when ``need`` bytes exceed the free memory."""
    free = free_bytes(device)
    if free is not None and need > free:
        raise MemoryError(f"{what} needs at least {need / GiB:.1f} GiB but {free / GiB:.1f} GiB are free "
                          f"on {device}; {advice}")
