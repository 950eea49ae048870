"""Finding layers, hooking them, and leaving the user's model as it was found.

All hooks of the library are registered through :func:`forward_hooks`, which
removes them in ``finally``; :func:`preserved_state` puts the model in eval
mode with frozen parameters for a call and restores both afterwards.
"""
from __future__ import annotations

import contextlib
import contextvars
import difflib
import weakref
from typing import Callable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from .validation import MODEL_ERRORS, rejected_input

__all__ = [
    "channels_last_where_safe",
    "conv_layout",
    "model_stamp",
    "resolve_layer",
    "forward_hooks",
    "replaced",
    "preserved_state",
    "features_at",
    "resolve_layers",
    "capture",
    "layer_tensor",
    "with_layer_tensor",
    "cudnn_rnn_disabled",
    "LayerNotReached",
]

Hook = Callable[[nn.Module, tuple, object], object]


class LayerNotReached(RuntimeError):
    """The model's forward pass finished without calling the hooked layer."""


class _StopForward(Exception):
    """Raised inside a hook to end a forward pass early, carrying the output."""

    def __init__(self, output: object):
        super().__init__()
        self.output = output


def resolve_layer(model: nn.Module, layer: str | nn.Module) -> tuple[str, nn.Module]:
    """Return ``(dotted_name, module)`` for a layer given by name or object.

    Raises:
        ValueError: the name is unknown (close names are listed), or the
            module is not part of ``model``.
        TypeError: ``layer`` is neither a string nor a module.
    """
    names = dict(model.named_modules())
    if isinstance(layer, str):
        if layer in names and layer != "":
            return layer, names[layer]
        close = difflib.get_close_matches(layer, [n for n in names if n], n=5, cutoff=0.5)
        hint = f"; close names: {', '.join(close)}" if close else ""
        raise ValueError(f"model {type(model).__name__} has no layer named {layer!r}{hint}")
    if isinstance(layer, nn.Module):
        for name, module in names.items():
            if module is layer and name:
                return name, module
        raise ValueError(
            f"the given {type(layer).__name__} module is not a submodule of model {type(model).__name__}")
    raise TypeError(f"layer must be a dotted name or an nn.Module, got {type(layer).__name__}")


def layer_tensor(output: object, layer_name: str = "layer") -> Tensor:
    """The tensor a bottleneck acts on in a layer's output.

    A tensor is itself; a tuple whose first item is a tensor gives that item,
    as recurrent layers return ``(output_sequence, state)``.

    Raises:
        TypeError: the output holds no tensor in first place.
    """
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise TypeError(f"layer {layer_name!r} returns {type(output).__name__}, not a tensor "
                    "(or a tuple starting with one)")


def with_layer_tensor(output: object, tensor: Tensor) -> object:
    """``output`` with its :func:`layer_tensor` replaced by ``tensor``.

    For a recurrent layer's ``(sequence, state)`` only the sequence changes; a
    model that reads the state instead cannot see the bottleneck, which the
    bottleneck's fit detects.
    """
    if isinstance(output, Tensor):
        return tensor
    return type(output)([tensor, *output[1:]]) if isinstance(output, list) else (tensor, *output[1:])


@contextlib.contextmanager
def cudnn_rnn_disabled(model: nn.Module) -> Iterator[None]:
    """Disable cuDNN for a block when ``model`` holds a recurrent layer.

    cuDNN computes an RNN's backward pass only in training mode; attribution
    needs it in eval mode (no dropout). PyTorch's own kernels do both, so the
    block runs without cuDNN instead of switching the model to training mode.
    Other models, and CPU runs, are unaffected in effect.
    """
    if any(isinstance(m, nn.RNNBase) for m in model.modules()):
        with torch.backends.cudnn.flags(enabled=False):
            yield
    else:
        yield


@contextlib.contextmanager
def forward_hooks(hooks: list[tuple[nn.Module, Hook]]) -> Iterator[None]:
    """Register forward hooks for the duration of a ``with`` block.

    Every handle is removed when the block ends, also when it raises.
    """
    handles = []
    try:
        for module, hook in hooks:
            handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


#: Whether :func:`conv_layout` converts; set by :func:`channels_last_where_safe`.
_CHANNELS_LAST: contextvars.ContextVar[bool] = contextvars.ContextVar("inputiba_channels_last", default=False)


