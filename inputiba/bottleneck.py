"""The bottleneck's mathematics, as pure functions over tensors.

Every formula of the per-sample bottleneck (Schulz et al., ICLR 2020, §3.1) lives here once:
the capacity (a KL divergence in nats), the Gaussian smoothing of the mask,
the noisy features, and the conversion of a capacity to a saliency map in bits
per pixel. Nothing here holds state; the stages import these functions.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "kl_capacity",
    "gaussian_kernel",
    "smooth_mask",
    "noisy_features",
    "capacity_to_saliency",
]


def kl_capacity(lam: Tensor, r: Tensor, active: Tensor | None = None,
                prior: Tensor | None = None) -> Tensor:
    """Per-element information passed by the bottleneck, in nats.

    Without a prior: ``KL( N(lam * r, (1 - lam)^2) || N(0, 1) )``, where
    ``r = (R - mu) / sigma`` is the feature map standardised by its estimated
    statistics. With a prior mask ``m`` (InputIBA's input stage, the GAN's
    ``lambda_G``) the reference is the bottleneck with mask ``m * lam``:

        v = (1 - lam)^2 / (1 - m lam)^2,   u = lam (1 - m) r / (1 - m lam)
        KL = -1/2 (1 + log v - u^2 - v)

    ``m = 0`` gives the plain capacity; ``m -> 1`` makes information free.
    The value does not depend on the noise sample.

    Args:
        lam: mask in ``[0, 1]``, broadcastable against ``r``.
        r: standardised features, any shape.
        active: optional 0/1 mask of elements that carry signal; inactive
            elements are given zero capacity.
        prior: optional prior mask ``m`` in ``[0, 1]``, broadcastable.

    Returns:
        Tensor of the broadcast shape, nats, ``>= 0``.
    """
    one_minus = (1.0 - lam).clamp_min(1e-12)
    if prior is None:
        log_v = 2.0 * torch.log(one_minus)
        u = lam * r
    else:
        denom = (1.0 - prior * lam).clamp_min(1e-12)
        log_v = 2.0 * (torch.log(one_minus) - torch.log(denom))
        u = lam * (1.0 - prior) * r / denom
    kl = -0.5 * (1.0 + log_v - u * u - torch.exp(log_v))
    if active is not None:
        kl = kl * active
    return kl


def gaussian_kernel(sigma: float, dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> Tensor:
    """One-dimensional Gaussian kernel, normalised to sum to 1.

    Its size is ``2 * round(2 * sigma) + 1`` (``sigma = 1`` gives 5 taps); the
    two-dimensional kernel is the outer product of this one with itself.

    Returns:
        ``(k,)`` float tensor.
    """
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    radius = int(round(2 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).to(dtype=dtype, device=device)


def smooth_mask(lam: Tensor, sigma: float) -> Tensor:
    """Blur a mask over its last two (spatial) dimensions, per channel.

    Separable Gaussian of :func:`gaussian_kernel` with reflection padding.
    A map too small to reflect (side <= kernel radius) is padded by
    replication instead. ``sigma <= 0`` returns ``lam`` unchanged.

    Args:
        lam: ``(..., H, W)`` tensor.
        sigma: standard deviation in elements of the map.

    Returns:
        Tensor of ``lam``'s shape.
    """
    if sigma is None or sigma <= 0:
        return lam
    if lam.dim() < 2:
        raise ValueError(f"smoothing needs a (..., H, W) map, got shape {tuple(lam.shape)}")
    k = gaussian_kernel(sigma, dtype=lam.dtype, device=lam.device)
    pad = k.numel() // 2
    shape = lam.shape
    x = lam.reshape(-1, 1, shape[-2], shape[-1])
    mode = "reflect" if min(shape[-2], shape[-1]) > pad else "replicate"
    x = F.pad(x, (pad, pad, pad, pad), mode=mode)
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    x = F.conv2d(x, k.view(1, 1, -1, 1))
    return x.reshape(shape)


def noisy_features(features: Tensor, lam: Tensor, mean: Tensor, std: Tensor,
                   noise: Tensor) -> Tensor:
    """``Z = lam * R + (1 - lam) * eps`` with ``eps = mean + std * noise``.

    All arguments broadcast against each other; ``noise`` is standard normal.
    """
    return lam * features + (1.0 - lam) * (mean + std * noise)


def capacity_to_saliency(capacity: Tensor, size: tuple[int, int] | None) -> Tensor:
    """Turn a per-element capacity into a saliency map in bits per pixel.

    Sums over channels, converts nats to bits, and when resizing to ``size``
    rescales so that the total number of bits is kept (bilinear resize).

    Args:
        capacity: ``(B, C, h, w)`` nats.
        size: ``(H, W)`` output size, or ``None`` to keep ``(h, w)``.

    Returns:
        ``(B, H, W)`` float tensor, bits per pixel.
    """
    if capacity.dim() != 4:
        raise ValueError(f"expected a (B, C, h, w) capacity, got shape {tuple(capacity.shape)}")
    bits = capacity.sum(dim=1, keepdim=True) / math.log(2.0)
    h, w = bits.shape[-2:]
    if size is not None and (h, w) != tuple(size):
        H, W = size
        bits = F.interpolate(bits, size=(H, W), mode="bilinear", align_corners=False)
        bits = bits * (h * w) / (H * W)
    return bits[:, 0]
