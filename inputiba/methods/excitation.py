"""Excitation backprop and its contrastive form (Zhang et al., ECCV 2016 / IJCV 2018).

The top-down signal is a probability: the marginal winning probability (MWP)
of a neuron. A one-hot distribution at the target's output is passed down;
at a layer with non-negative inputs ``a_j`` and weights ``w_ij`` each output
neuron ``i`` hands its probability to its inputs in proportion to their
positive excitation:

    P(a_j) = sum_i P(z_i) * a_j w+_ij / sum_j' a_j' w+_ij'

Implemented by replacing the backward pass of every weighted layer
(``nn.Linear``, ``nn.Conv1d/2d/3d``, average pooling) through forward hooks
that route the output through :class:`_ExcitationRule`; ``nn.ReLU`` and max
pooling keep their gradient (which passes the probability to the active or
winning input), and ``nn.BatchNorm``/``nn.Dropout`` pass it unchanged
(element-wise layers, one child per neuron). The hooks are removed when the
call ends. Functional operations inside ``forward`` (a residual ``+``,
``torch.relu``) keep their ordinary gradient, which for a sum passes the
whole probability to both branches: on residual networks the maps are
relative, not probabilities.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..hooks import LayerNotReached, forward_hooks
from .base import AttributionMethod, layer_name, register, spatial_output, upsample

__all__ = ["ExcitationBackprop", "ContrastiveExcitationBackprop", "excitation_rules"]

_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_AVERAGING = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
              nn.AdaptiveAvgPool3d)
_ELEMENTWISE = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.Dropout, nn.Dropout2d)


class _ExcitationRule(torch.autograd.Function):
    """Forward: the layer's output. Backward: the MWP rule through ``positive(x)``."""

    @staticmethod
    def forward(ctx, x: Tensor, out: Tensor, positive: Callable[[Tensor], Tensor]) -> Tensor:
        ctx.save_for_backward(x)
        ctx.positive = positive
        return out.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            z = ctx.positive(leaf)
            share = torch.where(z > 0, grad / z.clamp_min(1e-12), torch.zeros_like(z))
            (back,) = torch.autograd.grad(z, leaf, share)
        return x * back, None, None


class _PassThrough(torch.autograd.Function):
    """Forward: the layer's output. Backward: the incoming signal unchanged."""

    @staticmethod
    def forward(ctx, x: Tensor, out: Tensor) -> Tensor:
        return out.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None


def _positive_part(module: nn.Module) -> Callable[[Tensor], Tensor]:
    """The layer's map with its weights clamped at 0 and without bias."""
    if isinstance(module, nn.Linear):
        return lambda t: F.linear(t, module.weight.clamp(min=0))
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return lambda t: module._conv_forward(t, module.weight.clamp(min=0), None)
    return module


def excitation_rules(model: nn.Module) -> list:
    """Forward hooks (for :func:`inputiba.hooks.forward_hooks`) that give ``model`` the MWP backward pass."""
    def rule(module, args, output):
        if not isinstance(output, Tensor) or not args or not isinstance(args[0], Tensor):
            return None
        if isinstance(module, _ELEMENTWISE):
            if args[0].shape != output.shape:
                return None
            return _PassThrough.apply(args[0], output.detach())
        return _ExcitationRule.apply(args[0], output.detach(), _positive_part(module))

    return [(m, rule) for m in model.modules() if isinstance(m, _WEIGHTED + _AVERAGING + _ELEMENTWISE)]