def conv_layout(tensor):
    """The same values, in the memory layout convolutions run fastest on.

    Inside a :func:`channels_last_where_safe` block that found the model able
    to take it, a 4-D floating-point tensor (images or feature maps
    ``(B, C, H, W)``) is returned channels-last (:data:`torch.channels_last`);
    anything else, and everything outside such a block, is returned as it is.
    Convolutions keep the layout of their input, so a model called on such a
    batch runs channels-last throughout without its weights being touched.
    A one-channel batch (grey images) is laid out the same either way, and
    convolutions read such a tensor as channels-first unless its strides say
    otherwise, so it gets explicit channels-last strides (a view, no copy).
    """
    if (_CHANNELS_LAST.get() and isinstance(tensor, Tensor) and tensor.dim() == 4
            and tensor.is_floating_point()):
        return _channels_last(tensor)
    return tensor


def _channels_last(tensor: Tensor) -> Tensor:
    if tensor.shape[1] == 1:
        B, _, H, W = tensor.shape
        return tensor.contiguous().view(B, H, W, 1).permute(0, 3, 1, 2)
    return tensor.contiguous(memory_format=torch.channels_last)


@contextlib.contextmanager
def channels_last_where_safe(models: Sequence[nn.Module], inputs: Tensor) -> Iterator[bool]:
    """Run a block with :func:`conv_layout` on, where every model accepts it.

    Image batches in channels-last layout made InputIBA on VGG16 at 224 px
    1.3-1.4x faster on a 2-core CPU, plain IBA up to 1.1x
    (``benchmarks/RESULTS.md``). Some
    models cannot take them: a ``x.view(B, -1)`` after a convolution fails
    on a channels-last tensor. So each model is first called on the first
    input alone, channels-last, without gradients (call this with the models
    in eval mode); if any of them fails, the block runs in the ordinary
    layout, and the failure, if it was the input's fault, shows up there with
    its own message. Inputs that are not ``(B, C, H, W)`` floats (token ids)
    leave the layout alone. Yields whether channels-last is on.
    """
    on = _CHANNELS_LAST.get()
    if not on and isinstance(inputs, Tensor) and inputs.dim() == 4 and inputs.is_floating_point():
        on = all(_accepts_channels_last(model, inputs) for model in models)
    token = _CHANNELS_LAST.set(on)
    try:
        yield on
    finally:
        _CHANNELS_LAST.reset(token)


# the probe's answers per model: (model_stamp, {(input shape, dtype, device): accepts})
_PROBED: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def _accepts_channels_last(model: nn.Module, inputs: Tensor) -> bool:
    """Whether ``model`` runs on a channels-last batch like ``inputs``: probed once per model state and shape."""
    stamp = model_stamp(model)
    if model not in _PROBED or _PROBED[model][0] != stamp:
        _PROBED[model] = (stamp, {})
    answers = _PROBED[model][1]
    key = (tuple(inputs.shape[1:]), inputs.dtype, inputs.device)
    if key not in answers:
        probe = _channels_last(inputs[:1])
        try:
            with torch.no_grad():
                model(probe)
            answers[key] = True
        except MODEL_ERRORS:
            answers[key] = False
    return answers[key]


def model_stamp(model: nn.Module) -> tuple:
    """What identifies a model's current state: its tensors' storages and versions, and its modes.

    Anything kept about a model (a hooked copy, a traced cut, a layout
    probe) is valid while its stamp is unchanged: a weight loaded, a module
    replaced or a train/eval switch changes it.
    """
    tensors = [*model.parameters(), *model.buffers()]
    return (tuple((t.data_ptr(), t._version) for t in tensors), tuple(m.training for m in model.modules()))


