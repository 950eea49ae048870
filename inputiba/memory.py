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

__all__ = ["activation_bytes", "free_bytes", "check_fits", "GiB", "CPU_STEP_BYTES", "default_max_batch"]

GiB = 1024 ** 3

#: On a CPU, the bytes of one step's noisy rows at the bottleneck up to which
#: explaining several inputs per call is faster than one at a time. Measured on
#: 2 cores (``benchmarks/RESULTS.md``, *Batches on a CPU*): VGG16 and ResNet-50
#: at 224 px (15 MiB per input at their preset layers) ran 1.3-1.7x slower per
#: image at batch 4-8 than at batch 1; at 112 px (4 MiB per input) batch 4 ran
#: 1.39x (VGG16) and 1.14x (ResNet-50) faster.
CPU_STEP_BYTES = 16 * 2 ** 20


def default_max_batch(device: torch.device | str, step_bytes: int, cap: int = 8) -> int:
    """Inputs explained per call when ``max_batch`` is ``None``.

    Args:
        device: where the model runs.
        step_bytes: bytes of one input's noisy rows at the bottleneck in one
            step (copies x elements x element size).
        cap: the most on any device.

    Returns:
        On a CPU the largest batch, at most ``cap``, whose rows stay within
        :data:`CPU_STEP_BYTES` (at least 1); elsewhere ``cap`` (GPUs gain
        from large batches; not measured in this project).
    """
    if torch.device(device).type != "cpu":
        return cap
    return max(1, min(cap, CPU_STEP_BYTES // max(1, step_bytes)))


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
