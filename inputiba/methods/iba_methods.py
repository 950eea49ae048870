"""The library's own bottleneck methods behind the common protocol.

Thin adapters over :class:`inputiba.iba.IBA` and
:class:`inputiba.pipeline.InputIBA`: :meth:`prepare` estimates the feature
statistics, :meth:`attribute` explains.
"""
from __future__ import annotations

import os
from typing import Iterable

from torch import Tensor, nn

from ..estimation import FeatureStats
from ..iba import IBA, IBAConfig
from ..pipeline import InputIBA, InputIBAConfig, preset_for
from ..seeding import Seeds
from .base import AttributionMethod, register

__all__ = ["IBAMethod", "InputIBAMethod"]


def _default_layer(model: nn.Module, input_layer) -> tuple[str, dict]:
    """The preset layer and settings: the model's ``feature_layer`` for text, else the family's."""
    if input_layer is not None:
        layer = getattr(model, "feature_layer", None)
        if layer is None:
            raise ValueError(f"no default layer for text model {type(model).__name__}; pass layer=")
        return layer, {}
    preset = dict(preset_for(model))
    return preset.pop("layer"), preset


def _set_modality(method: AttributionMethod, adapter, text_unit: str) -> None:
    if adapter.kind == "tokens":
        method.modality = "tokens"
        method.pad_index = adapter.pad_index
        method.unit = text_unit


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
        seed: seed of the bottleneck noise: an int (input ``i`` of a call
            gets ``input_seed(seed, i)``), one seed per input, or ``None``
            (fresh noise); see :mod:`inputiba.seeding`.
        input_layer: the embedding layer of a text classifier: the method
            then explains ``(B, T)`` token ids, in bits per token.
        pad_index: padding id of the token ids (default: the embedding's).
        stats: feature statistics, or the path of a file written by
            ``save_stats``; then :meth:`prepare` is not needed.
        **overrides: fields of the config (``beta=``, ``steps=``, ...).
    """

    unit = "bits per pixel (>= 0)"
    per_input_seeds = True

    def __init__(self, model: nn.Module, layer: str | nn.Module | None = None,
                 config: IBAConfig | None = None, seed: Seeds = 0, *,
                 input_layer: str | nn.Module | None = None, pad_index: int | None = None,
                 stats: FeatureStats | str | os.PathLike | None = None, **overrides) -> None:
        super().__init__(model)
        if layer is None:
            layer, preset = _default_layer(model, input_layer)
            overrides = {**preset, **overrides}
        self.iba = IBA(model, layer, config, input_layer=input_layer, pad_index=pad_index, **overrides)
        if isinstance(stats, FeatureStats):
            self.iba.stats = stats
        elif stats is not None:
            self.iba.load_stats(stats)
        _set_modality(self, self.iba.adapter, "bits per token (>= 0, 0 at padding)")
        self.seed = seed

    def prepare(self, loader: Iterable, n_samples: int | None = None) -> None:
        """Estimate the layer's statistics on ``n_samples`` inputs (default 1000)."""
        self.iba.estimate(loader, n_samples=n_samples or 1000)

    def needs_preparation(self) -> bool:
        """True until statistics are estimated or loaded."""
        return self.iba.stats is None

    def _attribute(self, x: Tensor, targets: Tensor) -> Tensor:
        _require_stats(self, self.iba.stats)
        return self.iba.attribute(x, targets, seed=self.seed)


@register("inputiba")
class InputIBAMethod(AttributionMethod):
    """InputIBA (Zhang et al., 2021): :class:`inputiba.pipeline.InputIBA`.

    ``(B, H, W)`` mask in ``[0, 1]`` at input resolution: how much of each
    pixel the input bottleneck lets through.

    Args:
        layer: the feature stage's layer; ``None`` takes the model family's
            preset (text: the model's ``feature_layer``).
        config: an :class:`~inputiba.pipeline.InputIBAConfig` (default: the
            library's schedule; ``InputIBAConfig.published()`` is the paper's).
        seed: seed of every random draw: an int (input ``i`` of a call
            gets ``input_seed(seed, i)``), one seed per input, or ``None``
            (fresh draws); see :mod:`inputiba.seeding`.
        input_layer: the embedding layer of a text classifier: the method
            then explains ``(B, T)`` token ids, one score per token.
        pad_index: padding id of the token ids (default: the embedding's).
        stats: the path of a statistics file written by ``save_stats``;
            then :meth:`prepare` is not needed.
    """

    unit = "[0, 1] input mask"
    per_input_seeds = True

    def __init__(self, model: nn.Module, layer: str | nn.Module | None = None,
                 config: InputIBAConfig | None = None, seed: Seeds = 0, *,
                 input_layer: str | nn.Module | None = None, pad_index: int | None = None,
                 stats: str | os.PathLike | None = None) -> None:
        super().__init__(model)
        if layer is None and input_layer is not None:
            layer, _ = _default_layer(model, input_layer)
        self.inputiba = InputIBA(model, layer, config, input_layer=input_layer, pad_index=pad_index)
        if stats is not None:
            self.inputiba.load_stats(stats)
        _set_modality(self, self.inputiba.adapter, "[0, 1] token mask (0 at padding)")
        self.seed = seed

    def prepare(self, loader: Iterable, n_samples: int | None = None) -> None:
        """Estimate the feature layer's statistics on ``n_samples`` inputs (default 1000)."""
        self.inputiba.estimate(loader, n_samples=n_samples or 1000)

    def needs_preparation(self) -> bool:
        """True until statistics are estimated or loaded."""
        return self.inputiba.stats is None

    def _attribute(self, x: Tensor, targets: Tensor) -> Tensor:
        _require_stats(self, self.inputiba.stats)
        return self.inputiba.attribute(x, targets, seed=self.seed)
