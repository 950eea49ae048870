"""The one protocol every attribution method answers, and the registry of names.

Every method is an :class:`AttributionMethod` built as ``Method(model, **settings)``
and asked ``method.attribute(inputs, target=...)``; it returns a ``(B, H, W)``
float map at input resolution. Methods are found by name with
:func:`get_method`. The helpers below (channel reduction, upsampling, default
layer, seeding) are shared by the methods so that each file holds only its idea.
"""
from __future__ import annotations

import contextlib
import copy
import difflib
from typing import Callable, ClassVar, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..hooks import model_stamp, preserved_state, resolve_layer
from ..validation import check_finite, check_model, model_device, resolve_targets, run_model

__all__ = [
    "AttributionMethod",
    "register",
    "get_method",
    "available_methods",
    "reduce_channels",
    "upsample",
    "last_conv_layer",
    "last_conv_activation",
    "layer_name",
    "spatial_output",
    "seeded",
    "generator",
    "detached_copy",
    "REDUCTIONS",
]

#: How a ``(B, C, H, W)`` attribution becomes a ``(B, H, W)`` map.
REDUCTIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "max_abs": lambda a: a.abs().amax(dim=1),
    "sum_abs": lambda a: a.abs().sum(dim=1),
    "sum": lambda a: a.sum(dim=1),
    "mean": lambda a: a.mean(dim=1),
}

_REGISTRY: dict[str, tuple[type, dict]] = {}


