"""InputIBA's third stage: a bottleneck on the input itself, with the GAN's mask as prior.

``Z = lam * x + (1 - lam) * eps`` with ``lam = blur(sigmoid(alpha))`` per
element of the input, and the capacity measured against the bottleneck with
mask ``lambda_G * lam`` (:func:`inputiba.bottleneck.kl_capacity` with
``prior``), so information the GAN found relevant is cheap.

For images ``x`` is the normalised image and ``eps ~ N(0, 1)`` (the published
choice); the attribution is ``sigmoid(alpha)`` averaged over channels, one
value in ``[0, 1]`` per pixel. For text ``x`` is the embedding layer's output
and ``eps ~ N(mu, sigma^2)`` with the embeddings' statistics over real tokens
(embeddings are not standardised); the attribution is averaged over the
embedding dimension, one value per token, 0 at padding; by default
(:data:`TEXT_INPUT_DEFAULTS`) the mask is one value per token in the first
place, and a token's information is priced independently of the text's length.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from .adapters import Adapter, ImageAdapter, expand_valid
from .estimation import FeatureStats
from .iba import BottleneckFit, IBAConfig, fit_bottleneck
from .seeding import Seeds

__all__ = ["INPUT_DEFAULTS", "TEXT_INPUT_DEFAULTS", "TEXT_INPUT_PUBLISHED", "fit_input_bottleneck",
           "input_attribution"]

#: The published settings of the input stage (vision): beta 20, 60 steps, lr 1,
#: 10 copies, blur sigma 1.
INPUT_DEFAULTS = IBAConfig(beta=20.0, steps=60, lr=1.0, n_copies=10, sigma=1.0)

#: The input stage for text: 30 steps, lr 0.5, 10 copies, no blur (published),
#: with one mask value per token, shared over the embedding dimension, and a
#: price per token that does not depend on the text's length: beta 0.13 times
#: the sum over tokens of the capacity averaged over the embedding dimension.
#: The published text setting (beta 30 on the mean over all T x D elements, a
#: mask per element, set on IMDb reviews of about 230 tokens) charges a token
#: 30 / T: 0.13 at IMDb's length, but 1.4 in a 21-token Rotten Tomatoes
#: snippet, where every token then stays closed (``benchmarks/RESULTS.md``).
#: ``TEXT_INPUT_PUBLISHED`` keeps the published form.
TEXT_INPUT_DEFAULTS = IBAConfig(beta=0.13, steps=30, lr=0.5, n_copies=10, sigma=0.0, shared_mask=True,
                                information="per_position")

#: The published settings of the input stage for text: beta 30 on the mean
#: over the elements, a mask per (token, embedding dimension), 30 steps, lr 0.5,
#: 10 copies, no blur.
TEXT_INPUT_PUBLISHED = IBAConfig(beta=30.0, steps=30, lr=0.5, n_copies=10, sigma=0.0)


def fit_input_bottleneck(model: nn.Module, inputs: Tensor, prior: Tensor,
                         row_loss: Callable[[Tensor], Tensor], config: IBAConfig = INPUT_DEFAULTS,
                         seed: Seeds = None, adapter: Adapter | None = None,
                         stats: FeatureStats | None = None) -> BottleneckFit:
    """Optimise the input-resolution bottleneck of each input.

    Args:
        model: the classifier, in eval mode with frozen parameters.
        inputs: ``(B, C, H, W)`` normalised images (text: ``(B, T)`` ids).
        prior: the GAN's mask ``lambda_G`` in ``[0, 1]``, shaped like the
            input point (``(B, C, H, W)``; text ``(B, T, D)``).
        row_loss: per-row loss of the model's outputs for ``B * n_copies``
            rows (see :func:`inputiba.iba.row_loss_for`).
        config: the stage's settings (:data:`INPUT_DEFAULTS`).
        seed: seed of the noise, one per input or a base seed
            (:func:`inputiba.seeding.input_seeds`); drawn from each input's
            ``"input"`` stream.
        adapter: images (default) or tokens (:mod:`inputiba.adapters`).
        stats: noise statistics of the input point; ``None`` is ``N(0, 1)``.

    Returns:
        The fitted :class:`~inputiba.iba.BottleneckFit`; see
        :func:`input_attribution` for the map.
    """
    adapter = adapter or ImageAdapter()
    with torch.no_grad():
        points = adapter.point_values(model, inputs)
    if prior.shape != points.shape:
        raise ValueError(f"prior mask {tuple(prior.shape)} and inputs {tuple(points.shape)} differ in shape")
    if stats is None:
        shape = points.shape[1:]
        stats = FeatureStats(mean=points.new_zeros(shape), std=points.new_ones(shape),
                             active=points.new_ones(shape), n_samples=0)
    module, where = adapter.input_point(model)
    valid = adapter.scored(inputs)  # text: special tokens pass unchanged, like padding
    return fit_bottleneck(model, module, where, points,
                          adapter.repeat_inputs(inputs, points, config.n_copies), stats, config,
                          row_loss, prior=prior, seed=seed, valid=expand_valid(valid, points),
                          name="the input", channel_dim=adapter.point_channel_dim, stream="input")


def input_attribution(fit: BottleneckFit, adapter: Adapter | None = None,
                      valid: Tensor | None = None) -> Tensor:
    """The attribution in ``[0, 1]``: ``sigmoid(alpha)`` averaged over channels.

    ``(B, H, W)`` for images; ``(B, T)`` for text with ``adapter`` a
    :class:`~inputiba.adapters.TokenAdapter`, 0 where ``valid`` is false.
    """
    return (adapter or ImageAdapter()).attribution(fit.alpha, valid)
