"""Mixed precision for the bottleneck fits: the network in bfloat16 (or float16), the mask in float32.

A fit's time goes into the network's forward and backward passes over the
noisy copies; the mask, its capacity and the optimiser are a small part. So
:func:`lowered` runs only the network under :func:`torch.autocast`, with the
weights of its convolutions and linear layers cast once per fit rather than
at every step (autocast would cast them on each call, since frozen weights
are not cached: 30 % of a VGG16 step on a CPU). The cast rounds exactly as
autocast does, so the outputs are the same as plain autocast's.

Settings (``IBAConfig.precision``): ``"float32"`` (no autocast),
``"bfloat16"``, ``"float16"`` and ``"auto"``: bfloat16 where the device runs
it natively (a CUDA GPU that supports it; a CPU with AVX-512 BF16 or AMX),
float32 elsewhere (float16 was not measured against float32, so ``"auto"``
never picks it).

On the cluttered benchmark and on FashionMNIST (64 inputs each) bfloat16
changed no score of IBA or InputIBA by more than 0.002, paired, and changed
the maps far less than another seed does (``benchmarks/RESULTS.md``, *Mixed
precision*). It is not the default all the same: kernels for batches of
other sizes round differently, and at bfloat16 that moves an input's map by
up to 1e-3 (1.5 % of the value) when its batch changes (float32: below
1e-5), which would break the promise that a map depends on its input,
target, settings and seed only.
Turn it on for throughput (``precision="bfloat16"`` or ``"auto"``, the
scripts' ``--precision``).
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
from torch import nn

__all__ = ["PRECISIONS", "compute_dtype", "lowered"]

#: The accepted values of ``IBAConfig.precision``.
PRECISIONS = ("float32", "bfloat16", "float16", "auto")

_DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}

# the layers whose weights autocast casts to the lower precision
_CAST_TYPES = (nn.modules.conv._ConvNd, nn.Linear)


def _native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def compute_dtype(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device``; ``None`` means float32 (no autocast)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    device = torch.device(device)
    if precision == "auto":
        return torch.bfloat16 if _native_bf16(device) else None
    dtype = _DTYPES[precision]
    if dtype is not None and device.type not in ("cpu", "cuda", "xpu", "mps"):
        raise ValueError(f"precision {precision!r} needs autocast, which {device.type!r} devices lack")
    return dtype


@contextlib.contextmanager
def lowered(module: nn.Module, precision: str, device: torch.device | str) -> Iterator[Callable[..., Any]]:
    """A way to call ``module`` at ``precision`` for the ``with`` block.

    Yields ``run`` with ``run(*args) == module(*args)`` computed under
    autocast with the convolution and linear weights cast once, here. The
    module itself is not changed (:func:`torch.func.functional_call` swaps
    the weights in for each call and back), and its hooks run as usual. At
    float32 ``run`` is ``module``.
    """
    dtype = compute_dtype(precision, device)
    if dtype is None:
        yield module
        return
    device_type = torch.device(device).type
    weights = {f"{prefix}.{name}" if prefix else name: p.detach().to(dtype)
               for prefix, sub in module.named_modules() if isinstance(sub, _CAST_TYPES)
               for name, p in sub.named_parameters(recurse=False) if p.is_floating_point()}

    def run(*args):
        with torch.autocast(device_type, dtype=dtype):
            return torch.func.functional_call(module, weights, args, strict=False)

    yield run
