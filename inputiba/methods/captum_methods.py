"""Baselines wrapped from Captum, with the settings the papers used as defaults.

Captum does the work; these classes only fix the settings, reduce the
``(B, C, H, W)`` attribution over channels (each docstring says how and with
which sign) and upsample layer maps bilinearly to input resolution. Captum is
an optional dependency (``pip install 'inputiba[baselines]'``); it is imported
when a method is built.

Methods that hook modules' backward passes or attach state to them (guided
backprop, deconvolution, Guided Grad-CAM, LRP, DeepLIFT-SHAP) run on a deep
copy of the model with in-place activations made out-of-place
(:func:`~inputiba.methods.base.detached_copy`), so ``ReLU(inplace=True)``
works and the user's model is never modified. All of them see only
``nn.Module`` activations: a ``torch.relu`` called inside ``forward`` keeps its
ordinary gradient (Captum's own limitation).

Scores are the model's outputs as they are (logits for a classifier that
returns logits), as in Captum.
"""
from __future__ import annotations

import warnings
from typing import ClassVar, Iterable

import torch
from torch import Tensor, nn

from ..validation import batch_inputs
from .base import (AttributionMethod, detached_copy, generator, last_conv_activation, layer_name, reduce_channels,
                   register, seeded, spatial_output, upsample)

__all__ = ["CaptumMethod", "Gradient", "SmoothGrad", "IntegratedGradients", "GuidedBackprop",
           "Deconvolution", "GradCAM", "GuidedGradCAM", "Occlusion", "LRP", "DeepLiftShap"]


def _captum():
    try:
        import captum.attr
    except ImportError as err:
        raise ImportError("the Captum baselines need captum: pip install 'inputiba[baselines]' "
                          "(or pip install 'captum>=0.7')") from err
    return captum.attr


class CaptumMethod(AttributionMethod):
    """A Captum attribution of the inputs, reduced over channels.

    Subclasses implement :meth:`_captum_attribute`, which returns Captum's
    ``(B, C, H, W)`` attribution; :attr:`default_reduction` names how it is
    reduced (see :data:`~inputiba.methods.base.REDUCTIONS`).

    Args:
        model: the classifier.
        reduction: overrides :attr:`default_reduction` (``"max_abs"``,
            ``"sum_abs"``, ``"sum"`` or ``"mean"``).
    """

    default_reduction: ClassVar[str] = "sum"

    def __init__(self, model: nn.Module, reduction: str | None = None) -> None:
        super().__init__(model)
        self.captum = _captum()
        self.reduction = reduction or self.default_reduction
        reduce_channels(torch.zeros(1, 1, 1, 1), self.reduction)

    def _attribute(self, x: Tensor, targets: Tensor) -> Tensor:
        with torch.enable_grad(), warnings.catch_warnings():
            # Captum's notices about hooks it sets on activations: they go on our copy
            warnings.filterwarnings("ignore", message="Setting (forward, )?backward hooks")
            attribution = self._captum_attribute(x.clone().requires_grad_(True), targets)
        return reduce_channels(attribution.detach(), self.reduction)

    def _captum_attribute(self, x: Tensor, targets: Tensor) -> Tensor:
        raise NotImplementedError


@register("gradient")
class Gradient(CaptumMethod):
    """Gradient saliency (Simonyan et al., 2014), Captum's ``Saliency``.

    The gradient of the target score with respect to each input element,
    reduced by the maximum of its absolute value over channels, as in the
    paper. ``(B, H, W)``, ``>= 0``.
    """

    unit = "|d score / d input|, max over channels (>= 0)"
    default_reduction = "max_abs"

    def _captum_attribute(self, x: Tensor, targets: Tensor) -> Tensor:
        return self.captum.Saliency(self.model).attribute(x, target=targets, abs=False)


