"""Attribution metrics, vectorised: many perturbed states per forward pass.

One layout serves images and token sequences: inputs are ``(B, C, *S)`` and
attributions ``(B, *S)``. Images are ``(B, C, H, W)`` with ``S = (H, W)``;
token sequences are given channel-first, ``(B, D, T)`` embeddings with
``S = (T,)``. A *unit* is what a metric moves at once: one pixel or token, or
one tile (a square of pixels, a run of tokens).

Perturbation metrics build the states of all inputs and steps as tensors and
score them ``batch_size`` at a time through a :data:`Scorer`; there is no loop
over inputs or pixels. An ``nn.Module`` is scored as ``model(states)`` in eval
mode with frozen parameters and left as found; a scorer of one's own (a text
model fed at its embedding output) receives each state's owner as well.

- Insertion and deletion (Petsiuk et al. 2018, as InputIBA uses them): pixels
  moved in ``n_steps`` groups, most relevant first; area under the target's
  softmax probability.
- Degradation (IBA): tiles removed most relevant first (MoRF) and least
  relevant first (LeRF); area between the two curves.
- Sensitivity-N (Ancona et al. 2018): correlation of the attribution removed
  with the drop in the target logit, over random subsets of N units.
- Bounding box and effective heat ratio (EHR): how much of the attribution
  lies in annotated boxes; pure functions of the maps.
- Sanity check (Adebayo et al. 2018): cascading randomisation of the model's
  layers from the top, similarity of the maps to the original ones.

Attributions are used as float maps (never re-read from 8-bit images).
"""
from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .bottleneck import smooth_mask
from .hooks import features_at, preserved_state, replaced, resolve_layer
from .seeding import InputStreams, Seeds, input_seeds
from .validation import check_finite, resolve_targets, run_model

__all__ = [
    "Scorer",
    "CurveResult",
    "DegradationResult",
    "SensitivityResult",
    "SanityResult",
    "pixel_ranks",
    "perturbation_curve",
    "deletion",
    "insertion",
    "degradation",
    "sensitivity_n",
    "box_mask",
    "usable_boxes",
    "bbox_score",
    "EHR_WEIGHTINGS",
    "ehr",
    "ssim",
    "spearman",
    "sanity_check",
    "TextScorer",
    "movable_tokens",
    "token_deletion",
    "token_insertion",
    "token_evidence",
]

#: ``scorer(states, owners) -> logits``: ``states`` ``(N, C, *S)``, ``owners``
#: ``(N,)`` long, the index in the batch of the input each state was made
#: from; returns ``(N, K)`` logits.
Scorer = Callable[[Tensor, Tensor], Tensor]

#: Relative spread below which a vector counts as constant for a correlation.
_FLAT = 1e-6


@dataclass
class CurveResult:
    """Scores of a perturbation metric, per input.

    Attributes:
        auc: ``(B,)`` area under the curve.
        curve: ``(B, n_steps + 1)`` target probability after each step.
    """

    auc: Tensor
    curve: Tensor


@dataclass
class DegradationResult:
    """Degradation curves, normalised by the unperturbed target probability.

    Attributes:
        morf: ``(B, n_steps + 1)`` most relevant tiles removed first.
        lerf: ``(B, n_steps + 1)`` least relevant tiles removed first.
        score: ``(B,)`` area between LeRF and MoRF (higher is better).
    """

    morf: Tensor
    lerf: Tensor
    score: Tensor


@dataclass
class SensitivityResult:
    """Sensitivity-N per input and N.

    Attributes:
        correlation: ``(B, len(ns))`` Pearson correlation, NaN where undefined.
        ns: ``(len(ns),)`` long, the subset sizes in units.
    """

    correlation: Tensor
    ns: Tensor


@dataclass
class SanityResult:
    """Similarity of the maps to the original ones after each cut.

    Attributes:
        layers: the cut layers, in order; cut ``i`` has layers ``0..i`` randomised.
        ssim: ``(n_cuts, B)`` SSIM of each input's map to its original.
        spearman: ``(n_cuts, B)`` Spearman rank correlation, NaN for a constant map.
        original: ``(B, *S)`` the maps of the intact model (absolute values
            unless ``absolute=False``).
        maps: ``(n_cuts, B, *S)`` the maps after each cut, likewise.
    """

    layers: list[str]
    ssim: Tensor
    spearman: Tensor
    original: Tensor
    maps: Tensor


def pixel_ranks(attribution: Tensor, seed: int | None = None) -> Tensor:
    """``(B, *S)`` rank of each element, 0 for the most relevant.

    Ties are broken in a random order drawn from ``seed`` (one permutation of
    the element positions, the same for every input, so a map's ranks do not
    depend on its batch), or in raster order with ``seed=None``. A constant
    map is thus moved in a random order rather than from its top-left corner.
    """
    flat = attribution.flatten(1)
    n = flat.shape[1]
    if seed is None:
        order = torch.sort(flat, dim=1, descending=True, stable=True).indices
    else:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(flat.device)
        order = perm[torch.sort(flat[:, perm], dim=1, descending=True, stable=True).indices]
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(n, device=flat.device).expand_as(order))
    return ranks.view_as(attribution)


@contextlib.contextmanager
def _scoring(model: nn.Module | Scorer) -> Iterator[Scorer]:
    """The scorer of ``model``; a module is kept in eval mode, frozen, for the block."""
    if isinstance(model, nn.Module):
        with preserved_state(model):
            yield lambda states, owners: run_model(model, states)
    elif callable(model):
        yield model
    else:
        raise TypeError(f"model must be an nn.Module or a scorer(states, owners), got {type(model).__name__}")


