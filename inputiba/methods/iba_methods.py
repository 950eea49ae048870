"""The library's own bottleneck methods behind the common protocol.

Thin adapters over :class:`inputiba.iba.IBA` and
:class:`inputiba.pipeline.InputIBA`: :meth:`prepare` estimates the feature
statistics, :meth:`attribute` explains.
"""
from __future__ import annotations

from typing import Iterable

from torch import Tensor, nn

from ..iba import IBA, IBAConfig
from ..pipeline import InputIBA, InputIBAConfig, preset_for
from .base import AttributionMethod, register

__all__ = ["IBAMethod", "InputIBAMethod"]


def _require_stats(method: AttributionMethod, stats) -> None:
    if stats is None:
        raise RuntimeError(f"{method.name} has no feature statistics: call prepare(loader) first")


@register("iba")
class IBAMethod(AttributionMethod):
    """Per-sample information bottleneck (Schulz et al., 2020): :class:`inputiba.iba.IBA`.

    ``(B, H, W)`` bits per pixel, ``>= 0``: the information the bottleneck at
    ``layer`` lets through about each region, upsampled to the input with the
    total kept.

    Args:
        layer: dotted name or module; ``None`` takes the preset of the
            model's family (:data:`inputiba.pipeline.PRESETS`).
        config: an :class:`~inputiba.iba.IBAConfig` (published defaults).
        seed: seed of the bottleneck noise; ``None`` draws fresh noise.
        **overrides: fields of the config (``beta=``, ``steps=``, ...).
    """

    unit = "bits per pixel (>= 0)"

    def __init__(self, model: nn.Module, layer: str | nn.Module | None = None,
                 config: IBAConfig | None = None, seed: int | None = 0, **overrides) -> None:
        super().__init__(model)
        if layer is None:
            preset = dict(preset_for(model))
            layer = preset.pop("layer")
            overrides = {**preset, **overrides}
        self.iba = IBA(model, layer, config, **overrides)
        self.seed = seed

    def prepare(self, loader: Iterable, n_samples: int | None = None) -> None:
        """Estimate the layer's statistics on ``n_samples`` inputs (default 1000)."""
        self.iba.estimate(loader, n_samples=n_samples or 1000)

    def _attribute(self, x: Tensor, targets: Tensor) -> Tensor:
        _require_stats(self, self.iba.stats)
        return self.iba.attribute(x, targets, seed=self.seed)


@register("inputiba")
class InputIBAMethod(AttributionMethod):
    """InputIBA (Zhang et al., 2021): :class:`inputiba.pipeline.InputIBA`.

    ``(B, H, W)`` mask in ``[0, 1]`` at input resolution: how much of each
    pixel the input bottleneck lets through.

    Args:
        layer: the feature stage's layer; ``None`` takes the model family's preset.
        config: an :class:`~inputiba.pipeline.InputIBAConfig` (published
            schedule; ``InputIBAConfig.fast()`` is about 11x faster).
        seed: seed of every random draw; ``None`` draws fresh ones.
    """

    unit = "[0, 1] input mask"

    def __init__(self, model: nn.Module, layer: str | nn.Module | None = None,
                 config: InputIBAConfig | None = None, seed: int | None = 0) -> None:
        super().__init__(model)
        self.inputiba = InputIBA(model, layer, config)
        self.seed = seed

    def prepare(self, loader: Iterable, n_samples: int | None = None) -> None:
        """Estimate the feature layer's statistics on ``n_samples`` inputs (default 1000)."""
        self.inputiba.estimate(loader, n_samples=n_samples or 1000)

    def _attribute(self, x: Tensor, targets: Tensor) -> Tensor:
        _require_stats(self, self.inputiba.stats)
        return self.inputiba.attribute(x, targets, seed=self.seed)