@register("smoothgrad")
class SmoothGrad(CaptumMethod):
    """SmoothGrad (Smilkov et al., 2017), Captum's ``NoiseTunnel`` over ``Saliency``.

    The gradient averaged over ``n_samples`` noisy copies of each image, the
    noise Gaussian with std ``noise * (max - min)`` of that image (the
    paper's 15 % of the input range, 50 samples). The average is of the signed
    gradients; the map is the sum of its absolute values over channels, as
    in the paper's figures. ``(B, H, W)``, ``>= 0``.

    Every image is explained with the same noise draws (``seed``), so an
    image's map does not depend on the rest of the batch.

    Args:
        n_samples: noisy copies per image.
        noise: noise std as a fraction of each image's value range.
        batch_size: noisy copies per forward pass.
        seed: seed of the noise; ``None`` draws fresh noise.
    """

    unit = "|mean d score / d input| over noisy copies, summed over channels (>= 0)"
    default_reduction = "sum_abs"

    def __init__(self, model: nn.Module, n_samples: int = 50, noise: float = 0.15,
                 batch_size: int = 50, seed: int | None = 0, reduction: str | None = None) -> None:
        super().__init__(model, reduction)
        if n_samples < 1 or batch_size < 1 or noise < 0:
            raise ValueError("n_samples and batch_size must be positive and noise non-negative")
        self.n_samples, self.noise, self.batch_size, self.seed = n_samples, noise, batch_size, seed

    def _captum_attribute(self, x: Tensor, targets: Tensor) -> Tensor:
        tunnel = self.captum.NoiseTunnel(self.captum.Saliency(self.model))
        maps = []
        for b in range(x.shape[0]):
            xb = x[b:b + 1]
            std = float(self.noise * (xb.max() - xb.min()).detach())
            with seeded(self.seed, x.device):
                maps.append(tunnel.attribute(
                    xb, nt_type="smoothgrad", nt_samples=self.n_samples,
                    nt_samples_batch_size=min(self.batch_size, self.n_samples), stdevs=std,
                    target=int(targets[b]), abs=False))
        return torch.cat(maps)


@register("integrated_gradients")
class IntegratedGradients(CaptumMethod):
    """Integrated Gradients (Sundararajan et al., 2017), Captum's implementation.

    ``(x - baseline) * mean gradient`` along the straight path from the
    baseline, with ``n_steps`` points of Captum's default Gauss-Legendre rule
    (the paper's 50 steps). Summed over channels, signed: positive raises
    the target score. The map sums to about ``score(x) - score(baseline)``.

    Args:
        n_steps: points on the path.
        baseline: the reference input, a number (``0``: zero in the model's
            input space, the mean image for normalised inputs) or a tensor
            broadcastable to the inputs.
        method: Captum's integration rule (``"gausslegendre"``, ``"riemann_trapezoid"``, ...).
        batch_size: rows (inputs x path points) per forward pass.
    """

    unit = "score change attributed per pixel, summed over channels (signed)"
    default_reduction = "sum"

    def __init__(self, model: nn.Module, n_steps: int = 50, baseline: float | Tensor = 0.0,
                 method: str = "gausslegendre", batch_size: int = 64,
                 reduction: str | None = None) -> None:
        super().__init__(model, reduction)
        if n_steps < 1:
            raise ValueError(f"n_steps must be positive, got {n_steps}")
        self.n_steps, self.baseline, self.method, self.batch_size = n_steps, baseline, method, batch_size

    def _captum_attribute(self, x: Tensor, targets: Tensor) -> Tensor:
        baseline = self.baseline.to(x) if isinstance(self.baseline, Tensor) else float(self.baseline)
        return self.captum.IntegratedGradients(self.model).attribute(
            x, baselines=baseline, target=targets, n_steps=self.n_steps, method=self.method,
            internal_batch_size=self.batch_size)


@register("guided_backprop")
class GuidedBackprop(CaptumMethod):
    """Guided backpropagation (Springenberg et al., 2015), Captum's ``GuidedBackprop``.

    Only positive gradients pass each ``nn.ReLU``. Reduced by the maximum
    absolute value over channels (TorchRay's convention). ``(B, H, W)``, ``>= 0``.
    """

    unit = "|guided gradient|, max over channels (>= 0)"
    default_reduction = "max_abs"

    def _captum_attribute(self, x: Tensor, targets: Tensor) -> Tensor:
        with self.model_copy() as clone:
            return self.captum.GuidedBackprop(clone).attribute(x, target=targets)


