import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from inputiba.bottleneck import (capacity_to_saliency, gaussian_kernel, kl_capacity, noisy_features,
                                 smooth_mask)


def test_kl_capacity_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    lam = torch.rand(4, 3, 5, 5, generator=g) * 0.98 + 0.01
    r = torch.randn(4, 3, 5, 5, generator=g) * 2
    expected = kl_divergence(Normal(lam * r, 1 - lam), Normal(torch.zeros_like(r), torch.ones_like(r)))
    torch.testing.assert_close(kl_capacity(lam, r), expected, rtol=1e-5, atol=1e-6)


def test_kl_capacity_is_zero_when_nothing_passes_and_respects_active_mask():
    r = torch.randn(2, 3, 4, 4)
    assert kl_capacity(torch.zeros_like(r), r).abs().max() < 1e-6
    lam = torch.full_like(r, 0.9)
    active = torch.zeros(3, 4, 4)
    active[0] = 1
    kl = kl_capacity(lam, r, active)
    assert (kl[:, 1:] == 0).all() and (kl[:, 0] > 0).all()


def test_kl_capacity_grows_as_mask_opens():
    r = torch.ones(5)
    kl = kl_capacity(torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9]), r)
    assert (kl.diff() > 0).all()


@pytest.mark.parametrize("sigma,size", [(1.0, 5), (0.5, 3), (2.0, 9), (1.3, 7)])
def test_gaussian_kernel_size_and_sum(sigma, size):
    k = gaussian_kernel(sigma)
    assert k.numel() == size
    assert k.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.outer(k, k).sum().item() == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(k, k.flip(0))
    assert k.argmax().item() == size // 2


def test_gaussian_kernel_rejects_non_positive_sigma():
    with pytest.raises(ValueError, match="sigma"):
        gaussian_kernel(0.0)


def test_smooth_mask_keeps_constants_and_spreads_a_delta_by_the_kernel():
    const = torch.full((2, 3, 10, 10), 0.7)
    torch.testing.assert_close(smooth_mask(const, 1.0), const)
    delta = torch.zeros(1, 1, 11, 11)
    delta[..., 5, 5] = 1.0
    out = smooth_mask(delta, 1.0)[0, 0]
    k = gaussian_kernel(1.0)
    torch.testing.assert_close(out[3:8, 3:8], torch.outer(k, k))
    assert out.sum().item() == pytest.approx(1.0, abs=1e-6)


def test_smooth_mask_handles_maps_smaller_than_the_kernel_and_sigma_zero():
    lam = torch.rand(1, 2, 2, 2)
    out = smooth_mask(lam, 1.0)
    assert out.shape == lam.shape and torch.isfinite(out).all()
    assert smooth_mask(lam, 0) is lam


def test_noisy_features_interpolates_between_signal_and_noise():
    R = torch.full((3,), 2.0)
    mean, std, noise = torch.zeros(3), torch.ones(3), torch.tensor([1.0, -1.0, 0.5])
    torch.testing.assert_close(noisy_features(R, torch.ones(3), mean, std, noise), R)
    torch.testing.assert_close(noisy_features(R, torch.zeros(3), mean, std, noise), noise)


def test_capacity_to_saliency_units_and_total_bits():
    cap = torch.full((2, 3, 4, 4), 0.5)
    sal = capacity_to_saliency(cap, (16, 16))
    assert sal.shape == (2, 16, 16)
    per_pixel = 3 * 0.5 / math.log(2) * 16 / 256
    torch.testing.assert_close(sal, torch.full_like(sal, per_pixel))
    total_bits = cap.sum((1, 2, 3)) / math.log(2)
    torch.testing.assert_close(sal.sum((1, 2)), total_bits)
    rand = torch.rand(1, 2, 7, 7)
    sal = capacity_to_saliency(rand, (28, 28))
    assert sal.sum().item() == pytest.approx(rand.sum().item() / math.log(2), rel=0.02)
    torch.testing.assert_close(capacity_to_saliency(rand, None), rand.sum(1) / math.log(2))


def test_capacity_to_saliency_rejects_non_spatial():
    with pytest.raises(ValueError, match="B, C, h, w"):
        capacity_to_saliency(torch.rand(2, 10), (4, 4))


def test_kl_with_a_zero_prior_is_the_plain_capacity_and_vanishes_as_the_prior_opens():
    g = torch.Generator().manual_seed(2)
    lam = torch.rand(2, 3, 6, 6, generator=g) * 0.98 + 0.01
    r = torch.randn(2, 3, 6, 6, generator=g)
    plain = kl_capacity(lam, r)
    torch.testing.assert_close(kl_capacity(lam, r, prior=torch.zeros_like(lam)), plain)
    previous = plain
    for m in (0.5, 0.9, 0.99, 0.999):
        kl = kl_capacity(lam, r, prior=torch.full_like(lam, m))
        assert (kl <= previous + 1e-6).all()
        previous = kl
    assert previous.max() < 1e-2 * plain.max()
    assert kl_capacity(lam, r, prior=torch.ones_like(lam)).abs().max() < 1e-6


def test_kl_with_a_prior_matches_torch_distributions():
    g = torch.Generator().manual_seed(3)
    lam = torch.rand(50, generator=g) * 0.98 + 0.01
    m = torch.rand(50, generator=g)
    r = torch.randn(50, generator=g)
    # the reference bottleneck with mask m*lam, standardised so that it is N(0, 1) under the prior
    scale = 1 - m * lam
    posterior = Normal(lam * (1 - m) * r / scale, (1 - lam) / scale)
    expected = kl_divergence(posterior, Normal(torch.zeros(50), torch.ones(50)))
    torch.testing.assert_close(kl_capacity(lam, r, prior=m), expected, rtol=1e-5, atol=1e-6)