@contextlib.contextmanager
def replaced(module: nn.Module, where: str, make: Callable[[Tensor], Tensor]) -> Iterator[None]:
    """Replace a module's output (``where="output"``) or first input (``"input"``).

    ``make`` receives the original tensor (:func:`layer_tensor` of a tuple
    output) and returns its replacement, which may have more rows (noisy
    copies). The hook is removed when the block ends.
    """
    if where == "output":
        def hook(m, args, out):
            return with_layer_tensor(out, conv_layout(make(layer_tensor(out))))

        with forward_hooks([(module, hook)]):
            yield
        return
    if where != "input":
        raise ValueError(f"where must be 'input' or 'output', got {where!r}")
    handle = module.register_forward_pre_hook(lambda m, args: (conv_layout(make(args[0])),) + tuple(args[1:]))
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def preserved_state(model: nn.Module, eval_mode: bool = True,
                    freeze: bool = True) -> Iterator[nn.Module]:
    """Run a block with the model in eval mode and its parameters frozen.

    Freezing means no parameter gradient is computed or stored, and no
    activation is kept for one. Each module's train/eval flag and each
    parameter's ``requires_grad`` are restored afterwards, also on error.
    """
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        if eval_mode:
            model.eval()
        if freeze:
            for p, _ in flags:
                p.requires_grad_(False)
        yield model
    finally:
        for m, training in modes:
            m.training = training
        for p, requires_grad in flags:
            p.requires_grad_(requires_grad)


def features_at(model: nn.Module, layer: nn.Module, inputs: Tensor,
                layer_name: str = "layer") -> Tensor:
    """Run ``model`` on ``inputs`` only up to ``layer`` and return its output.

    The forward pass is cut off by an exception raised in the layer's hook, so
    nothing after the layer is computed.

    Raises:
        LayerNotReached: the forward pass never called ``layer``.
        TypeError: the layer's output is not a tensor.
        ValueError: the model failed on ``inputs`` before reaching the layer.
    """
    def stop(module, args, output):
        raise _StopForward(output)

    try:
        with forward_hooks([(layer, stop)]):
            model(conv_layout(inputs))
    except _StopForward as stopped:
        return layer_tensor(stopped.output, layer_name)
    except MODEL_ERRORS as err:
        raise rejected_input(model, inputs, err) from err
    raise LayerNotReached(f"the forward pass of {type(model).__name__} never called layer {layer_name!r}")


class _AllCaptured(Exception):
    """Raised inside a hook to end a forward pass once every layer was seen."""


def resolve_layers(model: nn.Module, layers: Sequence[str | nn.Module]) -> dict[str, nn.Module]:
    """``{dotted_name: module}`` for layers given by name or object, in the given order.

    Raises:
        ValueError: no layers, an unknown name (close names are listed), a
            module not in ``model``, or the same layer twice.
    """
    if isinstance(layers, (str, nn.Module)):
        layers = [layers]
    resolved: dict[str, nn.Module] = {}
    for layer in layers:
        name, module = resolve_layer(model, layer)
        if name in resolved:
            raise ValueError(f"layer {name!r} is given twice")
        resolved[name] = module
    if not resolved:
        raise ValueError("no layers given")
    return resolved


def capture(model: nn.Module, layers: Mapping[str, nn.Module], inputs: Tensor, *,
            run_to_end: bool = False) -> tuple[dict[str, Tensor], object]:
    """The outputs of several layers for ``inputs``, in one forward pass.

    Each output is copied, so that an in-place operation after the layer
    (``ReLU(inplace=True)``) cannot change it. Without ``run_to_end`` the
    pass stops as soon as every layer has run. Run it under ``no_grad`` when
    no gradient is needed.

    Args:
        model: the model.
        layers: ``{name: module}`` as :func:`resolve_layers` returns.
        inputs: what the model is called with.
        run_to_end: finish the pass and return the model's output too.

    Returns:
        ``({name: (B, *shape) tensor}, outputs)``; ``outputs`` is ``None``
        unless ``run_to_end``.

    Raises:
        LayerNotReached: a layer never ran (they are named).
        ValueError: the model rejected ``inputs``.
    """
    captured: dict[str, Tensor] = {}

    def grab(name: str):
        def hook(module, args, output):
            if name not in captured:
                captured[name] = layer_tensor(output, name).clone()
                if not run_to_end and len(captured) == len(layers):
                    raise _AllCaptured
        return hook

    outputs = None
    try:
        with forward_hooks([(module, grab(name)) for name, module in layers.items()]):
            outputs = model(inputs)
    except _AllCaptured:
        pass
    except MODEL_ERRORS as err:
        raise rejected_input(model, inputs, err) from err
    missing = [name for name in layers if name not in captured]
    if missing:
        raise LayerNotReached(
            f"the forward pass of {type(model).__name__} never called layer(s) {', '.join(map(repr, missing))}")
    return captured, outputs
