"""Two short methods: the random baseline and TorchRay's linear approximation."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..adapters import TokenAdapter
from ..evaluation import movable_tokens
from ..hooks import LayerNotReached, forward_hooks
from ..seeding import InputStreams, Seeds, input_seeds
from .base import AttributionMethod, layer_name, register, spatial_output, upsample

__all__ = ["Random", "LinearApproximation"]


@register("random")
class Random(AttributionMethod):
    """The random baseline: uniform noise in ``[0, 1)``, independent of the model.

    Each input gets its own draw from its own stream (:mod:`inputiba.seeding`),
    so its map does not depend on the rest of the batch. ``(B, H, W)``, no
    unit. Given ``input_layer`` (a text model's embedding layer) it scores
    ``(B, T)`` token ids instead, 0 at padding and special tokens, a text's
    scores not depending on its padding.

    Args:
        seed: an int (input ``i`` of a call gets ``input_seed(seed, i)``), one
            seed per input, or ``None`` (fresh noise at every call).
        input_layer: the embedding layer of a text classifier.
        pad_index: the padding id of token ids (default: the model's or the embedding's).
    """

    unit = "uniform noise in [0, 1) (no meaning)"
    per_input_seeds = True

    def __init__(self, model: nn.Module, seed: Seeds = 0, *, input_layer: str | nn.Module | None = None,
                 pad_index: int | None = None) -> None:
        super().__init__(model)
        self.seed = seed
        self.tokens = None
        if input_layer is not None:
            self.tokens = TokenAdapter(model, input_layer, pad_index)
            self.modality, self.pad_index = "tokens", self.tokens.pad_index

    def _attribute(self, x: Tensor, targets: Tensor) -> Tensor:
        streams = InputStreams(input_seeds(self.seed, x.shape[0]), "cpu")
        if self.tokens is not None:  # a stream's first T draws do not depend on how many follow
            u = streams.rand(x.shape[1]).to(x.device)
            return u * movable_tokens(x, self.pad_index, self.tokens.special_ids)
        B, _, H, W = x.shape
        return streams.rand(H, W).to(device=x.device, dtype=x.dtype)


def layer_activation_and_gradient(model: nn.Module, layer: str, x: Tensor,
                                  targets: Tensor) -> tuple[Tensor, Tensor]:
    """A layer's output ``A`` and the gradient of the target scores with respect to it.

    ``A`` is kept as the layer computed it: the model continues on a copy, so
    an in-place activation after the layer does not change it. Both are
    ``(B, *layer_shape)``, detached.
    """
    module = dict(model.named_modules())[layer]
    store = {}

    def grab(mod, args, output):
        store["out"] = output
        return output.clone() if isinstance(output, Tensor) else output

    with torch.enable_grad(), forward_hooks([(module, grab)]):
        logits = model(x.clone().requires_grad_(True))
        if "out" not in store:
            raise LayerNotReached(f"the forward pass of {type(model).__name__} never called layer {layer!r}")
        act = spatial_output(layer, store["out"])
        (grad,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), act)
    return act.detach(), grad.detach()


@register("linear_approximation")
class LinearApproximation(AttributionMethod):
    """Linear approximation (TorchRay): gradient times activation at a layer.

    ``sum_k A_k * d score / d A_k`` over the channels of ``layer``'s output,
    the first-order Taylor term of the target score in the layer's
    activations, upsampled bilinearly to the input. ``(B, H, W)``, signed:
    positive where the activations raise the score.

    Args:
        layer: dotted name or module; ``None`` takes the last ``nn.Conv2d``.
    """

    unit = "activation x gradient at the layer, summed over channels, upsampled (signed)"

    def __init__(self, model: nn.Module, layer: str | nn.Module | None = None) -> None:
        super().__init__(model)
        self.layer = layer_name(model, layer)

    def _attribute(self, x: Tensor, targets: Tensor) -> Tensor:
        act, grad = layer_activation_and_gradient(self.model, self.layer, x, targets)
        return upsample((act * grad).sum(dim=1), tuple(x.shape[-2:]))
