"""The IBA family's other members behind the common protocol.

Thin adapters: :class:`~inputiba.readout.ReadoutBottleneck` (``"readout_iba"``),
:class:`~inputiba.multi.MultiIBA` (``"multi_iba"``) and
:func:`~inputiba.information.information_map` (``"information"``).
:meth:`prepare` fits what each needs from data; :meth:`attribute` explains.

Default layers, when none are given: the model's last two ``nn.Conv2d``
(one if it has only one). The readout's bottleneck goes at the first of them
and reads it, the convolutions after it and the last ``nn.Linear`` (the
logits), as the paper places it at its first readout layer.
"""
from __future__ import annotations

import os
from typing import Iterable, Sequence

from torch import Tensor, nn

from ..iba import IBAConfig
from ..information import ActivationPrior, information_map
from ..multi import MultiIBA
from ..readout import ReadoutBottleneck, ReadoutConfig
from ..seeding import Seeds
from .base import AttributionMethod, register

__all__ = ["ReadoutIBAMethod", "MultiIBAMethod", "InformationMethod", "default_layers"]


def default_layers(model: nn.Module, count: int = 2) -> list[str]:
    """Dotted names of the model's last ``count`` ``nn.Conv2d`` layers, in order.

    Raises:
        ValueError: the model has no ``nn.Conv2d``.
    """
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not names:
        raise ValueError(f"model {type(model).__name__} has no nn.Conv2d; pass layers explicitly")
    return names[-count:]


@register("readout_iba")
class ReadoutIBAMethod(AttributionMethod):
    """Readout bottleneck (Schulz et al., 2020, §3.2): :class:`inputiba.readout.ReadoutBottleneck`.

    ``(B, H, W)`` bits per pixel, ``>= 0``, from one forward pass of a
    readout network trained in :meth:`prepare` (or loaded from ``path``).

    Args:
        layer: the bottleneck's layer (default: see the module's notes).
        readout_layers: the readout's inputs (default: see the module's notes).
        config: a :class:`~inputiba.readout.ReadoutConfig`; its
            ``train_target`` defaults here to ``"predicted"``, so that any
            loader serves (inputs alone or with labels).
        path: a trained readout file to load instead of training.
        epochs: training epochs in :meth:`prepare`.
        lr: Adam learning rate of the training.
        **overrides: fields of the config.
    """

    unit = "bits per pixel (>= 0)"

    def __init__(self, model: nn.Module, layer: str | nn.Module | None = None,
                 readout_layers: Sequence[str | nn.Module] | None = None, config: ReadoutConfig | None = None,
                 path: str | os.PathLike | None = None, epochs: int = 1, lr: float = 1e-3, **overrides) -> None:
        super().__init__(model)
        if path is not None:
            self.readout = ReadoutBottleneck.load(model, path)
            self.trained = True
        else:
            convs = default_layers(model)
            if layer is None:
                layer = convs[0]
            if readout_layers is None:
                linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
                readout_layers = convs + linears[-1:]
            if config is None:
                overrides = {"train_target": "predicted", **overrides}
            self.readout = ReadoutBottleneck(model, layer, readout_layers, config, **overrides)
            self.trained = False
        self.epochs, self.lr = epochs, lr

    def prepare(self, loader: Iterable, n_samples: int | None = None) -> None:
        """Estimate the statistics on ``n_samples`` inputs (default 1000), then train the readout on ``loader``."""
        self.readout.estimate(loader, n_samples=n_samples or 1000)
        self.readout.fit(loader, epochs=self.epochs, lr=self.lr)
        self.trained = True

    def _attribute(self, x: Tensor, targets: Tensor) -> Tensor:
        if not self.trained:
            raise RuntimeError(f"{self.name} has no trained readout: call prepare(loader) first, or give path=")
        return self.readout.attribute(x, targets)


@register("multi_iba")
class MultiIBAMethod(AttributionMethod):
    """Per-sample bottlenecks at several depths, trained jointly: :class:`inputiba.multi.MultiIBA`.

    ``(B, H, W)`` bits per pixel, ``>= 0``: the sum over layers of the bits
    each bottleneck lets through.

    Args:
        layers: dotted names or modules (default: the last two convolutions).
        config: an :class:`~inputiba.iba.IBAConfig` shared by the layers.
        seed: seed of the bottleneck noise: an int (input ``i`` of a call
            gets ``input_seed(seed, i)``), one seed per input, or ``None``
            (fresh noise); see :mod:`inputiba.seeding`.
        **overrides: fields of the config.
    """

    unit = "bits per pixel (>= 0)"
    per_input_seeds = True

    def __init__(self, model: nn.Module, layers: Sequence[str | nn.Module] | None = None,
                 config: IBAConfig | None = None, seed: Seeds = 0, **overrides) -> None:
        super().__init__(model)
        self.multi = MultiIBA(model, default_layers(model) if layers is None else layers, config, **overrides)
        self.seed = seed

    def prepare(self, loader: Iterable, n_samples: int | None = None) -> None:
        """Estimate every layer's statistics on ``n_samples`` inputs (default 1000)."""
        self.multi.estimate(loader, n_samples=n_samples or 1000)

    def _attribute(self, x: Tensor, targets: Tensor) -> Tensor:
        if self.multi.stats is None:
            raise RuntimeError(f"{self.name} has no feature statistics: call prepare(loader) first")
        return self.multi.attribute(x, targets, seed=self.seed)


@register("information")
class InformationMethod(AttributionMethod):
    """Information of the activations under a prior: :func:`inputiba.information.information_map`.

    Does not depend on the target (it measures the activations, not the
    decision). With ``combine="product"`` the map is the README's unitless
    product of per-layer ``[0, 1]``-scaled maps; with ``"sum"``, bits per pixel.

    Args:
        layers: dotted names or modules (default: the last two convolutions).
        kind: ``"histogram"`` or ``"half_gaussian"`` (post-ReLU layers only).
        per_channel: one distribution per channel rather than per layer.
        n_bins: bins of each histogram.
        combine: ``"product"`` or ``"sum"``.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str | nn.Module] | None = None,
                 kind: str = "histogram", per_channel: bool = True, n_bins: int = 100,
                 combine: str = "product") -> None:
        super().__init__(model)
        self.layers = default_layers(model) if layers is None else list(layers)
        self.kind, self.per_channel, self.n_bins, self.combine = kind, per_channel, n_bins, combine
        self.unit = ("product of per-layer [0, 1]-scaled information (unitless, >= 0)" if combine == "product"
                     else "bits per pixel")
        self.prior: ActivationPrior | None = None

    def prepare(self, loader: Iterable, n_samples: int | None = None) -> None:
        """Estimate the prior on ``n_samples`` inputs (default 1000); a histogram reads the loader twice."""
        self.prior = ActivationPrior.estimate(self.model, self.layers, loader, kind=self.kind,
                                              per_channel=self.per_channel, n_bins=self.n_bins,
                                              n_samples=n_samples or 1000)

    def _attribute(self, x: Tensor, targets: Tensor) -> Tensor:
        if self.prior is None:
            raise RuntimeError(f"{self.name} has no activation prior: call prepare(loader) first")
        return information_map(self.model, self.layers, self.prior, x, self.combine).combined