class AttributionMethod:
    """Base of every attribution method: one verb, :meth:`attribute`.

    Subclasses set :attr:`name` and :attr:`unit` and implement
    :meth:`_attribute`, which receives the inputs on the model's device and
    one class index per input, and runs with the model in eval mode and its
    parameters frozen (:func:`inputiba.hooks.preserved_state`). The model is
    left as found: modes, ``requires_grad`` flags, hooks and parameter
    ``.grad`` are as they were before the call, also when it raises.

    A method for text sets :attr:`modality` to ``"tokens"``: it then takes
    ``(B, T)`` right-padded token ids and returns ``(B, T)`` scores, 0 at
    padding (ids equal to :attr:`pad_index`).

    Args:
        model: a classifier mapping ``(B, C, H, W)`` images (or token ids) to
            ``(B, K)`` scores (logits unless a method says otherwise).
    """

    #: Registered name of the method.
    name: ClassVar[str] = ""
    #: What one value of the map means (its unit and sign convention).
    unit: ClassVar[str] = ""
    #: ``"image"`` or ``"tokens"``: what :meth:`attribute` takes and returns.
    modality: str = "image"
    #: The padding id of token inputs.
    pad_index: int = 0
    #: Whether ``seed`` may be one seed per input (each input then draws from
    #: its own stream, :mod:`inputiba.seeding`); the harness passes the
    #: samples' keys to such methods. Methods without it draw the same
    #: random values for every input (or none), so a plain seed suffices.
    per_input_seeds: ClassVar[bool] = False

    def __init__(self, model: nn.Module) -> None:
        check_model(model)
        self.model = model

    def prepare(self, loader: Iterable, n_samples: int | None = None) -> None:
        """Fit whatever the method needs from data before :meth:`attribute`.

        A no-op for most methods; the bottleneck methods estimate their
        feature statistics here (``n_samples`` inputs, default 1000) and
        DeepLIFT-SHAP takes its baselines (default ``n_baselines``).
        """

    def needs_preparation(self) -> bool:
        """Whether :meth:`prepare` must run before :meth:`attribute`.

        True for methods that override :meth:`prepare`, unless they say they
        already have what it would fit (statistics loaded from a file).
        """
        return type(self).prepare is not AttributionMethod.prepare

    def attribute(self, inputs: Tensor, target: int | Sequence[int] | Tensor | None = None) -> Tensor:
        """Attribute the model's score for ``target`` to the pixels of ``inputs``.

        Args:
            inputs: ``(B, C, H, W)`` float images as the model takes them
                (text methods: ``(B, T)`` token ids).
            target: ``None`` (the predicted class), an int for every input, or
                one class index per input (sequence or ``(B,)`` tensor).

        Returns:
            ``(B, H, W)`` float tensor on the inputs' device, in the method's
            :attr:`unit` (text: ``(B, T)``, 0 at padding); no gradient is
            attached.
        """
        if self.modality == "tokens":
            return self._attribute_tokens(inputs, target)
        if not isinstance(inputs, Tensor) or inputs.dim() != 4:
            got = tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
            raise ValueError(f"{self.name} explains image batches of shape (B, C, H, W); got {got}")
        if inputs.shape[0] == 0:
            raise ValueError("inputs hold no samples (batch size 0)")
        if not inputs.is_floating_point():
            raise TypeError(f"inputs must be a float tensor, got dtype {inputs.dtype}")
        check_finite(inputs)
        x = inputs.detach().to(model_device(self.model))
        # the classes are read from one forward pass per input shape; with a given target, later calls
        # skip that pass (it is a third of a gradient method's cost on one image)
        known = self.__dict__.setdefault("_n_classes", {})
        key = tuple(x.shape[1:])
        with preserved_state(self.model):
            if target is None or key not in known:
                with torch.no_grad():
                    logits = run_model(self.model, x)
                if not isinstance(logits, Tensor) or logits.dim() != 2:
                    shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
                    raise ValueError(f"{self.name} needs a model that returns (B, K) scores, got {shape}")
                known[key] = logits.shape[1]
                targets = resolve_targets(target, logits, x.shape[0], x.device)
            else:
                targets = resolve_targets(target, None, x.shape[0], x.device, n_classes=known[key])
            out = self._attribute(x, targets)
        expected = (x.shape[0],) + tuple(x.shape[-2:])
        if tuple(out.shape) != expected:
            raise RuntimeError(f"{self.name} returned a map of shape {tuple(out.shape)}, expected {expected}")
        return out.detach().to(inputs.device)

    @contextlib.contextmanager
    def model_copy(self) -> Iterator[nn.Module]:
        """:func:`detached_copy` of the model, made again only when its weights, buffers or modes changed.

        For methods that hook a copy at every call (guided backprop, deconvnet):
        one deep copy per model state instead of one per call. A change is
        seen through each tensor's storage and in-place version counter. If the
        block raises, the copy is dropped (hooks may be left on it).
        """
        stamp = model_stamp(self.model)
        cached = self.__dict__.get("_copy")
        if cached is None or cached[0] != stamp:
            self._copy = cached = (stamp, detached_copy(self.model))
        try:
            yield cached[1]
        except BaseException:
            self.__dict__.pop("_copy", None)
            raise

    def _attribute_tokens(self, ids: Tensor, target) -> Tensor:
        if not isinstance(ids, Tensor) or ids.dim() != 2 or ids.is_floating_point():
            got = f"{tuple(ids.shape)} {ids.dtype}" if isinstance(ids, Tensor) else type(ids).__name__
            raise ValueError(f"{self.name} explains token ids of shape (B, T) as integers; got {got}")
        if ids.shape[0] == 0:
            raise ValueError("inputs hold no samples (batch size 0)")
        real = ids != self.pad_index
        if not real.any(dim=1).all():
            raise ValueError(f"text {int((~real.any(dim=1)).nonzero()[0])} of the batch is empty (padding only)")
        x = ids.to(model_device(self.model))
        with preserved_state(self.model):
            with torch.no_grad():
                logits = run_model(self.model, x)
            targets = resolve_targets(target, logits, x.shape[0], x.device)
            out = self._attribute(x, targets)
        if tuple(out.shape) != tuple(ids.shape):
            raise RuntimeError(f"{self.name} returned scores of shape {tuple(out.shape)}, expected {tuple(ids.shape)}")
        return (out.detach() * real.to(out.device, out.dtype)).to(ids.device)

    def _attribute(self, x: Tensor, targets: Tensor) -> Tensor:
        """``(B, H, W)`` map for inputs ``x`` and ``(B,)`` long ``targets`` (text: ``(B, T)``)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, unit={self.unit!r})"


def register(name: str, **defaults) -> Callable[[type], type]:
    """Class decorator: make a method available under ``name``.

    ``defaults`` are settings the name implies (``"occlusion_14"`` is
    ``Occlusion`` with ``window=14``); the first name registered for a class
    becomes its :attr:`~AttributionMethod.name`.
    """
    def decorate(cls: type) -> type:
        if name in _REGISTRY:
            raise ValueError(f"an attribution method named {name!r} is already registered")
        _REGISTRY[name] = (cls, defaults)
        if not cls.__dict__.get("name"):
            cls.name = name
        return cls

    return decorate


def available_methods() -> list[str]:
    """The registered method names, sorted."""
    return sorted(_REGISTRY)


def method_class(name: str) -> type:
    """The class registered as ``name``.

    Raises:
        ValueError: unknown name; close names are listed.
    """
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown attribution method {name!r}{hint} Known: {', '.join(available_methods())}")
    return _REGISTRY[name][0]


def get_method(name: str, model: nn.Module, **settings) -> AttributionMethod:
    """Build the method registered as ``name`` for ``model``.

    ``settings`` override the method's (and the name's) defaults.

    Raises:
        ValueError: unknown name; close names are listed.
    """
    cls, defaults = method_class(name), _REGISTRY[name][1]
    method = cls(model, **{**defaults, **settings})
    method.name = name
    return method


# ---------------------------------------------------------------------- shared helpers
def reduce_channels(attribution: Tensor, how: str) -> Tensor:
    """``(B, C, H, W)`` -> ``(B, H, W)`` by one of :data:`REDUCTIONS`."""
    if how not in REDUCTIONS:
        raise ValueError(f"unknown channel reduction {how!r}; choose one of {sorted(REDUCTIONS)}")
    return REDUCTIONS[how](attribution)


def upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of ``(B, h, w)`` maps to ``(B, *size)`` (values, not mass, kept)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps.unsqueeze(1), size=tuple(size), mode="bilinear",
                         align_corners=False).squeeze(1)


def last_conv_layer(model: nn.Module) -> str:
    """Dotted name of the last registered ``nn.Conv2d`` (Grad-CAM's default layer)."""
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not names:
        raise ValueError(f"model {type(model).__name__} has no nn.Conv2d; pass layer= explicitly")
    return names[-1]


def last_conv_activation(model: nn.Module) -> str:
    """The last ``nn.Conv2d``'s activation: the ``nn.ReLU`` registered right after it, if any.

    Grad-CAM reads the last convolutional *feature maps*, which follow the
    ReLU; the convolution's raw output can be negative everywhere a class is
    not, which the final ReLU of Grad-CAM turns into an all-zero map.
    """
    conv = last_conv_layer(model)
    names = [name for name, _ in model.named_modules()]
    modules = dict(model.named_modules())
    after = names.index(conv) + 1
    if after < len(names) and isinstance(modules[names[after]], nn.ReLU):
        return names[after]
    return conv


def layer_name(model: nn.Module, layer: str | nn.Module | None) -> str:
    """The dotted name of ``layer`` (``None``: :func:`last_conv_layer`), checked."""
    if layer is None:
        return last_conv_layer(model)
    return resolve_layer(model, layer)[0]


def spatial_output(layer_name: str, out: Tensor) -> Tensor:
    """Check that a layer's output is a ``(B, C, h, w)`` map."""
    if not isinstance(out, Tensor) or out.dim() != 4:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"layer {layer_name!r} must give a (B, C, h, w) map, got {shape}")
    return out


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seed the global RNG (CPU and ``device``) for a block and restore it afterwards.

    For third-party code (Captum) that draws from the global generator;
    ``seed=None`` leaves the RNG untouched.
    """
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def generator(seed: int | None) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (a fresh random seed when ``None``)."""
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    return g


#: Activations that take ``inplace``; hook-based Captum methods fail on in-place ones.
_INPLACE_TYPES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.Hardtanh,
                  nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.Mish, nn.Threshold, nn.RReLU,
                  nn.Dropout, nn.Dropout2d, nn.AlphaDropout)


def detached_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every in-place activation made out-of-place.

    Methods that hook modules' backward passes (guided backprop, LRP,
    DeepLIFT) or attach state to them (LRP's rules) run on this copy, so the
    user's model is never touched and ``ReLU(inplace=True)`` does not break the
    hooks. The copy holds the current weights and modes and costs one model's
    memory while a call runs.
    """
    clone = copy.deepcopy(model)
    for module in clone.modules():
        if isinstance(module, _INPLACE_TYPES) and getattr(module, "inplace", False):
            module.inplace = False
    return clone
