"""Per-element statistics of a layer's output over a dataset.

Statistics are merged batch by batch with Chan's parallel formula, in float64
(each batch's own sums in float32, around its mean),
with a count per element, so that masked-out positions (padding) can be left
out and no Python loop ever runs over samples.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Mapping

import torch
from torch import Tensor, nn

from .hooks import capture, preserved_state
from .io import atomic_path, load_weights_only
from .validation import batch_inputs, check_finite, model_device

__all__ = ["Moments", "batch_moments", "merge_moments", "FeatureStats", "estimate_stats",
           "estimate_layer_stats", "dataset_inputs"]


@dataclass
class Moments:
    """Running sums of one layer's output, per element.

    Attributes:
        count: number of samples seen at each element.
        mean: mean at each element.
        m2: sum of squared deviations from ``mean``.
        nonzero: number of samples with a non-zero value.
        sumsq: sum of squared values (for the half-Gaussian estimate).
    """

    count: Tensor
    mean: Tensor
    m2: Tensor
    nonzero: Tensor
    sumsq: Tensor


def _accumulator_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def batch_moments(x: Tensor, mask: Tensor | None = None) -> Moments:
    """Moments of a batch ``x`` of shape ``(N, *shape)`` over its first dimension.

    ``mask`` (broadcastable to ``x``, 1 = count, 0 = ignore) leaves elements out.
    """
    # One batch's sums are taken in float32 around the batch's own mean (accurate to about 1e-7 of
    # the value for any batch size), and only these per-element moments are widened to float64 for
    # the merge across batches: widening the whole batch first made estimation 4x slower.
    dtype = _accumulator_dtype(x.device)
    x = x.detach()
    if x.dtype != torch.float64:
        x = x.float()
    if mask is None:  # every element counts: the same sums without a tensor of ones to multiply by
        n = x.shape[0]
        mean = x.mean(0) if n else x.new_zeros(x.shape[1:])
        centred = x - mean
        moments = (torch.full(x.shape[1:], float(n), device=x.device), mean, (centred * centred).sum(0),
                   (x != 0).sum(0, dtype=x.dtype), (x * x).sum(0))
    else:
        w = mask.to(x.dtype).expand_as(x)
        count = w.sum(0)
        mean = (w * x).sum(0) / count.clamp_min(1)
        moments = (count, mean, (w * (x - mean) ** 2).sum(0), (w * (x != 0)).sum(0), (w * x * x).sum(0))
    return Moments(*(m.to(dtype) for m in moments))


def merge_moments(a: Moments, b: Moments) -> Moments:
    """Merge two sets of moments as if their samples had been seen together."""
    count = a.count + b.count
    delta = b.mean - a.mean
    frac_b = b.count / count.clamp_min(1)
    mean = a.mean + delta * frac_b
    m2 = a.m2 + b.m2 + delta * delta * a.count * frac_b
    return Moments(count, mean, m2, a.nonzero + b.nonzero, a.sumsq + b.sumsq)


@dataclass
class FeatureStats:
    """Estimated noise distribution of a layer: what the bottleneck adds.

    Attributes:
        mean: ``(*shape)`` per-element mean (zero for the ReLU variant).
        std: ``(*shape)`` per-element std, ``>= min_std``.
        active: ``(*shape)`` float 0/1, 1 where more than ``active_threshold``
            of the samples were non-zero.
        n_samples: number of samples the estimate used.
        relu: whether the half-Gaussian (ReLU) variant was used.
    """

    mean: Tensor
    std: Tensor
    active: Tensor
    n_samples: int
    relu: bool = False

    @classmethod
    def from_moments(cls, m: Moments, n_samples: int, relu: bool = False,
                     min_std: float = 0.01, active_threshold: float = 0.01) -> "FeatureStats":
        """Finish an estimate: std, the ReLU variant and the active mask."""
        if relu:
            mean = torch.zeros_like(m.mean)
            std = torch.sqrt(m.sumsq.clamp_min(1e-5) / m.nonzero.clamp_min(1))
        else:
            mean = m.mean
            std = torch.sqrt(m.m2 / (m.count - 1).clamp_min(1))
        active = (m.nonzero / m.count.clamp_min(1) > active_threshold).float()
        return cls(mean.float(), std.clamp_min(min_std).float(), active, n_samples, relu)

    @property
    def shape(self) -> torch.Size:
        """Shape of one sample's feature map."""
        return self.mean.shape

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "FeatureStats":
        """A copy on another device (and dtype)."""
        kw = {"device": device, "dtype": dtype or self.mean.dtype}
        return FeatureStats(self.mean.to(**kw), self.std.to(**kw), self.active.to(**kw),
                            self.n_samples, self.relu)

    def state_dict(self) -> dict:
        """Plain tensors and numbers, loadable with ``weights_only=True``."""
        return {"mean": self.mean.cpu(), "std": self.std.cpu(), "active": self.active.cpu(),
                "n_samples": self.n_samples, "relu": self.relu}

    def save(self, path: str | os.PathLike) -> None:
        """Write the statistics to ``path`` atomically (temporary file, then rename)."""
        with atomic_path(path) as tmp:
            torch.save(self.state_dict(), tmp)

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> "FeatureStats":
        """Read statistics written by :meth:`save`.

        Raises:
            ValueError: the file is not a statistics file or is corrupt.
        """
        return cls.from_state_dict(cls.read_state(path, map_location), path)

    @staticmethod
    def read_state(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
        """The dictionary in a statistics file (``weights_only`` load).

        Raises:
            ValueError: the file cannot be read as one.
        """
        state = load_weights_only(path, "feature statistics", map_location=map_location)
        if not isinstance(state, dict):
            raise ValueError(f"{path} is not a feature-statistics file")
        return state

    @classmethod
    def from_state_dict(cls, state: dict, path: str | os.PathLike = "the state") -> "FeatureStats":
        """Statistics from :meth:`state_dict`'s dictionary, checked.

        Raises:
            ValueError: keys are missing or the values are corrupt.
        """
        keys = {"mean", "std", "active", "n_samples", "relu"}
        if not isinstance(state, dict) or not keys <= set(state):
            raise ValueError(f"{path} is not a feature-statistics file (expected keys {sorted(keys)})")
        mean, std, active = state["mean"], state["std"], state["active"]
        if not (mean.shape == std.shape == active.shape):
            raise ValueError(f"{path} is corrupt: mean, std and active differ in shape")
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()):
            raise ValueError(f"{path} is corrupt: non-finite mean or non-positive std")
        return cls(mean, std, active, int(state["n_samples"]), bool(state["relu"]))


