"""Checks of user input that fail early with a message naming the problem."""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

__all__ = ["check_settings", "check_model", "with_overrides", "slice_targets", "model_device", "batch_inputs", "check_finite", "check_image_batch", "resolve_targets", "run_model",
           "rejected_input", "MODEL_ERRORS"]

#: Exceptions a model raises when it cannot process an input of a given shape.
MODEL_ERRORS = (RuntimeError, ValueError, IndexError)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU if it has none)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def batch_inputs(batch: Any) -> Tensor:
    """The input tensor of a loader's batch: the batch itself or its first item."""
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], Tensor):
        return batch[0]
    raise TypeError(
        "a loader must yield tensors or (inputs, targets) pairs, got "
        f"{type(batch).__name__}")


def check_finite(x: Tensor, what: str = "inputs") -> None:
    """Raise ``ValueError`` if ``x`` holds NaN or infinite values."""
    if x.is_floating_point() and not torch.isfinite(x).all():
        n_nan = int(torch.isnan(x).sum())
        n_inf = int(torch.isinf(x).sum())
        raise ValueError(f"{what} contain {n_nan} NaN and {n_inf} infinite values")


def check_image_batch(inputs: Tensor, who: str) -> None:
    """Raise ``ValueError`` unless ``inputs`` is a non-empty, finite ``(B, C, H, W)`` float batch.

    ``who`` names the method in the message (``"MultiIBA explains ..."``).
    """
    if not isinstance(inputs, Tensor) or inputs.dim() != 4 or not inputs.is_floating_point():
        got = f"{tuple(inputs.shape)} {inputs.dtype}" if isinstance(inputs, Tensor) else type(inputs).__name__
        raise ValueError(f"{who} explains float image batches of shape (B, C, H, W); got {got}")
    if inputs.shape[0] == 0:
        raise ValueError("inputs hold no samples (batch size 0)")
    check_finite(inputs)


def rejected_input(model: nn.Module, x: Tensor, err: Exception) -> ValueError:
    """The error for a model that failed on inputs ``x``, naming their shape."""
    return ValueError(f"model {type(model).__name__} rejected inputs of shape {tuple(x.shape)}: {err}")


def run_model(model: nn.Module, x: Tensor) -> Tensor:
    """``model(x)``, with a failure turned into an error that names the input shape."""
    try:
        return model(x)
    except MODEL_ERRORS as err:
        raise rejected_input(model, x, err) from err


def resolve_targets(target: int | Sequence[int] | Tensor | None, logits: Tensor | None,
                    batch_size: int, device: torch.device, n_classes: int | None = None) -> Tensor:
    """One class index per input as a ``(B,)`` long tensor.

    ``None`` takes the predicted class from ``logits``; an int applies to every
    input; a sequence or tensor must hold exactly one index per input. Indices
    are checked against the number of classes: ``n_classes``, else that of
    ``logits`` when given.
    """
    if target is None:
        if logits is None:
            raise ValueError("target=None needs the model's outputs to pick the predicted class")
        return logits.argmax(dim=1).to(device)
    if isinstance(target, bool):
        raise TypeError("target must be an int, a sequence of ints or a tensor, not bool")
    if isinstance(target, int):
        t = torch.full((batch_size,), target, dtype=torch.long, device=device)
    else:
        t = torch.as_tensor(target, device=device)
        if t.is_floating_point() or t.is_complex():
            raise TypeError(f"targets must be integer class indices, got dtype {t.dtype}")
        t = t.long().reshape(-1)
        if t.numel() != batch_size:
            raise ValueError(f"got {t.numel()} targets for {batch_size} inputs; give one per input or one int")
    if n_classes is None and logits is not None:
        n_classes = logits.shape[1]
    if n_classes is not None:
        bad = (t < 0) | (t >= n_classes)
        if bad.any():
            raise ValueError(
                f"target {t[bad][0].item()} is out of range for a model with {n_classes} classes")
    return t


def check_model(model: object) -> None:
    """Raise ``TypeError`` unless ``model`` is an ``nn.Module``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")


def with_overrides(config: Any, overrides: dict, what: str) -> Any:
    """``dataclasses.replace(config, **overrides)``, naming any override that is not a field.

    Raises:
        TypeError: unknown setting names (with the known ones listed).
    """
    from dataclasses import fields, replace

    known = {f.name for f in fields(config)}
    unknown = set(overrides) - known
    if unknown:
        raise TypeError(f"unknown {what} settings {sorted(unknown)}; known: {sorted(known)}")
    return replace(config, **overrides)


def check_settings(settings: object, positive: Sequence[str] = (), non_negative: Sequence[str] = ()) -> None:
    """Raise ``ValueError`` naming the first setting out of its range.

    ``positive`` names must be ``> 0``, ``non_negative`` names ``>= 0``.
    """
    for name in positive:
        if not getattr(settings, name) > 0:
            raise ValueError(f"{name} must be positive, got {getattr(settings, name)}")
    for name in non_negative:
        if not getattr(settings, name) >= 0:
            raise ValueError(f"{name} must be non-negative, got {getattr(settings, name)}")


def slice_targets(target, sl: slice | Tensor, batch_size: int, custom_loss: bool = False):
    """The part of ``target`` that belongs to the inputs ``sl`` (a slice or index tensor) of a batch.

    Tensors (and, for the default loss, sequences) with one entry per input
    are sliced; an int, ``None`` or anything else applies to every input. A
    custom loss's sequence target is passed whole, since its layout is the
    loss's own.
    """
    if isinstance(target, Tensor):
        if target.dim() > 0 and target.shape[0] == batch_size:
            return target[sl.to(target.device) if isinstance(sl, Tensor) else sl]
        return target
    if (not custom_loss and isinstance(target, Sequence) and not isinstance(target, str)
            and len(target) == batch_size):
        items = list(target)
        return [items[i] for i in sl.tolist()] if isinstance(sl, Tensor) else items[sl]
    return target
