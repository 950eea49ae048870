"""Attribution metrics, vectorised: many perturbed states per forward pass.

Insertion and deletion (Petsiuk et al. 2018, as InputIBA uses them): pixels are
ranked by attribution and moved in ``n_steps`` equal groups, most relevant
first. Deletion replaces them by a baseline (zeros in normalised space);
insertion starts from a blurred image (Gaussian, sigma 5) and puts the original
pixels back. The score after each step is the target's softmax probability;
the metric is the area under that curve (trapezoid rule on ``[0, 1]``). Low
deletion and high insertion AUCs are good.

The states of all images and steps are built as tensors and scored in batches
of ``batch_size``; there is no loop over images or pixels. Attributions are
used as float maps (never re-read from 8-bit images).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .bottleneck import smooth_mask
from .hooks import preserved_state

__all__ = ["CurveResult", "pixel_ranks", "perturbation_curve", "deletion", "insertion"]


@dataclass
class CurveResult:
    """Scores of a perturbation metric, per input.

    Attributes:
        auc: ``(B,)`` area under the curve.
        curve: ``(B, n_steps + 1)`` target probability after each step.
    """

    auc: Tensor
    curve: Tensor


def pixel_ranks(attribution: Tensor) -> Tensor:
    """``(B, H, W)`` rank of each pixel, 0 for the most relevant; ties keep pixel order."""
    flat = attribution.flatten(1)
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return ranks.view_as(attribution)


@torch.no_grad()
def perturbation_curve(model: nn.Module, inputs: Tensor, attribution: Tensor, target: Tensor,
                       start: Tensor, end: Tensor, n_steps: int = 100,
                       batch_size: int = 128) -> CurveResult:
    """Move pixels from ``start`` to ``end`` in order of attribution and score each state.

    After step ``k`` the ``round(k / n_steps * H * W)`` most relevant pixels
    (all channels) hold ``end``'s values and the others ``start``'s.

    Args:
        model: classifier; run in eval mode, left as found.
        inputs: ``(B, C, H, W)``, only for shapes and device.
        attribution: ``(B, H, W)`` float maps.
        target: ``(B,)`` class indices.
        start, end: ``(B, C, H, W)`` images at step 0 and step ``n_steps``.
        n_steps: number of pixel groups.
        batch_size: states per forward pass.

    Returns:
        A :class:`CurveResult`.
    """
    B, C, H, W = inputs.shape
    if attribution.shape != (B, H, W):
        raise ValueError(f"attribution {tuple(attribution.shape)} does not match inputs {tuple(inputs.shape)}: "
                         f"expected ({B}, {H}, {W})")
    if n_steps < 1:
        raise ValueError(f"n_steps must be positive, got {n_steps}")
    ranks = pixel_ranks(attribution.to(inputs.device)).unsqueeze(1)  # (B, 1, H, W)
    counts = torch.round(torch.arange(n_steps + 1, device=inputs.device) * (H * W / n_steps)).long()
    # every (image, step) state, in flat order image-major
    pairs = torch.cartesian_prod(torch.arange(B, device=inputs.device), torch.arange(n_steps + 1, device=inputs.device))
    curve = torch.empty(B * (n_steps + 1), device=inputs.device)
    with preserved_state(model):
        for lo in range(0, pairs.shape[0], batch_size):
            b, k = pairs[lo:lo + batch_size].unbind(1)
            moved = ranks[b] < counts[k].view(-1, 1, 1, 1)
            states = torch.where(moved, end[b], start[b])
            probs = torch.softmax(model(states), dim=1)
            curve[lo:lo + len(b)] = probs.gather(1, target[b].view(-1, 1)).squeeze(1)
    curve = curve.view(B, n_steps + 1)
    return CurveResult(torch.trapezoid(curve, dx=1.0 / n_steps, dim=1), curve)


def deletion(model: nn.Module, inputs: Tensor, attribution: Tensor, target: Tensor,
             baseline: Tensor | float = 0.0, n_steps: int = 100, batch_size: int = 128) -> CurveResult:
    """Deletion: most relevant pixels first replaced by ``baseline`` (zeros by default).

    Lower AUC is better.
    """
    end = torch.broadcast_to(torch.as_tensor(baseline, dtype=inputs.dtype, device=inputs.device), inputs.shape)
    return perturbation_curve(model, inputs, attribution, target, inputs, end, n_steps, batch_size)


def insertion(model: nn.Module, inputs: Tensor, attribution: Tensor, target: Tensor,
              baseline: Tensor | None = None, blur_sigma: float = 5.0, n_steps: int = 100,
              batch_size: int = 128) -> CurveResult:
    """Insertion: from ``baseline`` (a Gaussian blur of the input, sigma 5, by default),
    most relevant pixels first put back. Higher AUC is better.
    """
    start = smooth_mask(inputs, blur_sigma) if baseline is None else torch.broadcast_to(
        torch.as_tensor(baseline, dtype=inputs.dtype, device=inputs.device), inputs.shape)
    return perturbation_curve(model, inputs, attribution, target, start, inputs, n_steps, batch_size)
