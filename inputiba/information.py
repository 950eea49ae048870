"""Information measured without a bottleneck (the "Info-Attribution" README, §1).

A prior over each layer's activations is estimated over a dataset; the
information of one activation ``z`` of a sample is ``I(z) = -log2 p(z)``:
rare values carry many bits, common ones few. Two priors:

- :class:`HistogramPrior`: a histogram per channel or over the whole layer,
  with fixed bin edges from the data's range (a first pass for the minimum
  and maximum, a second for the counts; one pass when the range is given).
  ``p(z)`` is the probability mass of ``z``'s bin. A value outside the
  histogram's range, or in an empty bin, is counted as a bin with one count
  (``p = 1 / N``), as the README does.
- :class:`HalfGaussianPrior`: for post-ReLU layers, a point mass ``p0`` at
  zero plus a half-Gaussian of scale ``sigma`` for ``z > 0``:
  ``p(0) = p0`` and ``p(z) = (1 - p0) * sqrt(2 / pi) / sigma * exp(-z^2 / (2 sigma^2))``.
  For ``z > 0`` this is a density, so its information is differential (bits
  relative to a bin of width 1, and can be negative). The README's warning
  holds: outliers get extreme information.

:func:`information_map` turns a sample's activations into one map per layer,
``sum_c I(z_c)`` in bits per pixel at input resolution, and combines the
layers as the README does: each channel's information map is scaled to
``[0, 1]``, the scaled maps are summed over channels, resized to the input and
multiplied element-wise across layers (``combine="product"``, a unitless
score); ``combine="sum"`` adds the layers' bit maps instead (bits per pixel).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .bottleneck import capacity_to_saliency
from .hooks import preserved_state
from .io import atomic_path, load_weights_only
from .estimation import dataset_inputs
from .hooks import capture, resolve_layers
from .validation import check_image_batch, model_device

__all__ = ["HistogramPrior", "HalfGaussianPrior", "LayerPrior", "ActivationPrior", "InformationResult",
           "information_map", "COMBINATIONS"]

_FORMAT = "inputiba.activation_prior/1"

#: How the per-layer maps become one (see the module's notes).
COMBINATIONS = ("product", "sum")


def _groups(z: Tensor, per_channel: bool) -> Tensor:
    """``(B, C, *rest)`` activations as ``(G, N)``: one row per channel, or one row in all."""
    if per_channel:
        return z.transpose(0, 1).reshape(z.shape[1], -1)
    return z.reshape(1, -1)


def _per_element(param: Tensor, z: Tensor, per_channel: bool, layer: str) -> Tensor:
    """A per-group ``(G,)`` parameter shaped to broadcast against ``(B, C, *rest)`` activations."""
    if per_channel:
        if z.dim() < 2 or z.shape[1] != param.shape[0]:
            raise ValueError(f"the prior of layer {layer!r} has {param.shape[0]} channels, but the activations "
                             f"have shape {tuple(z.shape)}")
        return param.to(z.device).view(1, -1, *([1] * (z.dim() - 2)))
    return param.to(z.device).view(*([1] * z.dim()))


@dataclass
class HistogramPrior:
    """A histogram of one layer's activations, per channel (``G = C``) or over the layer (``G = 1``).

    Attributes:
        low: ``(G,)`` float64, lower edge of the first bin.
        high: ``(G,)`` float64, upper edge of the last bin (inclusive).
        counts: ``(G, n_bins)`` float64 counts.
        per_channel: whether each channel has its own histogram.
        layer: the layer's name, for messages.
    """

    low: Tensor
    high: Tensor
    counts: Tensor
    per_channel: bool
    layer: str = "layer"

    kind = "histogram"

    @property
    def n_bins(self) -> int:
        """Bins per histogram."""
        return self.counts.shape[1]

    def probabilities(self) -> Tensor:
        """``(G, n_bins)`` bin probabilities; each row sums to 1."""
        return self.counts / self.counts.sum(1, keepdim=True).clamp_min(1)

    def _bins(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Bin index of every value and whether it lies in the histogram's range."""
        z = z.to(torch.float64)
        low = _per_element(self.low, z, self.per_channel, self.layer)
        high = _per_element(self.high, z, self.per_channel, self.layer)
        index = ((z - low) / (high - low) * self.n_bins).floor().clamp(0, self.n_bins - 1).long()
        return index, (z >= low) & (z <= high)

    def log_prob(self, z: Tensor) -> Tensor:
        """``log p(z)`` in nats, the log-probability of each value's bin.

        Args:
            z: ``(B, C, *rest)`` activations of the layer.

        Returns:
            Tensor of ``z``'s shape, float32, ``<= 0``.
        """
        index, inside = self._bins(z)
        if self.per_channel:
            group = torch.arange(z.shape[1], device=z.device).view(1, -1, *([1] * (z.dim() - 2)))
        else:
            group = torch.zeros((1,) * z.dim(), dtype=torch.long, device=z.device)
        counts = self.counts.to(z.device)
        count = counts.flatten()[group * self.n_bins + index]
        count = torch.where(inside & (count > 0), count, torch.ones_like(count))
        total = counts.sum(1).clamp_min(1)[group]
        return (torch.log(count) - torch.log(total)).float()

    def state_dict(self) -> dict:
        """Plain tensors and values, loadable with ``weights_only=True``."""
        return {"kind": self.kind, "low": self.low.cpu(), "high": self.high.cpu(), "counts": self.counts.cpu(),
                "per_channel": self.per_channel}