def estimate_stats(model: nn.Module, layer: nn.Module, loader: Iterable, n_samples: int = 1000,
                   relu: bool = False, min_std: float = 0.01, active_threshold: float = 0.01,
                   layer_name: str = "layer", progress: bool = False,
                   positions: Callable[[Tensor], Tensor] | None = None) -> FeatureStats:
    """Estimate one layer's :class:`FeatureStats` over the inputs a loader yields.

    :func:`estimate_layer_stats` for a single layer: the forward pass stops
    at ``layer``; batches are moved to the model's device; the last one is
    cut so that exactly ``n_samples`` inputs are used when the loader holds
    that many; ``positions`` pools sequence positions.

    Raises:
        ValueError: the loader yields no samples, or non-finite inputs.
    """
    return estimate_layer_stats(model, {layer_name: layer}, loader, n_samples, relu, min_std,
                                active_threshold, progress, positions)[layer_name]


def dataset_inputs(loader: Iterable, n_samples: int, device: torch.device,
                   what: str = "inputs") -> Iterator[Tensor]:
    """The input tensors of a loader's batches, on ``device``, ``n_samples`` in all at most.

    The last batch is cut so that exactly ``n_samples`` are yielded when the
    loader holds that many.

    Raises:
        ValueError: a batch holds NaN or infinite values (``what`` names them).
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be positive, got {n_samples}")
    seen = 0
    for batch in loader:
        x = batch_inputs(batch)[: n_samples - seen]
        if x.shape[0] == 0:
            continue
        check_finite(x, what)
        yield x.to(device)
        seen += x.shape[0]
        if seen >= n_samples:
            return


def estimate_layer_stats(model: nn.Module, layers: Mapping[str, nn.Module], loader: Iterable,
                         n_samples: int = 1000, relu: bool | Mapping[str, bool] = False,
                         min_std: float = 0.01, active_threshold: float = 0.01,
                         progress: bool = False,
                         positions: Callable[[Tensor], Tensor] | None = None) -> dict[str, FeatureStats]:
    """:class:`~inputiba.estimation.FeatureStats` of several layers, in one pass per batch.

    Chan's merge of whole batches, in float64, for every layer of
    ``layers`` at once; each forward pass stops after the last of them.
    With ``positions`` (sequences), each layer's output ``(B, T, *rest)`` is
    pooled over the real positions ``positions(inputs)`` ``(B, T)``, so the
    statistics have shape ``rest`` and padding counts nowhere.

    Args:
        model: the model (put in eval mode, frozen, for the call).
        layers: ``{name: module}``.
        loader: yields input tensors or ``(inputs, targets)`` pairs.
        n_samples: inputs to use at most.
        relu: the half-Gaussian variant for every layer, or per layer name.
        min_std: lower bound of the std.
        active_threshold: fraction of non-zero samples above which an element is active.
        progress: show a progress bar.
        positions: real positions of sequence inputs, see above.

    Returns:
        ``{name: FeatureStats}`` with each layer's ``(*shape)`` statistics.

    Raises:
        ValueError: the loader yields no samples, or non-finite inputs.
    """
    device = model_device(model)
    moments: dict[str, Moments] = {}
    seen = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=n_samples, desc="estimate", unit="sample")
    try:
        with torch.no_grad(), preserved_state(model):
            for x in dataset_inputs(loader, n_samples, device, "estimation inputs"):
                outputs, _ = capture(model, layers, x)
                real = positions(x) if positions is not None else None
                for name, features in outputs.items():
                    m = batch_moments(features if real is None else features[real])
                    moments[name] = m if name not in moments else merge_moments(moments[name], m)
                seen += x.shape[0]
                if bar is not None:
                    bar.update(x.shape[0])
    finally:
        if bar is not None:
            bar.close()
    if not moments:
        raise ValueError("the loader yielded no samples to estimate the feature statistics from")
    relu_of = relu if isinstance(relu, Mapping) else {name: relu for name in layers}
    return {name: FeatureStats.from_moments(moments[name], seen, bool(relu_of.get(name, False)),
                                            min_std, active_threshold)
            for name in layers}