@register("excitation_backprop")
class ExcitationBackprop(AttributionMethod):
    """Excitation backprop (Zhang et al., 2016): the MWP of the target at a layer.

    The probability that reaches each element of ``layer``'s output, summed
    over channels and upsampled bilinearly to the input. ``(B, H, W)``,
    ``>= 0``; before upsampling a map sums to at most 1 (less where a neuron
    with no positive input, e.g. one driven by its bias, drops its share).
    The rule assumes non-negative layer inputs (post-ReLU), which holds
    above the first layer.

    Args:
        layer: where the probability is read: dotted name or module; ``None``
            takes the last ``nn.Conv2d`` (Zhang et al. read intermediate
            layers, e.g. VGG16's pool3 or conv4; pick one for your model).
    """

    unit = "marginal winning probability at the layer, summed over channels, upsampled (>= 0)"

    def __init__(self, model: nn.Module, layer: str | nn.Module | None = None) -> None:
        super().__init__(model)
        self.layer = layer_name(model, layer)

    def _top_signal(self, store: dict, logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """The tensor the probability starts from and its one-hot distribution."""
        return logits, F.one_hot(targets, logits.shape[1]).to(logits.dtype)

    def _hooks(self, store: dict) -> list:
        module = dict(self.model.named_modules())[self.layer]

        def grab(mod, args, output):
            store["out"] = output
            return output.clone() if isinstance(output, Tensor) else output

        return excitation_rules(self.model) + [(module, grab)]

    def _attribute(self, x: Tensor, targets: Tensor) -> Tensor:
        store: dict = {}
        with torch.enable_grad(), forward_hooks(self._hooks(store)):
            logits = self.model(x.clone().requires_grad_(True))
            if "out" not in store:
                raise LayerNotReached(
                    f"the forward pass of {type(self.model).__name__} never called layer {self.layer!r}")
            act = spatial_output(self.layer, store["out"])
            top, signal = self._top_signal(store, logits, targets)
            (prob,) = torch.autograd.grad(top, act, signal)
        return upsample(prob.detach().sum(dim=1), tuple(x.shape[-2:]))


@register("contrastive_excitation_backprop")
class ContrastiveExcitationBackprop(ExcitationBackprop):
    """Contrastive excitation backprop (Zhang et al., 2016): target MWP minus its dual's.

    The dual unit has the target's classifier weights negated, so it stands
    for "everything but the target". At the input of ``classifier`` both
    probabilities are computed in closed form,
    ``P(a_j) = a_j (+-w_cj)+ / sum_j' a_j' (+-w_cj')+``, and their difference
    is passed down to ``layer`` by the MWP rule; since the rule is linear in
    the passed signal, the map is ``MWP_target - MWP_dual`` at ``layer``.
    Summed over channels and upsampled bilinearly. ``(B, H, W)``, signed:
    positive where the evidence is for the target rather than against it;
    before upsampling a map sums to about 0.

    Args:
        layer: as for :class:`ExcitationBackprop` (default: the last ``nn.Conv2d``).
        classifier: the ``nn.Linear`` whose outputs are the model's scores;
            ``None`` takes the last ``nn.Linear`` of the model.
    """

    unit = "target minus dual marginal winning probability at the layer, upsampled (signed)"

    def __init__(self, model: nn.Module, layer: str | nn.Module | None = None,
                 classifier: str | nn.Module | None = None) -> None:
        super().__init__(model, layer)
        if classifier is None:
            linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
            if not linear:
                raise ValueError(f"model {type(model).__name__} has no nn.Linear; pass classifier=")
            classifier = linear[-1]
        self.classifier = layer_name(model, classifier)
        if not isinstance(dict(model.named_modules())[self.classifier], nn.Linear):
            raise TypeError(f"classifier {self.classifier!r} must be an nn.Linear")

    def _hooks(self, store: dict) -> list:
        module = dict(self.model.named_modules())[self.classifier]

        def grab_input(mod, args, output):
            store["classifier_in"] = args[0]
            store["classifier_out"] = output

        return super()._hooks(store) + [(module, grab_input)]

    def _top_signal(self, store: dict, logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        if "classifier_in" not in store or store["classifier_out"].shape != logits.shape:
            raise ValueError(f"the outputs of classifier {self.classifier!r} must be the model's scores")
        a = store["classifier_in"].detach()
        w = dict(self.model.named_modules())[self.classifier].weight[targets]

        def mwp(weights: Tensor) -> Tensor:
            excitation = a * weights.clamp(min=0)
            total = excitation.sum(dim=1, keepdim=True)
            return torch.where(total > 0, excitation / total.clamp_min(1e-12), torch.zeros_like(excitation))

        return store["classifier_in"], mwp(w) - mwp(-w)