@dataclass
class HalfGaussianPrior:
    """A point mass at zero plus a half-Gaussian for ``z > 0`` (post-ReLU layers).

    Attributes:
        p_zero: ``(G,)`` float64 probability of exactly zero, within
            ``[1 / (N + 1), N / (N + 1)]`` for ``N`` estimation values.
        sigma: ``(G,)`` float64 scale: ``sqrt(sum z^2 / N_{z > 0})``, the
            half-Gaussian's maximum-likelihood estimate.
        per_channel: whether each channel has its own parameters.
        layer: the layer's name, for messages.
    """

    p_zero: Tensor
    sigma: Tensor
    per_channel: bool
    layer: str = "layer"

    kind = "half_gaussian"

    def log_prob(self, z: Tensor) -> Tensor:
        """``log p0`` at zero, ``log((1 - p0) * halfnormal(z; sigma))`` above; nats.

        Args:
            z: ``(B, C, *rest)`` non-negative activations.

        Returns:
            Tensor of ``z``'s shape, float32.

        Raises:
            ValueError: ``z`` has negative values, which this prior gives no probability.
        """
        if (z < 0).any():
            raise ValueError(f"layer {self.layer!r} has negative activations (min {float(z.min()):.4g}); the "
                             "point-mass + half-Gaussian prior covers z >= 0 only: use a histogram prior")
        z = z.to(torch.float64)
        p0 = _per_element(self.p_zero, z, self.per_channel, self.layer)
        sigma = _per_element(self.sigma, z, self.per_channel, self.layer)
        positive = (torch.log1p(-p0) + 0.5 * math.log(2.0 / math.pi) - torch.log(sigma)
                    - z * z / (2.0 * sigma * sigma))
        return torch.where(z == 0, torch.log(p0).expand_as(z), positive).float()

    def state_dict(self) -> dict:
        """Plain tensors and values, loadable with ``weights_only=True``."""
        return {"kind": self.kind, "p_zero": self.p_zero.cpu(), "sigma": self.sigma.cpu(),
                "per_channel": self.per_channel}


LayerPrior = Union[HistogramPrior, HalfGaussianPrior]


