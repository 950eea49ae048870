"""Extremal perturbation: known answers of its pieces, batch independence, and one region found."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from inputiba.methods import get_method
from inputiba.methods.extremal import (ExtremalPerturbation, SmoothMask, area_loss, blur_pyramid, bump,
                                       gaussian_blur, perturb)

pytestmark = pytest.mark.usefixtures("one_thread")


class RegionModel(nn.Module):
    """Class 0's score is the match of rows 2:8, cols 4:12 with a fixed +-1 pattern; class 1's is fixed.

    The pattern is symmetric left-right, so the horizontal flips of the
    jitter do not change what the model sees; it is made only of per-image
    means, so an image's score does not depend on its batch.
    """

    rows, cols = slice(2, 8), slice(4, 12)

    def __init__(self, scale: float = 100.0):
        super().__init__()
        half = (torch.rand(6, 4, generator=torch.Generator().manual_seed(0)) < 0.5).float() * 2 - 1
        self.register_buffer("pattern", torch.cat([half, half.flip(1)], dim=1))
        self.scale = scale

    def forward(self, x):
        match = (x[:, 0, self.rows, self.cols] * self.pattern).mean(dim=(1, 2))
        return self.scale * torch.stack([match, torch.full_like(match, 0.5)], dim=1)


def region_images(n: int = 3) -> torch.Tensor:
    x = 0.5 * torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    x[:, 0, RegionModel.rows, RegionModel.cols] = RegionModel().pattern
    return x


# ---------------------------------------------------------------------- the smooth mask
def test_bump_is_flat_to_half_sigma_then_gaussian():
    d = torch.tensor([0.0, 2.0, 4.0, 6.0, 8.0])
    expected = torch.tensor([1.0, 1.0, 1.0, math.exp(-2 * 0.25 ** 2), math.exp(-2 * 0.5 ** 2)])
    torch.testing.assert_close(bump(d, 8.0), expected)


@pytest.mark.parametrize("coldness", [math.inf, 20.0])
def test_one_unit_parameter_gives_its_bump(coldness):
    step, sigma = 4, 8.0
    generator = SmoothMask((40, 40), step, sigma, coldness=coldness)
    params = torch.zeros(1, *generator.grid)
    params[0, 5, 4] = 1.0                                  # centred at pixel (20, 16)
    mask = generator.crop(generator(params))[0]
    rows, cols = torch.meshgrid(torch.arange(40.0), torch.arange(40.0), indexing="ij")
    distance = ((rows - 20) ** 2 + (cols - 16) ** 2).sqrt()
    profile = bump(distance, sigma)
    if not math.isinf(coldness):
        # softmax pooling over the (2r + 1)^2 window, all other entries 0
        others = (2 * generator.radius + 1) ** 2 - 1
        profile = profile * torch.exp(coldness * profile) / (torch.exp(coldness * profile) + others)
    near = ((rows - 20).abs() <= sigma + step) & ((cols - 16).abs() <= sigma + step)
    torch.testing.assert_close(mask[near], profile[near], atol=1e-5, rtol=1e-5)
    far = ((rows - 20).abs() > (generator.radius + 1) * step) | ((cols - 16).abs() > (generator.radius + 1) * step)
    assert (mask[far] == 0).all()
    assert mask.max() == mask[20, 16]


def test_all_ones_parameters_give_a_full_mask_over_the_image():
    for size, step, sigma in [((64, 64), 2, 6.0), ((21, 30), 3, 9.0)]:
        hard = SmoothMask(size, step, sigma, coldness=math.inf)
        full = hard(torch.ones(2, *hard.grid))
        assert full.shape == (2, *hard.frame)
        assert (hard.crop(full) == 1).all()
        # the frame reaches sigma beyond the outermost parameters: its corner is on the corner bump's shoulder
        corner = bump(torch.tensor(sigma * math.sqrt(2)), sigma)
        torch.testing.assert_close(full[:, 0, 0], corner.expand(2))
        # softmax pooling is a weighted mean of the window: just below 1
        soft = SmoothMask(size, step, sigma)
        mask = soft.crop(soft(torch.ones(1, *soft.grid)))
        assert mask.shape == (1, *size)
        assert mask.min() > 0.97 and mask.max() <= 1


def test_mask_frame_matches_torchray_geometry():
    # TorchRay at 224 px (step 7, sigma 21): 32 x 32 parameters, a 260 x 260 frame, image at offset 21
    generator = SmoothMask((224, 224), 7, 21.0)
    assert generator.grid == (32, 32) and generator.frame == (260, 260) and generator.origin == (21, 21)
    assert generator.radius == 4


def test_smooth_mask_rejects_bad_settings():
    with pytest.raises(ValueError, match="step"):
        SmoothMask((8, 8), 1.5, 3.0)
    with pytest.raises(ValueError, match="sigma"):
        SmoothMask((8, 8), 2, 0.0)
    with pytest.raises(ValueError, match="parameters must be"):
        SmoothMask((8, 8), 2, 3.0)(torch.ones(1, 3, 3))


# ---------------------------------------------------------------------- area and perturbation
def test_area_loss_is_zero_only_for_a_binary_mask_of_the_area():
    mask = torch.zeros(3, 10, 10)
    mask[0].view(-1)[:30] = 1                               # exactly 30 % ones
    mask[1].view(-1)[:29] = 1                               # one too few
    mask[2] = 0.5
    loss = area_loss(mask, 0.3)
    torch.testing.assert_close(loss, torch.tensor([0.0, 0.01, 0.25]))
    shuffled = mask[0].view(-1)[torch.randperm(100, generator=torch.Generator().manual_seed(0))]
    assert area_loss(shuffled.view(1, 10, 10), 0.3) == 0    # where the ones lie does not matter


def test_blur_pyramid_runs_from_max_blur_to_the_image():
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    pyramid = blur_pyramid(x, 5, 3.0)
    assert pyramid.shape == (2, 5, 3, 12, 12)
    torch.testing.assert_close(pyramid[:, 0], gaussian_blur(x, 3.0))
    torch.testing.assert_close(pyramid[:, 2], gaussian_blur(x, 1.5))
    assert torch.equal(pyramid[:, -1], x)
    # a normalised kernel keeps a constant image inside; zero padding darkens the border
    flat = gaussian_blur(torch.ones(1, 1, 40, 40), 2.0)
    torch.testing.assert_close(flat[0, 0, 10:30, 10:30], torch.ones(20, 20))
    taps = torch.exp(-0.5 * (torch.arange(-8.0, 9.0) / 2.0) ** 2)
    torch.testing.assert_close(flat[0, 0, 0, 0], (taps[8:].sum() / taps.sum()) ** 2)


def test_perturb_reads_and_interpolates_levels():
    x = torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    pyramid = blur_pyramid(x, 3, 2.0)
    ones, zeros = torch.ones(2, 6, 6), torch.zeros(2, 6, 6)
    assert torch.equal(perturb(pyramid, ones), x)
    torch.testing.assert_close(perturb(pyramid, zeros), pyramid[:, 0])
    torch.testing.assert_close(perturb(pyramid, zeros + 0.5), pyramid[:, 1])
    torch.testing.assert_close(perturb(pyramid, zeros + 0.25), (pyramid[:, 0] + pyramid[:, 1]) / 2)


# ---------------------------------------------------------------------- the method
def fast(**settings) -> dict:
    """Sizes for 16-px images; few, larger steps; area 0.1 of the 22 x 22 frame is about the region's size."""
    return {"step": 1, "sigma": 3.0, "max_blur": 2.0, "iterations": 100, "lr": 0.1, "area": 0.1, **settings}


