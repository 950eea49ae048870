"""InputIBA's third stage: a bottleneck on the input itself, with the GAN's mask as prior.

``Z = lam * x + (1 - lam) * eps`` with ``eps ~ N(0, 1)`` in the normalised
input space (the published choice), ``lam = blur(sigmoid(alpha))`` per pixel
and channel, and the capacity measured against the bottleneck with mask
``lambda_G * lam`` (:func:`inputiba.bottleneck.kl_capacity` with ``prior``), so
information the GAN found relevant is cheap. The attribution is
``sigmoid(alpha)`` averaged over channels: one value in ``[0, 1]`` per pixel.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from .estimation import FeatureStats
from .iba import BottleneckFit, IBAConfig, fit_bottleneck

__all__ = ["INPUT_DEFAULTS", "fit_input_bottleneck", "input_attribution"]

#: The published settings of the input stage (vision): beta 20, 60 steps, lr 1,
#: 10 copies, blur sigma 1.
INPUT_DEFAULTS = IBAConfig(beta=20.0, steps=60, lr=1.0, n_copies=10, sigma=1.0)


def fit_input_bottleneck(model: nn.Module, inputs: Tensor, prior: Tensor,
                         row_loss: Callable[[Tensor], Tensor], config: IBAConfig = INPUT_DEFAULTS,
                         seed: int | None = None) -> BottleneckFit:
    """Optimise the input-resolution bottleneck of each input.

    Args:
        model: the classifier, in eval mode with frozen parameters.
        inputs: ``(B, C, H, W)`` normalised inputs.
        prior: ``(B, C, H, W)`` the GAN's mask ``lambda_G`` in ``[0, 1]``.
        row_loss: per-row loss of the model's outputs for ``B * n_copies``
            rows (see :func:`inputiba.iba.row_loss_for`).
        config: the stage's settings (:data:`INPUT_DEFAULTS`).
        seed: seed of the noise.

    Returns:
        The fitted :class:`~inputiba.iba.BottleneckFit`; see
        :func:`input_attribution` for the map.
    """
    if prior.shape != inputs.shape:
        raise ValueError(f"prior mask {tuple(prior.shape)} and inputs {tuple(inputs.shape)} differ in shape")
    shape = inputs.shape[1:]
    standard = FeatureStats(mean=inputs.new_zeros(shape), std=inputs.new_ones(shape),
                            active=inputs.new_ones(shape), n_samples=0)
    return fit_bottleneck(model, model, "input", inputs, inputs, standard, config, row_loss,
                          prior=prior, seed=seed)


def input_attribution(fit: BottleneckFit) -> Tensor:
    """``(B, H, W)`` attribution in ``[0, 1]``: ``sigmoid(alpha)`` averaged over channels."""
    return torch.sigmoid(fit.alpha).mean(dim=1)