class ActivationPrior:
    """Priors over the activations of several layers of one model.

    Build one with :meth:`estimate`; index it by layer name.

    Args:
        priors: ``{layer_name: HistogramPrior | HalfGaussianPrior}``.
        n_samples: inputs the estimate used.
    """

    def __init__(self, priors: Mapping[str, LayerPrior], n_samples: int) -> None:
        self.priors = dict(priors)
        self.n_samples = n_samples

    @property
    def layers(self) -> list[str]:
        """The layers with a prior."""
        return list(self.priors)

    def __getitem__(self, layer: str) -> LayerPrior:
        if layer not in self.priors:
            raise KeyError(f"no prior was estimated for layer {layer!r} (the prior has {self.layers}); "
                           "estimate it with ActivationPrior.estimate(model, layers, loader)")
        return self.priors[layer]

    def __contains__(self, layer: str) -> bool:
        return layer in self.priors

    @classmethod
    def estimate(cls, model: nn.Module, layers: Sequence[str | nn.Module], loader: Iterable, *,
                 kind: str = "histogram", per_channel: bool = True, n_bins: int = 100, n_samples: int = 1000,
                 value_range: tuple[float, float] | None = None, progress: bool = False) -> "ActivationPrior":
        """Estimate a prior for each layer over the inputs a loader yields.

        Nothing but running sums is kept: per group the minimum and maximum,
        then the bin counts (a histogram without ``value_range`` reads the
        loader twice, so it must be re-iterable: a list or a ``DataLoader``),
        or the counts and the sum of squares (half-Gaussian, one pass).

        Args:
            model: the model (eval mode, frozen, for the call).
            layers: dotted names or modules.
            loader: yields input tensors or ``(inputs, targets)`` pairs.
            kind: ``"histogram"`` or ``"half_gaussian"``.
            per_channel: one distribution per channel (dimension 1 of the
                layer's output) rather than one for the whole layer.
            n_bins: bins of each histogram.
            n_samples: inputs to use at most.
            value_range: ``(low, high)`` bin range for every histogram, which
                saves the first pass; values outside it are not counted.
            progress: show a progress bar.

        Raises:
            ValueError: an unknown kind, a loader that yields nothing or
                cannot be read twice, negative activations for the
                half-Gaussian prior, or non-finite inputs.
        """
        if kind not in ("histogram", "half_gaussian"):
            raise ValueError(f"kind must be 'histogram' or 'half_gaussian', got {kind!r}")
        if n_bins < 1:
            raise ValueError(f"n_bins must be positive, got {n_bins}")
        modules = resolve_layers(model, layers)
        if kind == "half_gaussian":
            sums = _Pass(model, modules, loader, n_samples, per_channel, progress, "estimate prior")
            priors = {name: _half_gaussian(name, *sums.totals[name], per_channel) for name in modules}
            return cls(priors, sums.seen)
        if value_range is None:
            if iter(loader) is loader:
                raise ValueError("a histogram prior without value_range reads the loader twice (range, then "
                                 "counts); pass a re-iterable loader (a list or a DataLoader) or value_range=")
            ranges = _Pass(model, modules, loader, n_samples, per_channel, progress, "prior range", min_max=True)
            bounds = {name: ranges.totals[name] for name in modules}
        else:
            low, high = map(float, value_range)
            if not low < high:
                raise ValueError(f"value_range must be (low, high) with low < high, got {value_range}")
            bounds = None
        counts = _Pass(model, modules, loader, n_samples, per_channel, progress, "prior counts",
                       bins=n_bins, bounds=bounds, value_range=value_range)
        if bounds is not None and counts.seen != ranges.seen:
            raise ValueError(f"the loader gave {ranges.seen} inputs in the first pass but {counts.seen} in the "
                             "second; it must yield the same inputs each time")
        priors = {name: HistogramPrior(*counts.edges[name], counts.totals[name], per_channel, name)
                  for name in modules}
        return cls(priors, counts.seen)

    def save(self, path: str | os.PathLike) -> None:
        """Write the priors to ``path`` atomically (loadable with ``weights_only=True``)."""
        state = {"format": _FORMAT, "n_samples": self.n_samples,
                 "layers": {name: p.state_dict() for name, p in self.priors.items()}}
        with atomic_path(path) as tmp:
            torch.save(state, tmp)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ActivationPrior":
        """Read priors written by :meth:`save`.

        Raises:
            ValueError: the file is not a prior file.
        """
        state = load_weights_only(path, "an activation prior", "an activation-prior", _FORMAT)
        priors: dict[str, LayerPrior] = {}
        for name, s in state["layers"].items():
            if s["kind"] == "histogram":
                priors[name] = HistogramPrior(s["low"], s["high"], s["counts"], bool(s["per_channel"]), name)
            else:
                priors[name] = HalfGaussianPrior(s["p_zero"], s["sigma"], bool(s["per_channel"]), name)
        return cls(priors, int(state["n_samples"]))


