"""Extremal perturbation (Fong, Patrick & Vedaldi, ICCV 2019), "preserve" variant.

Find the smooth mask ``m`` of a given area ``a`` that keeps the target score
highest when everything outside it is blurred away:

    max_m  score(m * x + (1 - m) * blur(x))  -  lambda_t * || sort(m) - r_a ||^2 / HW

``r_a`` is the sorted reference mask with a fraction ``a`` of ones: the area
term forces the mask to be (nearly) binary with exactly that area, rather
than penalising its size. ``lambda_t`` grows geometrically, as in TorchRay.

What is simplified against TorchRay's implementation: the mask is a
low-resolution grid of parameters (one per ``step`` pixels) upsampled
bilinearly and smoothed by a Gaussian, instead of TorchRay's smooth-max of
Gaussian bumps; the perturbation blends with one blurred copy of the image
instead of choosing among a pyramid of blur levels; the optimiser is Adam
(learning rate 0.05, parameters starting at 0.5) instead of SGD with
momentum (0.01, starting at 1); one area per call.

As in TorchRay, the area weight ``lambda_0 = 300`` suits ImageNet logits: the
score's gradient must outweigh the area term early on, or the mask settles
on whatever region the area term favoured first. For a model with much
smaller scores, lower ``area_weight``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..bottleneck import smooth_mask
from .base import AttributionMethod, register

__all__ = ["ExtremalPerturbation", "area_loss", "extremal_mask"]


def area_loss(mask: Tensor, area: float) -> Tensor:
    """Mean squared distance of each sorted mask from a binary mask of the given area.

    Args:
        mask: ``(B, H, W)`` values in ``[0, 1]``.
        area: fraction of ones in the reference, in ``(0, 1)``.

    Returns:
        ``(B,)`` loss, 0 when a mask is binary with exactly ``round(area * H * W)`` ones.
    """
    flat = mask.flatten(1)
    n = flat.shape[1]
    reference = torch.zeros(n, device=mask.device, dtype=mask.dtype)
    reference[n - round(area * n):] = 1.0
    return ((flat.sort(dim=1).values - reference) ** 2).mean(dim=1)


def extremal_mask(params: Tensor, size: tuple[int, int], sigma: float) -> Tensor:
    """``(B, h, w)`` parameters in ``[0, 1]`` -> ``(B, H, W)`` smooth mask in ``[0, 1]``.

    Bilinear upsampling followed by a Gaussian blur of ``sigma`` pixels
    (:func:`inputiba.bottleneck.smooth_mask`; 0 turns it off).
    """
    up = F.interpolate(params[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    return smooth_mask(up, sigma)


@register("extremal_perturbation")
class ExtremalPerturbation(AttributionMethod):
    """Extremal perturbation (Fong et al., 2019): the smooth mask of fixed area that keeps the score.

    The score is the target's output as the model gives it (the logit, as
    TorchRay's reward). All images of a batch are optimised together, each
    with its own mask; since the objective is a sum of per-image terms and
    Adam works per element, an image's mask does not depend on the others.
    Deterministic (no random draws; ``jitter`` flips the image on every
    other step). ``(B, H, W)`` mask in ``[0, 1]``: 1 where the image is kept.

    Sizes default to TorchRay's settings for 224-pixel images scaled to the
    input height ``H``: one mask parameter per ``7 H / 224`` pixels, a blur
    of ``20 H / 224`` pixels for the perturbation and half the step for
    smoothing the mask.

    Args:
        area: fraction of the image the mask keeps (0.3, the papers' setting;
            TorchRay's default is 0.1).
        iterations: Adam steps (TorchRay takes 800).
        lr: Adam learning rate of the mask parameters (clamped to ``[0, 1]``).
        step: pixels per mask parameter (``None``: scaled from 7 at 224 px).
        blur_sigma: std in pixels of the blur that removes information
            (``None``: scaled from 20 at 224 px).
        smooth_sigma: std in pixels of the mask's Gaussian smoothing
            (``None``: half the step).
        area_weight: initial weight ``lambda_0`` of the area term (300).
        area_growth: factor of ``lambda_t`` per step (1.0035).
        jitter: flip the perturbed image horizontally on every other step
            (TorchRay's guard against adversarial masks).
    """

    unit = "[0, 1] mask of the preserved region"

    def __init__(self, model: nn.Module, area: float = 0.3, iterations: int = 300, lr: float = 0.05,
                 step: int | None = None, blur_sigma: float | None = None,
                 smooth_sigma: float | None = None, area_weight: float = 300.0,
                 area_growth: float = 1.0035, jitter: bool = True) -> None:
        super().__init__(model)
        if not 0 < area < 1:
            raise ValueError(f"area must be in (0, 1), got {area}")
        if iterations < 1 or lr <= 0 or (step is not None and step < 1):
            raise ValueError("iterations, lr and step must be positive")
        self.area, self.iterations, self.lr = area, iterations, lr
        self.step, self.blur_sigma, self.smooth_sigma = step, blur_sigma, smooth_sigma
        self.area_weight, self.area_growth, self.jitter = area_weight, area_growth, jitter

    def _sizes(self, H: int) -> tuple[int, float, float]:
        step = self.step or max(1, round(7 * H / 224))
        blur = self.blur_sigma if self.blur_sigma is not None else 20 * H / 224
        smooth = self.smooth_sigma if self.smooth_sigma is not None else step / 2
        return step, blur, smooth

    def _attribute(self, x: Tensor, targets: Tensor) -> Tensor:
        B, _, H, W = x.shape
        step, blur, smooth = self._sizes(H)
        with torch.no_grad():
            blurred = smooth_mask(x, blur) if blur > 0 else torch.zeros_like(x)
        params = torch.full((B, math.ceil(H / step), math.ceil(W / step)), 0.5, device=x.device,
                            dtype=x.dtype, requires_grad=True)
        optimiser = torch.optim.Adam([params], lr=self.lr)
        weight = self.area_weight
        rows = torch.arange(B, device=x.device)
        with torch.enable_grad():
            for t in range(self.iterations):
                mask = extremal_mask(params, (H, W), smooth)
                perturbed = mask[:, None] * x + (1 - mask[:, None]) * blurred
                if self.jitter and t % 2 == 0:
                    perturbed = torch.flip(perturbed, dims=(3,))
                score = self.model(perturbed)[rows, targets]
                loss = (-score + weight * area_loss(mask, self.area)).sum()
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                with torch.no_grad():
                    params.clamp_(0, 1)
                weight *= self.area_growth
        with torch.no_grad():
            return extremal_mask(params, (H, W), smooth)