@torch.no_grad()
def _target_scores(model: nn.Module | Scorer, n_states: int, build: Callable[[Tensor], tuple[Tensor, Tensor]],
                   target: Tensor, batch_size: int, probability: bool) -> Tensor:
    """``(n_states,)`` target softmax probability (or logit) of each state.

    ``build(index)`` turns ``(n,)`` state indices into ``(states, owners)``;
    it is called with ``batch_size`` consecutive indices at a time.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    out = None
    with _scoring(model) as score:
        for lo in range(0, n_states, batch_size):
            index = torch.arange(lo, min(lo + batch_size, n_states), device=target.device)
            states, owners = build(index)
            logits = score(states, owners)
            if logits.dim() != 2 or logits.shape[0] != len(index):
                raise ValueError(f"the model must return (N, K) logits for N states; got {tuple(logits.shape)} "
                                 f"for {len(index)} states")
            t = target[owners]
            if (t >= logits.shape[1]).any() or (t < 0).any():
                raise ValueError(f"target out of range for a model with {logits.shape[1]} classes")
            values = torch.softmax(logits, dim=1) if probability else logits
            if out is None:
                out = torch.empty(n_states, dtype=values.dtype, device=target.device)
            out[index] = values.gather(1, t.view(-1, 1)).squeeze(1)
    return out


def _checked(inputs: Tensor, attribution: Tensor, target: int | Tensor) -> tuple[Tensor, Tensor]:
    """``attribution`` on the inputs' device and ``(B,)`` long targets, after checking shapes."""
    if inputs.dim() < 3:
        raise ValueError(f"inputs must be (B, C, *S), e.g. (B, C, H, W) or (B, D, T); got {tuple(inputs.shape)}")
    B = inputs.shape[0]
    if B == 0:
        raise ValueError("the batch of inputs is empty")
    expected = (B, *inputs.shape[2:])
    if tuple(attribution.shape) != expected:
        raise ValueError(f"attribution {tuple(attribution.shape)} does not match inputs {tuple(inputs.shape)}: "
                         f"expected ({', '.join(map(str, expected))})")
    check_finite(attribution, "attribution")
    check_finite(inputs, "inputs")
    return attribution.to(inputs.device), resolve_targets(target, None, B, inputs.device)


def _broadcast(value: Tensor | float, inputs: Tensor, what: str) -> Tensor:
    """``value`` broadcast to the inputs' shape, dtype and device."""
    value = torch.as_tensor(value, dtype=inputs.dtype, device=inputs.device)
    try:
        return torch.broadcast_to(value, inputs.shape)
    except RuntimeError:
        raise ValueError(f"{what} of shape {tuple(value.shape)} does not broadcast to inputs "
                         f"{tuple(inputs.shape)}") from None


