"""IBA, InputIBA and every image method as Captum ``Attribution`` objects.

Captum's metrics and visualisation take an attribution method by Captum's
conventions: ``attribute(inputs, target=...)`` returning attributions of the
same shape as the inputs. :class:`CaptumAttribution` gives an inputiba
explainer that shape::

    from captum.metrics import infidelity, sensitivity_max
    from inputiba.captum import CaptumAttribution

    explainer = CaptumAttribution(iba)                  # an IBA with statistics
    attr = explainer.attribute(x, target=y)            # (B, C, H, W), like x
    sensitivity_max(explainer.attribute, x, target=y)  # Captum's own metric

Our maps are one value per pixel ``(B, H, W)``. Spread over the ``C``
channels they keep their sum (``channels="spread"``: bits per pixel divided
by ``C``, so a pixel's channels still add up to its bits); a mask in
``[0, 1]`` is repeated on every channel (``channels="repeat"``, InputIBA's
default). Needs ``captum`` (``pip install captum``); images only.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor

from .seeding import Seeds

try:
    from captum.attr import Attribution
except ImportError as err:  # pragma: no cover - exercised only without captum
    raise ImportError("inputiba.captum needs Captum: pip install captum") from err

__all__ = ["CaptumAttribution", "CHANNEL_MODES"]

#: How a per-pixel map becomes a per-element attribution of a ``(B, C, H, W)`` input.
CHANNEL_MODES = ("spread", "repeat")


class CaptumAttribution(Attribution):
    """An inputiba explainer with Captum's ``Attribution`` interface.

    Args:
        explainer: an :class:`~inputiba.iba.IBA`, :class:`~inputiba.pipeline.InputIBA`
            or :class:`~inputiba.multi.MultiIBA` with its statistics, or any
            registered :class:`~inputiba.methods.AttributionMethod` of images.
        seed: passed to the explainer's noise (:mod:`inputiba.seeding`); an
            int seeds input ``i`` of each call with ``input_seed(seed, i)``.
        channels: ``"spread"`` (divide the map over the channels: sums are
            kept) or ``"repeat"`` (the same value on every channel); default
            ``"repeat"`` for InputIBA's masks, ``"spread"`` for the others.
    """

    def __init__(self, explainer: Any, seed: Seeds = 0, channels: str | None = None) -> None:
        from .methods import AttributionMethod
        from .pipeline import InputIBA

        model = getattr(explainer, "model", None)
        if model is None or not callable(getattr(explainer, "attribute", None)):
            raise TypeError(f"expected an inputiba explainer, got {type(explainer).__name__}")
        adapter = getattr(explainer, "adapter", None)
        if getattr(adapter, "kind", "image") != "image" or getattr(explainer, "modality", "image") != "image":
            raise ValueError("CaptumAttribution covers image explainers; text explainers take token ids, "
                             "which Captum attributes through an embedding layer instead")
        if channels is None:
            channels = "repeat" if isinstance(explainer, InputIBA) else "spread"
        if channels not in CHANNEL_MODES:
            raise ValueError(f"channels must be one of {CHANNEL_MODES}, got {channels!r}")
        super().__init__(model)
        self.explainer = explainer
        self.seed = seed
        self.channels = channels
        self._takes_seed = not isinstance(explainer, AttributionMethod)

    def attribute(self, inputs: Tensor | tuple[Tensor], target: Any = None, **kwargs: Any) -> Tensor | tuple[Tensor]:
        """Attributions shaped like ``inputs`` (a tensor, or a tuple of one tensor as Captum passes).

        ``target`` follows Captum: ``None`` (the predicted class), an int, or
        one class per input (list or tensor). Other keyword arguments are
        refused, so that a Captum option is never silently ignored.
        """
        if kwargs:
            raise TypeError(f"unsupported arguments {sorted(kwargs)}")
        as_tuple = isinstance(inputs, tuple)
        if as_tuple:
            if len(inputs) != 1:
                raise ValueError(f"one input tensor is supported, got {len(inputs)}")
            (x,) = inputs
        else:
            x = inputs
        if not isinstance(x, Tensor) or x.dim() != 4:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"expected images of shape (B, C, H, W), got {got}")
        if isinstance(target, tuple):
            raise ValueError("tuple targets (multi-dimensional outputs) are not supported; give class indices")
        if self._takes_seed:
            maps = self.explainer.attribute(x, target, seed=self.seed)
        else:
            if self.explainer.per_input_seeds:
                self.explainer.seed = self.seed
            maps = self.explainer.attribute(x, target)
        maps = maps.to(device=x.device, dtype=x.dtype).unsqueeze(1)
        per_element = maps / x.shape[1] if self.channels == "spread" else maps
        out = per_element.expand_as(x).contiguous()
        return (out,) if as_tuple else out

    def has_convergence_delta(self) -> bool:
        """No convergence delta (Captum's protocol)."""
        return False

    @property
    def multiplies_by_inputs(self) -> bool:
        """The attributions are not multiplied by the inputs (Captum's protocol)."""
        return False