class _Pass:
    """One pass over the data that keeps per-group sums of every layer's activations.

    ``min_max``: ``totals[name] = (low, high)``. ``bins``: ``totals[name]`` the
    ``(G, bins)`` counts and ``edges[name]`` the ``(low, high)`` used. Else
    ``totals[name] = (n, n_zero, n_positive, sum of squares, minimum)``.
    """

    def __init__(self, model: nn.Module, modules: Mapping[str, nn.Module], loader: Iterable, n_samples: int,
                 per_channel: bool, progress: bool, desc: str, *, min_max: bool = False, bins: int = 0,
                 bounds: Mapping[str, tuple[Tensor, Tensor]] | None = None,
                 value_range: tuple[float, float] | None = None) -> None:
        self.totals: dict[str, object] = {}
        self.edges: dict[str, tuple[Tensor, Tensor]] = {}
        self.seen = 0
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=n_samples, desc=desc, unit="sample")
        try:
            with torch.no_grad(), preserved_state(model):
                for x in dataset_inputs(loader, n_samples, model_device(model), "estimation inputs"):
                    outputs, _ = capture(model, modules, x)
                    for name, z in outputs.items():
                        g = _groups(z.to(torch.float64), per_channel)
                        if min_max:
                            self._min_max(name, g)
                        elif bins:
                            self._count(name, g, bins, bounds, value_range)
                        else:
                            self._moments(name, g)
                    self.seen += x.shape[0]
                    if bar is not None:
                        bar.update(x.shape[0])
        finally:
            if bar is not None:
                bar.close()
        if self.seen == 0:
            raise ValueError("the loader yielded no samples to estimate the prior from")

    def _min_max(self, name: str, g: Tensor) -> None:
        low, high = g.amin(1), g.amax(1)
        if name in self.totals:
            old_low, old_high = self.totals[name]
            low, high = torch.minimum(low, old_low), torch.maximum(high, old_high)
        self.totals[name] = (low, high)

    def _count(self, name: str, g: Tensor, bins: int, bounds, value_range) -> None:
        if name not in self.edges:
            if bounds is not None:
                low, high = bounds[name]
            else:
                low = torch.full((g.shape[0],), value_range[0], dtype=torch.float64, device=g.device)
                high = torch.full_like(low, value_range[1])
            # a constant group still needs a bin of non-zero width
            high = torch.where(high > low, high, low + 1e-6 * low.abs().clamp_min(1.0))
            self.edges[name] = (low, high)
            self.totals[name] = torch.zeros(g.shape[0], bins, dtype=torch.float64, device=g.device)
        low, high = self.edges[name]
        index = ((g - low[:, None]) / (high - low)[:, None] * bins).floor().clamp(0, bins - 1).long()
        inside = (g >= low[:, None]) & (g <= high[:, None])
        flat = (torch.arange(g.shape[0], device=g.device)[:, None] * bins + index)[inside]
        self.totals[name] += torch.bincount(flat, minlength=g.shape[0] * bins).view(-1, bins).to(torch.float64)

    def _moments(self, name: str, g: Tensor) -> None:
        positive = g > 0
        sums = (torch.full((g.shape[0],), float(g.shape[1]), dtype=torch.float64, device=g.device),
                (g == 0).sum(1).to(torch.float64), positive.sum(1).to(torch.float64),
                (g * g * positive).sum(1), g.amin(1))
        if name in self.totals:
            old = self.totals[name]
            sums = tuple(a + b for a, b in zip(old[:4], sums[:4])) + (torch.minimum(old[4], sums[4]),)
        self.totals[name] = sums