@register("deconvolution")
class Deconvolution(CaptumMethod):
    """Deconvnet (Zeiler & Fergus, 2014), Captum's ``Deconvolution``.

    Each ``nn.ReLU`` passes the positive part of the incoming signal,
    whatever its forward input was. Reduced by the maximum absolute value
    over channels. ``(B, H, W)``, ``>= 0``.
    """

    unit = "|deconvnet signal|, max over channels (>= 0)"
    default_reduction = "max_abs"

    def _captum_attribute(self, x: Tensor, targets: Tensor) -> Tensor:
        with self.model_copy() as clone:
            return self.captum.Deconvolution(clone).attribute(x, target=targets)


@register("grad_cam")
class GradCAM(AttributionMethod):
    """Grad-CAM (Selvaraju et al., 2017), Captum's ``LayerGradCam``.

    ``ReLU(sum_k w_k A_k)`` at ``layer`` with ``w_k`` the spatial mean of the
    target score's gradient on channel ``k``; upsampled bilinearly to the
    input size. ``(B, H, W)``, ``>= 0``, in units of the layer's activations
    times the score's gradient.

    Args:
        layer: dotted name or module; ``None`` takes the last ``nn.Conv2d``'s
            activation (the ``nn.ReLU`` right after it, else the conv itself;
            :func:`~inputiba.methods.base.last_conv_activation`).
    """

    unit = "ReLU(gradient-weighted layer activations), upsampled (>= 0)"

    def __init__(self, model: nn.Module, layer: str | nn.Module | None = None) -> None:
        super().__init__(model)
        self.captum = _captum()
        self.layer = last_conv_activation(model) if layer is None else layer_name(model, layer)

    def _attribute(self, x: Tensor, targets: Tensor) -> Tensor:
        module = dict(self.model.named_modules())[self.layer]
        with torch.enable_grad():
            cam = self.captum.LayerGradCam(self.model, module).attribute(
                x.clone().requires_grad_(True), target=targets, relu_attributions=True)
        return upsample(spatial_output(self.layer, cam).detach().sum(dim=1), tuple(x.shape[-2:]))


@register("guided_grad_cam")
class GuidedGradCAM(CaptumMethod):
    """Guided Grad-CAM (Selvaraju et al., 2017), Captum's ``GuidedGradCam``.

    Guided backpropagation times the Grad-CAM map of ``layer`` (upsampled
    bilinearly), reduced by the maximum absolute value over channels.
    ``(B, H, W)``, ``>= 0``.

    Args:
        layer: as for :class:`GradCAM` (default: the last ``nn.Conv2d``'s activation).
    """

    unit = "|guided gradient x Grad-CAM|, max over channels (>= 0)"
    default_reduction = "max_abs"

    def __init__(self, model: nn.Module, layer: str | nn.Module | None = None,
                 reduction: str | None = None) -> None:
        super().__init__(model, reduction)
        self.layer = last_conv_activation(model) if layer is None else layer_name(model, layer)

    def _captum_attribute(self, x: Tensor, targets: Tensor) -> Tensor:
        clone = detached_copy(self.model)
        module = dict(clone.named_modules())[self.layer]
        return self.captum.GuidedGradCam(clone, module).attribute(
            x, target=targets, interpolate_mode="bilinear")