def _tiles(shape: Sequence[int], tile: int, device: torch.device) -> tuple[Tensor, int]:
    """``(*S)`` long tile of each element and the number of tiles.

    Tiles have ``tile`` elements along every dimension and are numbered in
    raster order; those at the far edges are partial when ``tile`` does not
    divide the size.
    """
    if tile < 1:
        raise ValueError(f"tile must be a positive number of elements, got {tile}")
    counts = [math.ceil(s / tile) for s in shape]
    grids = torch.meshgrid(*[torch.arange(s, device=device) // tile for s in shape], indexing="ij")
    index = torch.zeros(tuple(shape), dtype=torch.long, device=device)
    for grid, n in zip(grids, counts):
        index = index * n + grid
    return index, math.prod(counts)


def _per_unit(attribution: Tensor, unit_of: Tensor, n_units: int, mean: bool) -> Tensor:
    """``(B, U)`` attribution summed (or averaged) over the elements of each unit."""
    flat = unit_of.flatten()
    sums = torch.zeros(attribution.shape[0], n_units, dtype=attribution.dtype, device=attribution.device)
    sums.index_add_(1, flat, attribution.flatten(1))
    return sums / torch.bincount(flat, minlength=n_units).to(sums.dtype) if mean else sums


def _curves(model: nn.Module | Scorer, start: Tensor, end: Tensor, unit_ranks: Tensor, unit_of: Tensor,
            n_steps: int, target: Tensor, batch_size: int) -> Tensor:
    """``(B, R, n_steps + 1)`` target probability as units move from ``start`` to ``end``.

    After step ``k`` of order ``r`` the units ranked below
    ``round(k / n_steps * U)`` in ``unit_ranks[:, r]`` (all channels of all
    their elements) hold ``end``'s values and the others ``start``'s.

    Args:
        start, end: ``(B, C, *S)``.
        unit_ranks: ``(B, R, U)`` long, 0 moves first.
        unit_of: ``(*S)`` long, the unit of each element.
    """
    if n_steps < 1:
        raise ValueError(f"n_steps must be positive, got {n_steps}")
    B, R, U = unit_ranks.shape
    counts = torch.round(torch.arange(n_steps + 1, device=start.device) * (U / n_steps)).long()
    per_input = R * (n_steps + 1)
    spatial = (1,) * unit_of.dim()
    element_ranks = unit_ranks[..., unit_of]  # (B, R, *S)

    def build(index: Tensor) -> tuple[Tensor, Tensor]:
        b, r, k = index // per_input, index // (n_steps + 1) % R, index % (n_steps + 1)
        moved = element_ranks[b, r] < counts[k].view(-1, *spatial)
        return torch.where(moved.unsqueeze(1), end[b], start[b]), b

    return _target_scores(model, B * per_input, build, target, batch_size, probability=True).view(B, R, n_steps + 1)


def perturbation_curve(model: nn.Module | Scorer, inputs: Tensor, attribution: Tensor, target: int | Tensor,
                       start: Tensor, end: Tensor, n_steps: int = 100,
                       batch_size: int = 128, tie_seed: int | None = 0) -> CurveResult:
    """Move elements from ``start`` to ``end`` in order of attribution and score each state.

    After step ``k`` the ``round(k / n_steps * prod(S))`` most relevant
    elements (pixels or tokens, all channels) hold ``end``'s values and the
    others ``start``'s.

    Args:
        model: classifier (run in eval mode, left as found) or a :data:`Scorer`.
        inputs: ``(B, C, *S)``.
        attribution: ``(B, *S)`` float maps.
        target: ``(B,)`` class indices, or one int for all.
        start, end: ``(B, C, *S)`` states at step 0 and step ``n_steps``.
        n_steps: number of element groups.
        batch_size: states per forward pass.
        tie_seed: tied elements move in a random order drawn from this seed
            (:func:`pixel_ranks`); ``None`` moves them in raster order.

    Returns:
        A :class:`CurveResult`; the AUC is the trapezoid rule on ``[0, 1]``.
    """
    attribution, target = _checked(inputs, attribution, target)
    if start.shape != inputs.shape or end.shape != inputs.shape:
        raise ValueError(f"start {tuple(start.shape)} and end {tuple(end.shape)} must have the inputs' shape "
                         f"{tuple(inputs.shape)}")
    unit_of = torch.arange(attribution[0].numel(), device=inputs.device).view(attribution.shape[1:])
    ranks = pixel_ranks(attribution, tie_seed).flatten(1).unsqueeze(1)
    curve = _curves(model, start, end, ranks, unit_of, n_steps, target, batch_size)[:, 0]
    return CurveResult(torch.trapezoid(curve, dx=1.0 / n_steps, dim=1), curve)


def deletion(model: nn.Module | Scorer, inputs: Tensor, attribution: Tensor, target: int | Tensor,
             baseline: Tensor | float = 0.0, n_steps: int = 100, batch_size: int = 128,
             tie_seed: int | None = 0) -> CurveResult:
    """Deletion: most relevant elements first replaced by ``baseline`` (zeros by default).

    Shapes and ``tie_seed`` as in :func:`perturbation_curve`. Lower AUC is better.
    """
    end = _broadcast(baseline, inputs, "baseline")
    return perturbation_curve(model, inputs, attribution, target, inputs, end, n_steps, batch_size, tie_seed)


def _blurred(inputs: Tensor, sigma: float) -> Tensor:
    """Gaussian blur over the spatial dimensions of ``(B, C, H, W)`` or ``(B, D, T)`` inputs."""
    if inputs.dim() == 4:
        return smooth_mask(inputs, sigma)
    if inputs.dim() == 3:
        # a sequence is a one-row image; smoothing the single row leaves it as it is
        return smooth_mask(inputs.unsqueeze(-2), sigma).squeeze(-2)
    raise ValueError(f"the blurred baseline needs (B, C, H, W) or (B, D, T) inputs, got {tuple(inputs.shape)}")


def insertion(model: nn.Module | Scorer, inputs: Tensor, attribution: Tensor, target: int | Tensor,
              baseline: Tensor | float | None = None, blur_sigma: float = 5.0, n_steps: int = 100,
              batch_size: int = 128, tie_seed: int | None = 0) -> CurveResult:
    """Insertion: from ``baseline`` (a Gaussian blur of the input, sigma 5 elements, by default),
    most relevant elements first put back.

    Shapes and ``tie_seed`` as in :func:`perturbation_curve`; a sequence is
    blurred along its tokens. Higher AUC is better.
    """
    start = _blurred(inputs, blur_sigma) if baseline is None else _broadcast(baseline, inputs, "baseline")
    return perturbation_curve(model, inputs, attribution, target, start, inputs, n_steps, batch_size, tie_seed)


def degradation(model: nn.Module | Scorer, inputs: Tensor, attribution: Tensor, target: int | Tensor,
                tile: int = 8, n_steps: int = 100, baseline: Tensor | float | None = None,
                batch_size: int = 128, tie_seed: int | None = 0) -> DegradationResult:
    """Degradation (IBA): MoRF and LeRF curves of tiles and the area between them.

    The map is averaged per tile of ``tile`` elements along every spatial
    dimension (8x8 or 14x14 pixels in the paper; a run of ``tile`` tokens for
    a sequence); tiles at the far edges are partial when ``tile`` does not
    divide the size. Tiles are replaced by ``baseline`` most relevant first
    (MoRF) and least relevant first (LeRF), ``round(k / n_steps * n_tiles)``
    of them after step ``k``. Each curve is the target softmax probability
    divided by that of the unperturbed input, so both start at 1; an input
    whose target probability is 0 gives non-finite curves. Tied tiles move
    in a random order drawn from ``tie_seed`` (:func:`pixel_ranks`).

    Args:
        model: classifier or :data:`Scorer`.
        inputs: ``(B, C, *S)``.
        attribution: ``(B, *S)`` float maps.
        target: ``(B,)`` class indices, or one int for all.
        tile: tile side in elements.
        n_steps: number of steps of each curve.
        baseline: values of removed tiles, broadcast to the inputs; by
            default the per-channel mean of each input over ``S``.
        batch_size: states per forward pass.
        tie_seed: seed of the order among tied tiles; ``None``: raster order.

    Returns:
        A :class:`DegradationResult`; ``score`` is the trapezoid area of
        ``lerf - morf`` on ``[0, 1]``, in units of the unperturbed probability.
    """
    attribution, target = _checked(inputs, attribution, target)
    spatial = tuple(range(2, inputs.dim()))
    end = (inputs.mean(dim=spatial, keepdim=True).expand_as(inputs) if baseline is None
           else _broadcast(baseline, inputs, "baseline"))
    unit_of, n_tiles = _tiles(attribution.shape[1:], tile, inputs.device)
    means = _per_unit(attribution, unit_of, n_tiles, mean=True)
    ranks = torch.stack([pixel_ranks(means, tie_seed), pixel_ranks(-means, tie_seed)], dim=1)
    curves = _curves(model, inputs, end, ranks, unit_of, n_steps, target, batch_size)
    curves = curves / curves[:, :, :1]
    morf, lerf = curves.unbind(1)
    return DegradationResult(morf, lerf, torch.trapezoid(lerf - morf, dx=1.0 / n_steps, dim=1))


def _pearson(x: Tensor, y: Tensor) -> Tensor:
    """Pearson correlation over the last dimension; NaN where ``x`` or ``y`` is constant.

    A vector counts as constant when its root-mean-square deviation is below
    ``1e-6`` of its largest magnitude: rounding noise of equal values is not a
    correlation.
    """
    xc = x - x.mean(-1, keepdim=True)
    yc = y - y.mean(-1, keepdim=True)
    sx, sy = xc.norm(dim=-1), yc.norm(dim=-1)
    r = ((xc * yc).sum(-1) / (sx * sy)).clamp(-1.0, 1.0)
    scale = math.sqrt(x.shape[-1])
    flat = (sx <= _FLAT * scale * x.abs().amax(-1)) | (sy <= _FLAT * scale * y.abs().amax(-1))
    return r.masked_fill(flat, float("nan"))


def sensitivity_n(model: nn.Module | Scorer, inputs: Tensor, attribution: Tensor, target: int | Tensor,
                  ns: Sequence[int] | Tensor | None = None, n_subsets: int = 100,
                  baseline: Tensor | float = 0.0, tile: int = 1, seed: Seeds = 0,
                  batch_size: int = 128) -> SensitivityResult:
    """Sensitivity-N: does the attribution of a set predict the logit drop when it is removed?

    For each input and each N, ``n_subsets`` random sets of N units (pixels
    or tokens, or tiles with ``tile > 1``) are drawn independently for every
    input and every N, and set to ``baseline``. The result is the Pearson
    correlation, over the subsets, between the sum of the attribution over the
    removed elements and the drop of the target *logit* from the unperturbed
    input.

    The correlation is undefined where either vector is constant over the
    subsets: at N = all units (every subset is the whole input), for a
    constant map, or for a model that ignores the removed units. It is NaN
    there; average with ``torch.nanmean``. The default ``ns`` stop at 80 % of
    the units and so avoid the first case.

    Each input's subsets are drawn from its own CPU stream
    (:mod:`inputiba.seeding`), in order of N and subset, so they do not
    depend on the other inputs, ``batch_size`` or the device.

    Args:
        model: classifier or :data:`Scorer`.
        inputs: ``(B, C, *S)``.
        attribution: ``(B, *S)`` float maps.
        target: ``(B,)`` class indices, or one int for all.
        ns: subset sizes in units, each in ``[1, n_units]``; by default 10
            points log-spaced from 1 to 80 % of the units, rounded, duplicates
            dropped.
        n_subsets: random subsets per input and N.
        baseline: value of removed elements, broadcast to the inputs.
        tile: unit side in elements, as in :func:`degradation`.
        seed: seed of the subsets: an int (input ``i`` gets
            ``input_seed(seed, i)``) or one seed per input.
        batch_size: states per forward pass.

    Returns:
        A :class:`SensitivityResult` with ``(B, len(ns))`` correlations.
    """
    attribution, target = _checked(inputs, attribution, target)
    if n_subsets < 2:
        raise ValueError(f"n_subsets must be at least 2 for a correlation, got {n_subsets}")
    B = inputs.shape[0]
    unit_of, n_units = _tiles(attribution.shape[1:], tile, inputs.device)
    if ns is None:
        ns = torch.logspace(0, math.log10(0.8 * n_units), 10, dtype=torch.float64).round().long()
        ns = ns.clamp(1, n_units).unique()
    ns = torch.as_tensor(ns, dtype=torch.long).reshape(-1).to(inputs.device)
    if ns.numel() == 0 or (ns < 1).any() or (ns > n_units).any():
        raise ValueError(f"each N must lie in [1, {n_units}] units, got {ns.tolist()}")
    end = _broadcast(baseline, inputs, "baseline")
    mass = _per_unit(attribution, unit_of, n_units, mean=False)
    n_ns = ns.numel()
    per_input = n_ns * n_subsets
    streams = InputStreams(input_seeds(seed, B), "cpu", "sensitivity_n")
    removed_mass = torch.empty(B * per_input, dtype=mass.dtype, device=inputs.device)

    def build(index: Tensor) -> tuple[Tensor, Tensor]:  # rows come in increasing order
        b, j = index // per_input, index // n_subsets % n_ns
        keys = torch.cat([torch.rand(int((b == i).sum()), n_units, generator=streams.generators[i])
                          for i in b.unique().tolist()]).to(inputs.device)
        removed = pixel_ranks(keys) < ns[j].view(-1, 1)
        removed_mass[index] = (removed * mass[b]).sum(1)
        gone = removed[:, unit_of].unsqueeze(1)
        return torch.where(gone, end[b], inputs[b]), b

    full = _target_scores(model, B, lambda index: (inputs[index], index), target, batch_size, probability=False)
    perturbed = _target_scores(model, B * per_input, build, target, batch_size, probability=False)
    drop = full.repeat_interleave(per_input) - perturbed
    correlation = _pearson(removed_mass.view(B, n_ns, n_subsets), drop.view(B, n_ns, n_subsets).to(mass.dtype))
    return SensitivityResult(correlation, ns)


def box_mask(boxes: Tensor | Sequence, shape: tuple[int, int]) -> Tensor:
    """Boolean mask of the union of each image's boxes.

    A box is ``(x0, y0, x1, y1)`` in pixel coordinates, ``x`` along the width
    (column) and ``y`` along the height (row), half-open like a slice: pixel
    ``(row, col)`` is inside when ``x0 <= col < x1`` and ``y0 <= row < y1``,
    so ``(0, 0, W, H)`` covers the image. (Convert Pascal VOC's 1-based
    inclusive corners as ``(xmin - 1, ymin - 1, xmax, ymax)``.)

    Args:
        boxes: ``(B, 4)`` or ``(B, K, 4)`` tensor, or a length-``B`` sequence
            whose items hold ``(K_i, 4)`` boxes (any ``K_i``, 0 included).
        shape: ``(H, W)`` of the images.

    Returns:
        ``(B, H, W)`` bool.
    """
    if isinstance(boxes, Tensor) and boxes.dim() in (2, 3) and boxes.shape[-1] == 4:
        padded = boxes.reshape(boxes.shape[0], -1, 4).to(torch.float64)
    else:
        per_image = [torch.as_tensor(b, dtype=torch.float64) for b in boxes]
        bad = [tuple(b.shape) for b in per_image if b.numel() and (b.dim() == 0 or b.shape[-1] != 4)]
        if bad:
            raise ValueError(f"boxes must be (x0, y0, x1, y1) rows, got shapes {bad}")
        per_image = [b.reshape(-1, 4) for b in per_image]
        k = max([len(b) for b in per_image] + [1])
        # empty (0, 0, 0, 0) boxes pad the images with fewer boxes
        padded = torch.zeros(len(per_image), k, 4, dtype=torch.float64)
        for i, b in enumerate(per_image):
            padded[i, :len(b)] = b
    x0, y0, x1, y1 = padded.unbind(-1)
    if ((x1 < x0) | (y1 < y0)).any():
        raise ValueError("a box has x1 < x0 or y1 < y0; boxes are (x0, y0, x1, y1), not (x, y, w, h)")
    H, W = shape
    cols = torch.arange(W, dtype=torch.float64, device=padded.device)
    rows = torch.arange(H, dtype=torch.float64, device=padded.device)
    in_cols = (cols >= x0.unsqueeze(-1)) & (cols < x1.unsqueeze(-1))  # (B, K, W)
    in_rows = (rows >= y0.unsqueeze(-1)) & (rows < y1.unsqueeze(-1))  # (B, K, H)
    return (in_rows.unsqueeze(-1) & in_cols.unsqueeze(-2)).any(dim=1)


def usable_boxes(box_mask: Tensor, max_fraction: float = 1 / 3) -> Tensor:
    """``(B,)`` bool: the boxes of ``(B, *S)`` masks cover some but at most ``max_fraction`` of the input.

    The papers score only images whose boxes cover at most a third of the
    image: a large box is hit by any map.
    """
    fraction = box_mask.flatten(1).float().mean(1)
    return (fraction > 0) & (fraction <= max_fraction)


def _check_maps_and_boxes(attribution: Tensor, box_mask: Tensor) -> Tensor:
    """``box_mask`` as bool on the attribution's device, after checking both."""
    if attribution.dim() < 2 or attribution.shape[0] == 0:
        raise ValueError(f"attribution must be a non-empty batch of maps (B, *S), got {tuple(attribution.shape)}")
    if box_mask.shape != attribution.shape:
        raise ValueError(f"box_mask {tuple(box_mask.shape)} does not match attribution {tuple(attribution.shape)}")
    check_finite(attribution, "attribution")
    box = box_mask.to(attribution.device, torch.bool)
    empty = ~box.flatten(1).any(1)
    if empty.any():
        raise ValueError(f"inputs {empty.nonzero().flatten().tolist()} have no box pixels")
    return box


def bbox_score(attribution: Tensor, box_mask: Tensor) -> Tensor:
    """Bounding-box accuracy (IBA): fraction of the ``n`` highest-attributed elements inside the box(es).

    ``n`` is the number of elements in the box(es). Elements tied with the
    ``n``-th highest value share the places left among them equally, so the
    score does not depend on where tied elements lie: a constant map scores
    ``n / N`` (the box's share of the ``N`` elements) wherever the box is.

    Args:
        attribution: ``(B, *S)`` float maps.
        box_mask: ``(B, *S)`` bool, e.g. from :func:`box_mask`; every input
            needs at least one element in it.

    Returns:
        ``(B,)`` in ``[0, 1]``; 1 when the top ``n`` fill the box.
    """
    box = _check_maps_and_boxes(attribution, box_mask).flatten(1)
    flat = attribution.flatten(1)
    n = box.sum(1, keepdim=True)
    nth = flat.sort(dim=1, descending=True).values.gather(1, n - 1)
    above = flat > nth
    tied = flat == nth
    places = (n - above.sum(1, keepdim=True)).to(torch.float64)
    credit = above.to(torch.float64) + tied * (places / tied.sum(1, keepdim=True))
    return ((credit * box).sum(1) / n.squeeze(1)).to(attribution.dtype)


#: How :func:`ehr` weighs the elements of a bin.
EHR_WEIGHTINGS = ("heat", "count", "heat_share")


def ehr(attribution: Tensor, box_mask: Tensor, weighting: str = "heat") -> Tensor:
    """Effective heat ratio (InputIBA): how much of the hottest heat lies in the box(es), over thresholds.

    The map is scaled to ``[0, 1]`` by its maximum, and elements below 0.1
    (negative ones too) set to 0. For ``q = 0, 0.1, ..., 1`` the threshold is
    ``t = min(quantile_q(non-zero heat), 0.99)`` (linear interpolation) and
    the bin ``{heat >= t}``. The ratio of a bin is, by ``weighting``:

    - ``"heat"`` (the paper's and the original code's EHR): the heat inside
      the box(es) divided by the *number of elements* in the bin,
      ``sum(heat on bin & box) / |bin|``;
    - ``"count"`` (the paper's unweighted variant): ``|bin & box| / |bin|``;
    - ``"heat_share"``: the heat inside divided by the bin's *heat*,
      ``sum(heat on bin & box) / sum(heat on bin)``, 1 exactly when all heat
      above ``0.1`` lies in the box. Not the published metric: it rewards a
      map for the share of its heat in the box rather than for heat that is
      both high and in the box.

    EHR is the trapezoid area of the ratio over ``q``.

    Args:
        attribution: ``(B, *S)`` float maps, higher is more relevant.
        box_mask: ``(B, *S)`` bool; every input needs at least one element in it.
        weighting: one of :data:`EHR_WEIGHTINGS`.

    Returns:
        ``(B,)`` in ``[0, 1]``; NaN for a map without positive values.
    """
    if weighting not in EHR_WEIGHTINGS:
        raise ValueError(f"weighting must be one of {', '.join(EHR_WEIGHTINGS)}; got {weighting!r}")
    box = _check_maps_and_boxes(attribution, box_mask).flatten(1)
    heat = attribution.flatten(1).to(torch.float64)
    peak = heat.amax(1, keepdim=True)
    heat = heat / torch.where(peak > 0, peak, torch.full_like(peak, float("nan")))  # NaN: no positive heat
    heat = torch.where(heat >= 0.1, heat, torch.zeros_like(heat))
    q = torch.linspace(0, 1, 11, dtype=heat.dtype, device=heat.device)
    kept = torch.where(heat > 0, heat, torch.full_like(heat, float("nan")))
    thresholds = torch.nanquantile(kept, q, dim=1).T.clamp_max(0.99)  # (B, 11)
    in_bin = heat.unsqueeze(1) >= thresholds.unsqueeze(-1)  # (B, 11, N)
    inside = in_bin & box.unsqueeze(1)
    weight = heat.unsqueeze(1)
    if weighting == "count":
        ratios = inside.sum(-1) / in_bin.sum(-1)
    elif weighting == "heat":
        ratios = (weight * inside).sum(-1) / in_bin.sum(-1)
    else:
        ratios = (weight * inside).sum(-1) / (weight * in_bin).sum(-1)
    return torch.trapezoid(ratios, q, dim=1).to(attribution.dtype)


def _unit_range(maps: Tensor) -> Tensor:
    """Each map scaled to ``[0, 1]`` by its own min and max; a constant map becomes 0."""
    flat = maps.flatten(1)
    lo = flat.amin(1, keepdim=True)
    span = flat.amax(1, keepdim=True) - lo
    return ((flat - lo) / torch.where(span > 0, span, torch.ones_like(span))).view_as(maps)


def _ssim_window(side: int, size: int, sigma: float, like: Tensor) -> Tensor:
    """Gaussian taps, ``size`` long or the largest odd length that fits in ``side``."""
    size = min(size, side if side % 2 else side - 1)
    x = torch.arange(size, dtype=torch.float64) - size // 2
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).to(like)


def ssim(a: Tensor, b: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Mean structural similarity (Wang et al. 2004) of paired maps.

    Each map is first scaled to ``[0, 1]`` by its own min and max (data range
    1, ``C1 = 0.01**2``, ``C2 = 0.03**2``). Local statistics use a Gaussian
    window of ``window`` taps and ``sigma`` elements, separable, over the
    positions where it fits entirely (no padding); along a side shorter than
    the window it is cut to the longest odd length that fits. 1-D maps use
    the 1-D window.

    Args:
        a, b: ``(B, H, W)`` or ``(B, T)`` maps.

    Returns:
        ``(B,)``, 1 for maps equal up to an increasing affine map.
    """
    if a.shape != b.shape or a.dim() not in (2, 3) or a.shape[0] == 0:
        raise ValueError(f"ssim needs two equal (B, H, W) or (B, T) shapes, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    x, y = _unit_range(a.float()), _unit_range(b.float())
    if x.dim() == 2:
        x, y = x.unsqueeze(1), y.unsqueeze(1)
    rows = _ssim_window(x.shape[1], window, sigma, x).view(1, 1, -1, 1)
    cols = _ssim_window(x.shape[2], window, sigma, x).view(1, 1, 1, -1)

    def local(z: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(z.unsqueeze(1), rows), cols).squeeze(1)

    mx, my = local(x), local(y)
    vx, vy, cxy = local(x * x) - mx ** 2, local(y * y) - my ** 2, local(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    quality = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return quality.flatten(1).mean(1).to(a.dtype)


def _average_ranks(x: Tensor) -> Tensor:
    """``(B, N)`` ranks from 0 over the last dimension; ties share their mean rank."""
    ordered = x.sort(dim=1).values.contiguous()
    below = torch.searchsorted(ordered, x.contiguous(), side="left")
    upto = torch.searchsorted(ordered, x.contiguous(), side="right")
    return (below + upto - 1).to(torch.float64) / 2


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation of paired maps over all their elements.

    Tied values share their mean rank.

    Args:
        a, b: ``(B, *S)`` maps.

    Returns:
        ``(B,)`` in ``[-1, 1]``; NaN where a map is constant.
    """
    if a.shape != b.shape or a.dim() < 2 or a.shape[0] == 0:
        raise ValueError(f"spearman needs two equal (B, *S) shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    return _pearson(_average_ranks(a.flatten(1)), _average_ranks(b.flatten(1))).to(a.dtype)


def _resettable(module: nn.Module, name: str) -> list[nn.Module]:
    """The modules in ``module`` whose ``reset_parameters`` re-initialise all its parameters.

    Raises:
        ValueError: a module holds parameters but has no ``reset_parameters``,
            or there are no parameters at all.
    """
    found = []
    for sub_name, sub in module.named_modules():
        if next(sub.parameters(recurse=False), None) is None:
            continue
        if not callable(getattr(sub, "reset_parameters", None)):
            where = f"{name}.{sub_name}" if sub_name else name
            raise ValueError(f"layer {where!r} ({type(sub).__name__}) has parameters but no reset_parameters() "
                             "to re-initialise them")
        found.append(sub)
    if not found:
        raise ValueError(f"layer {name!r} has no parameters to randomise")
    return found


def sanity_check(model: nn.Module, explain: Callable[[nn.Module, Tensor, Tensor], Tensor], inputs: Tensor,
                 target: int | Tensor, layers: Sequence[str], seed: int = 0,
                 absolute: bool = True) -> SanityResult:
    """Cascading model-parameter randomisation (Adebayo et al. 2018).

    On a deep copy of ``model`` (the user's model is never touched), the
    ``layers`` are re-initialised one after the other, from the top, each cut
    adding to the earlier ones; after each cut the maps are recomputed and
    compared with those of the intact copy. A method passes when the
    similarity falls as more layers are randomised; one that ignores the
    model stays at 1.

    Re-initialisation calls ``reset_parameters()`` of every module with
    parameters in the cut layer (a fresh draw from the layer type's own
    initial distribution), under a forked RNG seeded with ``seed + i`` for cut ``i``, so the
    result is reproducible and the global RNG is left as found. A layer with
    parameters but no ``reset_parameters`` is refused.

    Args:
        model: the classifier.
        explain: ``explain(model, inputs, target) -> (B, *S)`` maps; called
            with the copy. A method whose earlier stages should keep the
            intact model (InputIBA's feature stage and GAN) closes over it and
            uses the given model only where it should be randomised.
        inputs: ``(B, C, *S)``.
        target: ``(B,)`` class indices, or one int for all; passed to
            ``explain`` as a ``(B,)`` long tensor.
        layers: dotted module names, cut in this order, e.g. VGG16's
            ``classifier.6, classifier.0, features.28, features.24, ...``.
        seed: seed of the re-initialisation.
        absolute: compare ``|map|`` (the sign of many methods is not stable
            under randomisation, and the paper reports rank correlation of
            absolute values); ``False`` compares the signed maps.

    Returns:
        A :class:`SanityResult`: SSIM (:func:`ssim`, per-map min-max
        normalised) and Spearman rank correlation (:func:`spearman`) of each
        cut's maps to the original ones, ``(n_cuts, B)``.

    Raises:
        ValueError: ``layers`` is empty or names an unknown layer, or a map
            has the wrong shape or non-finite values.
    """
    if inputs.dim() not in (3, 4) or inputs.shape[0] == 0:
        raise ValueError(f"inputs must be a non-empty (B, C, H, W) or (B, D, T) batch (SSIM needs 1-D or 2-D "
                         f"maps), got {tuple(inputs.shape)}")
    if len(layers) == 0:
        raise ValueError("layers is empty: name the layers to randomise, top first")
    B = inputs.shape[0]
    target = resolve_targets(target, None, B, inputs.device)
    randomised = copy.deepcopy(model)
    cuts = [resolve_layer(randomised, layer) for layer in layers]
    resets = [_resettable(module, name) for name, module in cuts]
    devices = sorted({p.device.index for p in randomised.parameters() if p.device.type == "cuda"})

    def maps() -> Tensor:
        out = explain(randomised, inputs, target)
        if tuple(out.shape) != (B, *inputs.shape[2:]):
            raise ValueError(f"explain returned maps of shape {tuple(out.shape)}, expected "
                             f"({', '.join(map(str, (B, *inputs.shape[2:])))})")
        check_finite(out, "maps")
        out = out.detach()
        return out.abs() if absolute else out

    original = maps()
    after = []
    for i, modules in enumerate(resets):
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed + i)
            for module in modules:
                module.reset_parameters()
        after.append(maps())
    return SanityResult([name for name, _ in cuts], torch.stack([ssim(original, m) for m in after]),
                        torch.stack([spearman(original, m) for m in after]), original, torch.stack(after))


class TextScorer:
    """A :data:`Scorer` for a text classifier, fed at its embedding layer's output.

    States are embeddings given channel-first, ``(N, D, T)``; state ``n`` is
    scored as the model on the token ids of its owner with the embedding
    layer's output replaced by the state, so everything after the embedding
    (lengths, padding) sees the owner's real text.

    Args:
        model: the text classifier (run in eval mode, frozen, left as found).
        ids: ``(B, T)`` token ids of the inputs.
        embedding: the embedding layer, by name or module.
    """

    def __init__(self, model: nn.Module, ids: Tensor, embedding: str | nn.Module = "embedding") -> None:
        if not isinstance(ids, Tensor) or ids.dim() != 2 or ids.is_floating_point():
            raise ValueError("ids must be a (B, T) integer tensor of token ids")
        self.model = model
        self.ids = ids
        self.embedding_name, self.embedding = resolve_layer(model, embedding)

    @torch.no_grad()
    def embeddings(self) -> Tensor:
        """``(B, D, T)`` the inputs' embeddings, channel-first as the metrics take them."""
        with preserved_state(self.model):
            return features_at(self.model, self.embedding, self.ids, self.embedding_name).transpose(1, 2)

    def __call__(self, states: Tensor, owners: Tensor) -> Tensor:
        """``(N, K)`` logits of the states ``(N, D, T)`` of inputs ``owners`` ``(N,)``."""
        with preserved_state(self.model), replaced(self.embedding, "output",
                                                   lambda original: states.transpose(1, 2)):
            return run_model(self.model, self.ids[owners])


def movable_tokens(ids: Tensor, pad_index: int = 0, special_ids: Sequence[int] = ()) -> Tensor:
    """``(B, T)`` bool: the tokens a text metric may move, neither padding nor special.

    Special tokens (a transformer's ``[CLS]``, ``[SEP]``) are part of every
    input's format, not of its text: the token metrics keep them as they are
    and do not count them in a text's length.

    Raises:
        ValueError: a text has no such token (naming it).
    """
    movable = ids != pad_index
    if len(special_ids):
        movable &= ~torch.isin(ids, torch.as_tensor(list(special_ids), dtype=ids.dtype, device=ids.device))
    empty = ~movable.any(dim=1)
    if empty.any():
        raise ValueError(f"text {int(empty.nonzero()[0])} has no token to score (only padding or special tokens)")
    return movable


def _token_ranks(attribution: Tensor, movable: Tensor, seed: int | None) -> Tensor:
    """``(B, T)`` rank of each token, 0 for the most relevant; tokens that may not move rank last.

    Ties are broken by one random key per position drawn from ``seed`` (the
    order of the text with ``None``). The first ``L`` keys do not depend on
    how many follow, so a text's ranks do not depend on the padding its
    batch gives it (:func:`pixel_ranks`' permutation of all ``T`` positions
    would).
    """
    T = attribution.shape[1]
    if seed is None:
        perm = torch.arange(T, device=attribution.device)
    else:
        keys = torch.rand(T, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        perm = torch.argsort(keys).to(attribution.device)
    scores = attribution.masked_fill(~movable, float("-inf"))
    order = perm[torch.sort(scores[:, perm], dim=1, descending=True, stable=True).indices]
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(T, device=order.device).expand_as(order))
    return ranks


def _token_curve(model: nn.Module, ids: Tensor, attribution: Tensor, target: int | Tensor, insert: bool,
                 baseline: float | Tensor, embedding: str | nn.Module, pad_index: int, special_ids: Sequence[int],
                 tokens_per_step: int, fraction: float, batch_size: int, tie_seed: int | None) -> CurveResult:
    scorer = TextScorer(model, ids, embedding)
    emb = scorer.embeddings()
    attribution, target = _checked(emb, attribution, target)
    if tokens_per_step < 1:
        raise ValueError(f"tokens_per_step must be positive, got {tokens_per_step}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    valid = movable_tokens(ids, pad_index, special_ids)
    lengths = valid.sum(dim=1)
    limit = torch.ceil(fraction * lengths).long().clamp_min(1)        # tokens moved in all
    steps = torch.ceil(limit / tokens_per_step).long()                # curve steps per text
    K = int(steps.max())
    ranks = _token_ranks(attribution, valid, tie_seed)
    counts = (torch.arange(K + 1, device=ids.device) * tokens_per_step).unsqueeze(0).clamp_max(limit.unsqueeze(1))
    base = _broadcast(baseline, emb, "baseline")
    base = torch.where(valid.unsqueeze(1), base, emb)  # padding and special tokens keep their embeddings
    start, end = (base, emb) if insert else (emb, base)

    def build(index: Tensor) -> tuple[Tensor, Tensor]:
        b, k = index // (K + 1), index % (K + 1)
        moved = ranks[b] < counts[b, k].unsqueeze(1)
        return torch.where(moved.unsqueeze(1), end[b], start[b]), b

    curve = _target_scores(scorer, ids.shape[0] * (K + 1), build, target, batch_size,
                           probability=True).view(-1, K + 1)
    k = torch.arange(K + 1, device=ids.device)
    curve = curve.masked_fill(k.unsqueeze(0) > steps.unsqueeze(1), float("nan"))
    # trapezoid over each text's own steps, on [0, 1]
    pairs = (curve[:, :-1] + curve[:, 1:]) / 2
    pairs = pairs.masked_fill(k[1:].unsqueeze(0) > steps.unsqueeze(1), 0.0)
    return CurveResult(pairs.sum(dim=1) / steps, curve)


def token_deletion(model: nn.Module, ids: Tensor, attribution: Tensor, target: int | Tensor,
                   embedding: str | nn.Module = "embedding", pad_index: int = 0, special_ids: Sequence[int] = (),
                   tokens_per_step: int = 2, fraction: float = 0.4, baseline: float | Tensor = 0.0,
                   batch_size: int = 128, tie_seed: int | None = 0) -> CurveResult:
    """Deletion for text (InputIBA's NLP protocol): the most relevant tokens' embeddings set to zero.

    ``tokens_per_step`` tokens move per step until ``ceil(fraction * length)``
    of a text's real tokens have moved (2 tokens and the first 40 % by
    default); padding and the ``special_ids`` tokens never move
    (:func:`movable_tokens`). The score is the target's softmax probability.

    Args:
        model: the text classifier (its embedding layer is named by ``embedding``).
        ids: ``(B, T)`` right-padded token ids.
        attribution: ``(B, T)`` token scores (values at padding are ignored).
        target: ``(B,)`` classes, or one int.
        special_ids: ids of special tokens, kept as they are and not counted.
        baseline: value of a deleted embedding (zeros), broadcast to ``(B, D, T)``.
        tie_seed: seed of the order among tied tokens (:func:`pixel_ranks`);
            ``None``: the order of the text.

    Returns:
        A :class:`CurveResult`: ``auc`` ``(B,)`` by the trapezoid rule over each
        text's own steps on ``[0, 1]``; ``curve`` ``(B, K + 1)`` with NaN
        after a text's last step (texts of different lengths take different
        numbers of steps). Lower AUC is better.
    """
    return _token_curve(model, ids, attribution, target, False, baseline, embedding, pad_index, special_ids,
                        tokens_per_step, fraction, batch_size, tie_seed)


def token_insertion(model: nn.Module, ids: Tensor, attribution: Tensor, target: int | Tensor,
                    embedding: str | nn.Module = "embedding", pad_index: int = 0, special_ids: Sequence[int] = (),
                    tokens_per_step: int = 2, fraction: float = 0.4, baseline: float | Tensor = 0.0,
                    batch_size: int = 128, tie_seed: int | None = 0) -> CurveResult:
    """Insertion for text: from zero embeddings, the most relevant tokens' embeddings put back.

    Padding and the ``special_ids`` tokens keep their embeddings throughout.

    Steps, arguments and result as in :func:`token_deletion`. Higher AUC is better.
    """
    return _token_curve(model, ids, attribution, target, True, baseline, embedding, pad_index, special_ids,
                        tokens_per_step, fraction, batch_size, tie_seed)


def token_evidence(attribution: Tensor, ids: Tensor, evidence: Tensor, pad_index: int = 0,
                   special_ids: Sequence[int] = (), word_ids: Tensor | None = None, reduce: str = "mean") -> Tensor:
    """Evidence precision for text: the share of the ``n`` top-scored words that are evidence.

    ``n`` is the number of a text's evidence words (the words that decide its
    label, known for generated data); it is :func:`bbox_score` on the words,
    ties shared fairly, with padding and special tokens never among the top.
    A text scores 1 when its evidence words are exactly its ``n`` highest.
    Without ``word_ids`` every token is a word; with them (a transformer's
    subwords) a word's score is its tokens' scores combined by ``reduce``,
    and it is evidence when one of its tokens is.

    Args:
        attribution: ``(B, T)`` token scores.
        ids: ``(B, T)`` token ids.
        evidence: ``(B, T)`` bool, true at evidence tokens; every text needs one.
        pad_index: the padding id.
        special_ids: ids of special tokens.
        word_ids: ``(B, T)`` long, the word of each token (``-1`` for special
            tokens and padding).
        reduce: ``"mean"``, ``"sum"`` or ``"max"`` of a word's token scores.

    Returns:
        ``(B,)`` in ``[0, 1]``.
    """
    if any(tuple(t.shape) != tuple(ids.shape) for t in (attribution, evidence) + (() if word_ids is None
                                                                                 else (word_ids,))):
        raise ValueError(f"attribution {tuple(attribution.shape)}, evidence {tuple(evidence.shape)} and word_ids "
                         f"must all be (B, T) as the ids {tuple(ids.shape)}")
    if reduce not in ("mean", "sum", "max"):
        raise ValueError(f"reduce must be 'mean', 'sum' or 'max', got {reduce!r}")
    check_finite(attribution, "attribution")
    movable = movable_tokens(ids, pad_index, special_ids)
    evidence = evidence.to(ids.device, torch.bool)
    if (evidence & ~movable).any():
        raise ValueError("evidence marks padding or special tokens")
    scores, valid = attribution, movable
    if word_ids is not None:
        words = word_ids.to(ids.device).masked_fill(~movable, -1)
        if (movable & (words < 0)).any():
            raise ValueError("word_ids give no word (-1) for a token of the text")
        index, keep = words.clamp_min(0), movable
        W = int(words.max()) + 1
        counts = torch.zeros(ids.shape[0], W, device=ids.device).scatter_add_(1, index, keep.float())
        valid = counts > 0
        values = attribution.to(torch.float64)
        if reduce == "max":
            scores = torch.full((ids.shape[0], W), float("-inf"), dtype=values.dtype, device=ids.device)
            scores = scores.scatter_reduce(1, index, values.masked_fill(~keep, float("-inf")), "amax")
        else:
            scores = torch.zeros(ids.shape[0], W, dtype=values.dtype, device=ids.device)
            scores = scores.scatter_add(1, index, values * keep)
            if reduce == "mean":
                scores = scores / counts.clamp_min(1)
        scores = scores.masked_fill(~valid, 0.0)
        evidence = torch.zeros(ids.shape[0], W, device=ids.device).scatter_add_(
            1, index, (evidence & keep).float()) > 0
    floor = scores.masked_fill(~valid, float("inf")).amin(dim=1, keepdim=True) - 1
    return bbox_score(torch.where(valid, scores, floor), evidence).to(attribution.dtype)