def _half_gaussian(name: str, n: Tensor, n_zero: Tensor, n_positive: Tensor, sumsq: Tensor, minimum: Tensor,
                   per_channel: bool) -> HalfGaussianPrior:
    if (minimum < 0).any():
        raise ValueError(f"layer {name!r} has negative activations (min {float(minimum.min()):.4g}); the point-mass "
                         "+ half-Gaussian prior is for post-ReLU layers: use kind='histogram'")
    p_zero = (n_zero / n).clamp(1.0 / (n + 1), n / (n + 1))
    sigma = torch.sqrt(sumsq.clamp_min(1e-5) / n_positive.clamp_min(1))
    return HalfGaussianPrior(p_zero, sigma, per_channel, name)


@dataclass
class InformationResult:
    """What :func:`information_map` computed, per input.

    Attributes:
        combined: ``(B, H, W)``: the product of the layers' ``[0, 1]``-scaled
            maps (unitless, ``combine="product"``) or the sum of ``maps``
            (bits per pixel, ``combine="sum"``).
        maps: ``{layer: (B, H, W)}`` bits per pixel, ``sum_c I(z_c)`` at input
            resolution with the total kept.
        information: ``{layer: (B, C, h, w)}`` ``-log2 p(z)`` per activation, bits.
        combine: the rule used for ``combined``.
    """

    combined: Tensor
    maps: dict[str, Tensor]
    information: dict[str, Tensor]
    combine: str


def information_map(model: nn.Module, layers: Sequence[str | nn.Module] | None, prior: ActivationPrior,
                    inputs: Tensor, combine: str = "product") -> InformationResult:
    """The information of a sample's activations under a prior, per layer and combined.

    Args:
        model: the model the prior was estimated for.
        layers: the layers to read (``None``: every layer of ``prior``); each
            must give ``(B, C, h, w)`` maps.
        prior: an :class:`ActivationPrior` holding each layer.
        inputs: ``(B, C, H, W)`` float images.
        combine: ``"product"`` (the README's rule) or ``"sum"``.

    Returns:
        An :class:`InformationResult` on the model's device.

    Raises:
        ValueError: an unknown layer, a layer without a prior, a layer that
            gives no ``(C, h, w)`` map, or non-finite inputs.
    """
    if combine not in COMBINATIONS:
        raise ValueError(f"combine must be one of {COMBINATIONS}, got {combine!r}")
    if not isinstance(prior, ActivationPrior):
        raise TypeError(f"prior must be an ActivationPrior (see ActivationPrior.estimate), got {type(prior).__name__}")
    check_image_batch(inputs, "information_map")
    modules = resolve_layers(model, prior.layers if layers is None else layers)
    missing = [name for name in modules if name not in prior]
    if missing:
        raise ValueError(f"no prior was estimated for layer(s) {missing}; the prior holds {prior.layers}")
    x = inputs.to(model_device(model))
    with torch.no_grad(), preserved_state(model):
        outputs, _ = capture(model, modules, x)
    size = tuple(x.shape[-2:])
    maps, information, scaled = {}, {}, []
    for name, z in outputs.items():
        if z.dim() != 4:
            raise ValueError(f"layer {name!r} gives activations of shape {tuple(z.shape)}, not (B, C, h, w) maps")
        nats = -prior[name].log_prob(z)
        information[name] = nats / math.log(2.0)
        maps[name] = capacity_to_saliency(nats, size)
        if combine == "product":
            scaled.append(_scaled_sum(information[name], size))
    if combine == "product":
        combined = torch.stack(scaled).prod(0)
    else:
        combined = torch.stack(list(maps.values())).sum(0)
    return InformationResult(combined, maps, information, combine)


def _scaled_sum(bits: Tensor, size: tuple[int, int]) -> Tensor:
    """Each ``(B, C, h, w)`` channel map scaled to ``[0, 1]`` (a constant one to 0), summed, resized: ``(B, H, W)``."""
    flat = bits.flatten(2)
    low, high = flat.amin(2, keepdim=True), flat.amax(2, keepdim=True)
    span = high - low
    scaled = torch.where(span > 0, (flat - low) / span.clamp_min(1e-12), torch.zeros_like(flat))
    summed = scaled.view_as(bits).sum(1, keepdim=True)
    if tuple(summed.shape[-2:]) != size:
        summed = F.interpolate(summed, size=size, mode="bilinear", align_corners=False)
    return summed[:, 0]