@register("occlusion_14", window=14)
@register("occlusion", window=8)
class Occlusion(CaptumMethod):
    """Occlusion (Zeiler & Fergus, 2014), Captum's ``Occlusion``.

    A ``window x window`` patch (all channels) is set to ``baseline`` at every
    ``stride`` pixels; a pixel's value is the drop of the target score,
    ``score(x) - score(occluded x)``, averaged over the patches that cover it.
    The default stride is the window, so the image is cut into tiles as in
    the IBA paper's 8x8 and 14x14 settings (``"occlusion"`` is 8x8,
    ``"occlusion_14"`` 14x14); pixels beyond the last whole tile are never
    occluded and get 0. All channels get the same value; the map is their
    mean. ``(B, H, W)``, signed: positive where hiding the pixels lowers the score.

    Args:
        window: patch side in pixels.
        stride: step between patches (``None``: the window).
        baseline: value the patch is set to (0: the mean image for inputs
            normalised per channel).
        batch_size: occluded images per forward pass.
    """

    unit = "drop of the target score when the patch is occluded (signed)"
    default_reduction = "mean"

    def __init__(self, model: nn.Module, window: int = 8, stride: int | None = None,
                 baseline: float = 0.0, batch_size: int = 64, reduction: str | None = None) -> None:
        super().__init__(model, reduction)
        stride = window if stride is None else stride
        if window < 1 or stride < 1 or batch_size < 1:
            raise ValueError("window, stride and batch_size must be positive")
        self.window, self.stride, self.baseline, self.batch_size = window, stride, baseline, batch_size

    def _captum_attribute(self, x: Tensor, targets: Tensor) -> Tensor:
        B, C, H, W = x.shape
        if self.window > min(H, W):
            raise ValueError(f"occlusion window {self.window} is larger than the {H}x{W} input")
        return self.captum.Occlusion(self.model).attribute(
            x, sliding_window_shapes=(C, self.window, self.window), strides=(C, self.stride, self.stride),
            baselines=float(self.baseline), target=targets,
            perturbations_per_eval=max(1, self.batch_size // B))


#: Parameter-free modules that only reshape; the epsilon rule passes relevance through them unchanged.
_SHAPE_ONLY = (nn.Flatten, nn.Unflatten, nn.Identity)


@register("lrp")
class LRP(CaptumMethod):
    """Layer-wise relevance propagation, epsilon rule (Bach et al., 2015), Captum's ``LRP``.

    Every ``nn.Conv2d``, ``nn.Linear`` and ``nn.BatchNorm2d`` gets the
    epsilon rule with ``epsilon``; pooling layers and shape-only modules
    (``Flatten``, ``Unflatten``, ``Identity``) Captum's default epsilon rule
    (1e-9), which passes relevance through them unchanged; ``ReLU``,
    ``Dropout`` and ``Tanh`` pass it as Captum does. The rules are attached
    to a copy of the model. Summed over channels, signed: the map sums to the
    target score less what biases and epsilon absorb.

    Raises:
        ValueError: the model holds a layer Captum's LRP has no rule for
            (named in the message), or uses a module twice in one forward pass.

    Args:
        epsilon: stabiliser of the rule at weighted layers (the default is
            Captum's, ``1e-9``; larger values absorb weak, noisy relevance).
    """

    unit = "relevance (share of the target score), summed over channels (signed)"
    default_reduction = "sum"

    def __init__(self, model: nn.Module, epsilon: float = 1e-9, reduction: str | None = None) -> None:
        super().__init__(model, reduction)
        if epsilon < 0:
            raise ValueError(f"epsilon must be non-negative, got {epsilon}")
        self.epsilon = epsilon

    def _with_rules(self) -> nn.Module:
        # Captum's own tables of what its LRP supports (private, but they define what works)
        from captum.attr._core.lrp import SUPPORTED_LAYERS_WITH_RULES, SUPPORTED_NON_LINEAR_LAYERS
        from captum.attr._utils.lrp_rules import EpsilonRule

        clone = detached_copy(self.model)
        unsupported = []
        for name, module in clone.named_modules():
            if next(module.children(), None) is not None or module is clone:
                continue
            if isinstance(module, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)) and \
                    type(module) in SUPPORTED_LAYERS_WITH_RULES:
                module.rule = EpsilonRule(epsilon=self.epsilon)
            elif type(module) in SUPPORTED_LAYERS_WITH_RULES or isinstance(module, _SHAPE_ONLY):
                module.rule = EpsilonRule()
            elif type(module) not in SUPPORTED_NON_LINEAR_LAYERS:
                unsupported.append(f"{name} ({type(module).__name__})")
        if unsupported:
            raise ValueError(
                f"Captum's LRP has no rule for layer(s) {', '.join(unsupported)} of model "
                f"{type(self.model).__name__}; it supports Conv2d, Linear, BatchNorm2d, max/avg "
                "pooling, ReLU, Dropout, Tanh and shape-only modules")
        return clone

    def _captum_attribute(self, x: Tensor, targets: Tensor) -> Tensor:
        try:
            return self.captum.LRP(self._with_rules()).attribute(x, target=targets)
        except RuntimeError as err:
            if "more than once" in str(err):
                raise ValueError(
                    f"Captum's LRP cannot explain model {type(self.model).__name__}: a module is "
                    "called more than once in its forward pass; give each use its own module") from err
            raise


@register("deeplift_shap")
class DeepLiftShap(CaptumMethod):
    """DeepLIFT-SHAP (Lundberg & Lee, 2017), Captum's ``DeepLiftShap``.

    DeepLIFT's rescale-rule attributions averaged over a set of baselines.
    Summed over channels, signed: on ReLU networks without max pooling the
    map sums to ``score(x) - mean score(baselines)``. Captum's max-pooling
    rule does not keep that sum exactly, and in a batch it reads the first
    row's gradient where input and baseline agree (captum#1276); so each
    image is explained in a call of its own.

    The baselines, in order of precedence: a tensor given as ``baselines``;
    ``n_baselines`` images drawn from data by :meth:`prepare` (SHAP's
    background distribution); otherwise, per image, the zero image plus
    ``n_baselines - 1`` copies of it with Gaussian noise of std
    ``noise * (max - min)`` of that image (seeded, the same draws for every
    image). Runs on a copy of the model (Captum's DeepLIFT hooks every
    nonlinearity module; a module used twice in one forward pass gives wrong
    multipliers).

    Args:
        baselines: ``(n >= 2, C, H, W)`` reference images, or ``None``.
        n_baselines: number of baselines when they are drawn (each image
            then takes ``2 n`` rows in one forward pass).
        noise: std of the noise baselines as a fraction of the image's range.
        seed: seed of the noise baselines; ``None`` draws fresh ones.
    """

    unit = "score change attributed per pixel, summed over channels (signed)"
    default_reduction = "sum"

    def __init__(self, model: nn.Module, baselines: Tensor | None = None, n_baselines: int = 10,
                 noise: float = 0.1, seed: int | None = 0, reduction: str | None = None) -> None:
        super().__init__(model, reduction)
        if n_baselines < 2:
            raise ValueError("DeepLIFT-SHAP needs at least 2 baselines (Captum's requirement)")
        if baselines is not None and (baselines.dim() != 4 or baselines.shape[0] < 2):
            raise ValueError(f"baselines must be (n >= 2, C, H, W), got {tuple(baselines.shape)}")
        self.baselines, self.n_baselines, self.noise, self.seed = baselines, n_baselines, noise, seed

    def prepare(self, loader: Iterable, n_samples: int | None = None) -> None:
        """Take the first ``n_samples`` (default ``n_baselines``) images of ``loader`` as baselines."""
        n = n_samples or self.n_baselines
        taken, count = [], 0
        for batch in loader:
            images = batch_inputs(batch)
            taken.append(images[: n - count].detach().cpu())
            count += taken[-1].shape[0]
            if count >= n:
                break
        if count < 2:
            raise ValueError("DeepLIFT-SHAP needs at least 2 baseline images from the loader")
        self.baselines = torch.cat(taken)

    def _baselines_for(self, xb: Tensor) -> Tensor:
        if self.baselines is not None:
            base = self.baselines.to(xb)
            if base.shape[1:] != xb.shape[1:]:
                raise ValueError(f"baselines of shape {tuple(base.shape[1:])} do not match inputs "
                                 f"of shape {tuple(xb.shape[1:])}")
            return base
        std = float(self.noise * (xb.max() - xb.min()).detach())
        shape = (self.n_baselines - 1,) + tuple(xb.shape[1:])
        noisy = torch.randn(shape, generator=generator(self.seed)).to(xb) * std
        return torch.cat([torch.zeros_like(xb), noisy])

    def _captum_attribute(self, x: Tensor, targets: Tensor) -> Tensor:
        explainer = self.captum.DeepLiftShap(detached_copy(self.model))
        return torch.cat([explainer.attribute(x[b:b + 1], baselines=self._baselines_for(x[b:b + 1]),
                                              target=targets[b:b + 1]) for b in range(x.shape[0])])