def test_finds_the_region_the_model_reads():
    x = region_images()
    mask = get_method("extremal_perturbation", RegionModel(), **fast()).attribute(x, target=0)
    assert mask.shape == (3, 16, 16) and mask.min() >= 0 and mask.max() <= 1
    inside = torch.zeros(16, 16, dtype=torch.bool)
    inside[RegionModel.rows, RegionModel.cols] = True
    assert (mask[:, inside].mean(1) > 0.8).all()
    assert (mask[:, inside].mean(1) > 5 * mask[:, ~inside].mean(1)).all()
    assert (mask[:, 11:, :].amax(dim=(1, 2)) < 0.05).all()


def test_delete_and_dual_variants_find_the_region_too():
    x = region_images(2)
    inside = torch.zeros(16, 16, dtype=torch.bool)
    inside[RegionModel.rows, RegionModel.cols] = True
    for variant in ("delete", "dual"):
        for reward in ("simple", "contrastive"):
            mask = get_method("extremal_perturbation", RegionModel(), variant=variant, reward=reward,
                              **fast(iterations=60)).attribute(x, target=0)
            assert (mask[:, inside].mean(1) > 3 * mask[:, ~inside].mean(1)).all(), (variant, reward)


def test_an_images_mask_does_not_depend_on_its_batch():
    x = region_images(3)
    method = get_method("extremal_perturbation", RegionModel(), **fast(iterations=30))
    together = method.attribute(x, target=0)
    alone = method.attribute(x[1:2], target=0)
    torch.testing.assert_close(together[1:2], alone, atol=1e-5, rtol=0)
    assert torch.equal(method.attribute(x, target=0), together)   # deterministic


def test_defaults_are_torchrays_but_the_area():
    method = ExtremalPerturbation(RegionModel())
    assert (method.step, method.sigma, method.max_blur, method.levels, method.coldness) == (7, 21.0, 20.0, 8, 20.0)
    assert (method.iterations, method.lr, method.momentum) == (800, 0.01, 0.9)
    assert (method.area_weight, method.area_growth, method.jitter) == (300.0, 1.0035, True)
    assert (method.area, method.variant, method.reward) == (0.3, "preserve", "simple")


@pytest.mark.parametrize("settings, match", [
    (dict(area=0.0), "area"), (dict(area=1.0), "area"), (dict(iterations=0), "iterations"),
    (dict(lr=0.0), "lr"), (dict(momentum=1.0), "momentum"), (dict(step=0), "step"), (dict(step=2.5), "step"),
    (dict(sigma=-1.0), "sigma"), (dict(max_blur=0.0), "max_blur"), (dict(levels=1), "levels"),
    (dict(coldness=0.0), "coldness"), (dict(area_growth=0.0), "area_growth"),
    (dict(variant="keep"), "variant"), (dict(reward="logit"), "reward"),
])
def test_bad_settings_are_refused(settings, match):
    with pytest.raises(ValueError, match=match):
        ExtremalPerturbation(RegionModel(), **settings)


def test_contrastive_reward_needs_two_classes():
    one_class = nn.Sequential(nn.Flatten(), nn.Linear(16 * 16, 1))
    method = ExtremalPerturbation(one_class, reward="contrastive", iterations=1)
    with pytest.raises(ValueError, match="two classes"):
        method.attribute(torch.randn(1, 1, 16, 16), target=0)
