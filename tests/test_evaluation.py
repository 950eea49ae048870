import math

import pytest
import torch
from torch import nn

from conftest import TwoClassLinear
from inputiba.evaluation import (EHR_WEIGHTINGS, bbox_score, box_mask, degradation, deletion, ehr, insertion, pixel_ranks,
                                 sanity_check, sensitivity_n, spearman, ssim, usable_boxes)


def signed_case(shape, seed=0):
    """A linear model with signed weights and inputs it assigns to class 1 with p in (0.5, 1).

    Returns the model, inputs, targets, and the exact contribution of each
    element relative to a zero baseline and to the per-channel mean baseline.
    """
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(1, *shape[1:], generator=g) * 0.4
    x = torch.randn(*shape, generator=g)
    x = x * (x * weight).flatten(1).sum(1).sign().view(-1, *[1] * (len(shape) - 1))
    spatial = tuple(range(2, len(shape)))
    to_zero = (x * weight).sum(1)
    to_mean = ((x - x.mean(spatial, keepdim=True)) * weight).sum(1)
    return TwoClassLinear(weight).eval(), x, torch.ones(shape[0], dtype=torch.long), to_zero, to_mean


def random_map(like, seed=1):
    return torch.rand(like.shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def linear_case():
    g = torch.Generator().manual_seed(0)
    weight = torch.rand(1, 1, 8, 8, generator=g)
    x = torch.rand(6, 1, 8, 8, generator=g) + 0.5
    model = TwoClassLinear(weight).eval()
    contribution = (x * weight)[:, 0]  # the exact contribution of each pixel
    return model, x, contribution, torch.ones(6, dtype=torch.long)


def test_pixel_ranks():
    attribution = torch.tensor([[[0.1, 0.9], [0.5, 0.5]]])
    assert pixel_ranks(attribution, seed=None).tolist() == [[[3, 0], [1, 2]]]
    assert pixel_ranks(torch.tensor([[0.2, 0.7, 0.1]])).tolist() == [[1, 0, 2]]
    # ties: a seeded random order, the same for every row and call, and not raster order
    constant = torch.zeros(3, 64)
    ranks = pixel_ranks(constant, seed=1)
    assert (ranks == ranks[0]).all() and sorted(ranks[0].tolist()) == list(range(64))
    assert ranks[0].tolist() != list(range(64))
    assert torch.equal(ranks, pixel_ranks(constant, seed=1)) and not torch.equal(ranks, pixel_ranks(constant, seed=2))
    # distinct values keep their order whatever the seed
    assert pixel_ranks(attribution, seed=3)[0, 0, 1] == 0 and pixel_ranks(attribution, seed=3)[0, 0, 0] == 3


def test_bbox_ties_share_the_places_equally():
    box = box_mask([[0, 0, 2, 2], [6, 6, 8, 8]], (8, 8))  # 4 of 64 pixels, top-left and bottom-right
    constant = torch.ones(2, 8, 8)
    torch.testing.assert_close(bbox_score(constant, box), torch.full((2,), 4 / 64))
    # two pixels above the rest: they take two places, the 62 tied ones share the other two
    heat = torch.zeros(2, 8, 8)
    heat[:, 0, 0] = heat[:, 7, 7] = 1.0
    expected = (1 + 3 * 2 / 62) / 4  # one sure hit; the box's 3 other pixels each hold 2/62 of a place
    torch.testing.assert_close(bbox_score(heat, box), torch.full((2,), expected))


def test_constant_maps_score_the_same_wherever_the_object_is():
    # a model that reads one 3x3 corner; a constant map says nothing, so its deletion curve must not
    # depend on which corner: raster order deletes the top-left first, a random order does not
    x = torch.ones(2, 1, 8, 8)
    corners = box_mask([[0, 0, 3, 3], [5, 5, 8, 8]], (8, 8)).float()
    constant = torch.zeros(2, 8, 8)

    def auc(corner, tie_seed):
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
        with torch.no_grad():
            model[1].weight.zero_()
            model[1].bias.zero_()
            model[1].weight[0] = corners[corner].flatten()
        return deletion(model, x[:1], constant[:1], 0, n_steps=16, tie_seed=tie_seed).auc.item()

    assert abs(auc(0, None) - auc(1, None)) > 0.3
    gaps = [auc(0, s) - auc(1, s) for s in range(8)]
    assert abs(sum(gaps) / len(gaps)) < 0.1


def test_the_true_contribution_beats_random_and_reversed_rankings(linear_case):
    model, x, contribution, target = linear_case
    random = random_map(contribution)
    dele = {name: deletion(model, x, a, target, n_steps=16).auc
            for name, a in [("true", contribution), ("random", random), ("reversed", -contribution)]}
    ins = {name: insertion(model, x, a, target, baseline=0.0, n_steps=16).auc
           for name, a in [("true", contribution), ("random", random), ("reversed", -contribution)]}
    assert (dele["true"] < dele["random"]).all() and (dele["random"] < dele["reversed"]).all()
    assert (ins["true"] > ins["random"]).all() and (ins["random"] > ins["reversed"]).all()


def test_curve_endpoints_and_batch_size_independence(linear_case):
    model, x, contribution, target = linear_case
    p_full = torch.softmax(model(x), 1)[:, 1]
    res = deletion(model, x, contribution, target, n_steps=10, batch_size=7)
    torch.testing.assert_close(res.curve[:, 0], p_full)
    torch.testing.assert_close(res.curve[:, -1], torch.full((6,), 0.5))  # zeros: logits (0, 0)
    again = deletion(model, x, contribution, target, n_steps=10, batch_size=1000)
    torch.testing.assert_close(again.curve, res.curve)
    ins = insertion(model, x, contribution, target, n_steps=10)
    torch.testing.assert_close(ins.curve[:, -1], p_full)
    assert res.auc.shape == (6,) and ((res.auc >= 0) & (res.auc <= 1)).all()


def test_shape_mismatch_is_named(linear_case):
    model, x, contribution, target = linear_case
    with pytest.raises(ValueError, match=r"expected \(6, 8, 8\)"):
        deletion(model, x, contribution[:, :4], target)


@pytest.mark.parametrize("shape", [(5, 1, 8, 8), (5, 4, 12)], ids=["image", "sequence"])
def test_true_contribution_beats_random_on_every_perturbation_metric(shape):
    model, x, target, to_zero, to_mean = signed_case(shape)
    random = random_map(to_zero)
    dele = [deletion(model, x, a, target, n_steps=12).auc for a in (to_zero, random)]
    ins = [insertion(model, x, a, target, n_steps=12).auc for a in (to_zero, random)]
    deg = [degradation(model, x, a, target, tile=2, n_steps=12).score for a in (to_mean, random)]
    sens = [sensitivity_n(model, x, a, target, n_subsets=20).correlation for a in (to_zero, random)]
    assert (dele[0] < dele[1]).all()
    assert (ins[0] > ins[1]).all()
    assert (deg[0] > deg[1]).all() and (deg[0] > 0.2).all()
    assert sens[0].shape == sens[1].shape and sens[0].shape[0] == shape[0]
    assert (sens[0] > sens[1]).all()


def test_reversing_a_perfect_ranking_swaps_morf_and_lerf():
    model, x, target, _, to_mean = signed_case((4, 1, 8, 8))
    forward = degradation(model, x, to_mean, target, tile=2, n_steps=16)
    reverse = degradation(model, x, -to_mean, target, tile=2, n_steps=16)
    torch.testing.assert_close(reverse.morf, forward.lerf)
    torch.testing.assert_close(reverse.lerf, forward.morf)
    torch.testing.assert_close(reverse.score, -forward.score)
    # a perfect ranking keeps LeRF above MoRF at every step
    assert (forward.lerf >= forward.morf - 1e-6).all()
    torch.testing.assert_close(forward.morf[:, 0], torch.ones(4))


def test_degradation_with_tiles_that_do_not_divide_the_image():
    model, x, target, _, _ = signed_case((3, 1, 8, 8))
    # tiles of 3 on 8 pixels: 3 x 3 tiles, the last row and column of them 2 pixels wide
    corner = torch.zeros(3, 8, 8)
    corner[:, 7, 7] = 1.0
    res = degradation(model, x, corner, target, tile=3, n_steps=9)
    mean = x.mean((2, 3), keepdim=True)

    def relative(perturbed):
        return torch.softmax(model(perturbed), 1)[:, 1] / torch.softmax(model(x), 1)[:, 1]

    first_morf = x.clone()
    first_morf[..., 6:, 6:] = mean.expand(-1, -1, 2, 2)  # the partial corner tile
    first_lerf = x.clone()
    first_lerf[..., :3, :3] = mean.expand(-1, -1, 3, 3)  # ties are removed in raster order
    with torch.no_grad():
        torch.testing.assert_close(res.morf[:, 1], relative(first_morf))
        torch.testing.assert_close(res.lerf[:, 1], relative(first_lerf))
        torch.testing.assert_close(res.morf[:, -1], relative(mean.expand_as(x)))
    torch.testing.assert_close(res.lerf[:, -1], res.morf[:, -1])


@pytest.mark.parametrize("shape", [(3, 1, 8, 8), (3, 4, 12)], ids=["image", "sequence"])
def test_sensitivity_n_of_the_exact_linear_contribution_is_one(shape):
    model, x, target, to_zero, _ = signed_case(shape)
    res = sensitivity_n(model, x, to_zero, target, n_subsets=30)
    n_units = math.prod(shape[2:])
    assert res.ns[0] == 1 and res.ns[-1] == round(0.8 * n_units)
    assert (res.ns[1:] > res.ns[:-1]).all()
    assert res.correlation.shape == (shape[0], len(res.ns))
    torch.testing.assert_close(res.correlation, torch.ones_like(res.correlation), atol=1e-4, rtol=0)
    tiled = sensitivity_n(model, x, to_zero, target, n_subsets=30, tile=2)
    torch.testing.assert_close(tiled.correlation, torch.ones_like(tiled.correlation), atol=1e-4, rtol=0)


def test_sensitivity_n_is_seeded_draws_per_input_and_is_nan_at_all_units():
    model, x, target, to_zero, _ = signed_case((2, 1, 8, 8))
    x = x[:1].expand(2, -1, -1, -1)  # the same input twice
    attribution = random_map(to_zero)[:1].expand(2, -1, -1)
    run = dict(ns=[3, 20, 64], n_subsets=25)
    a = sensitivity_n(model, x, attribution, target, seed=3, batch_size=16, **run).correlation
    b = sensitivity_n(model, x, attribution, target, seed=3, batch_size=1000, **run).correlation
    c = sensitivity_n(model, x, attribution, target, seed=4, batch_size=16, **run).correlation
    torch.testing.assert_close(a, b, equal_nan=True)
    assert not torch.allclose(a[:, :2], c[:, :2])
    # identical inputs with identical maps differ only through their own subsets
    assert (a[0, :2] != a[1, :2]).all()
    assert torch.isnan(a[:, 2]).all()  # N = all 64 pixels: every subset removes everything


def test_a_scorer_that_uses_owners():
    model, x, target, to_zero, to_mean = signed_case((3, 1, 8, 8))
    scale = torch.tensor([0.5, 1.0, 2.0])

    def scorer(states, owners):
        return model(states * scale[owners].view(-1, 1, 1, 1))

    class Scaled(nn.Module):
        def __init__(self, s):
            super().__init__()
            self.s = s

        def forward(self, states):
            return model(states * self.s)

    deg = degradation(scorer, x, to_mean, target, tile=2, n_steps=8, batch_size=5)
    dele = deletion(scorer, x, to_zero, target, n_steps=8, batch_size=5)
    sens = sensitivity_n(scorer, x, random_map(to_zero), target, ns=[4, 16], n_subsets=10, batch_size=7)
    for i in range(3):
        alone = Scaled(scale[i].item())
        one = slice(i, i + 1)
        torch.testing.assert_close(deg.morf[one], degradation(alone, x[one], to_mean[one], target[one],
                                                              tile=2, n_steps=8).morf)
        torch.testing.assert_close(dele.curve[one], deletion(alone, x[one], to_zero[one], target[one],
                                                             n_steps=8).curve)
    # a linear model's correlation does not change with the scale of its input
    unscaled = sensitivity_n(model, x, random_map(to_zero), target, ns=[4, 16], n_subsets=10, batch_size=7)
    torch.testing.assert_close(sens.correlation, unscaled.correlation, atol=1e-4, rtol=0)


def test_box_mask_convention_and_union():
    one = box_mask(torch.tensor([[1, 2, 3, 5]]), (6, 6))
    expected = torch.zeros(1, 6, 6, dtype=torch.bool)
    expected[0, 2:5, 1:3] = True  # half-open: rows y0..y1-1, columns x0..x1-1
    assert torch.equal(one, expected)
    two = box_mask([[[0, 0, 2, 2], [1, 1, 4, 3]], []], (5, 5))
    first, second = box_mask([[0, 0, 2, 2]], (5, 5)), box_mask([[1, 1, 4, 3]], (5, 5))
    assert two.shape == (2, 5, 5)
    assert torch.equal(two[0], first[0] | second[0]) and int(two[0].sum()) == 4 + 6 - 1
    assert not two[1].any()
    assert torch.equal(box_mask(torch.tensor([[[0, 0, 2, 2], [1, 1, 4, 3]]]), (5, 5)), two[:1])
    with pytest.raises(ValueError, match="x1 < x0"):
        box_mask([[3, 0, 1, 2]], (5, 5))
    with pytest.raises(ValueError, match=r"\(x0, y0, x1, y1\) rows"):
        box_mask(torch.zeros(2, 5), (5, 5))


def test_usable_boxes_drop_boxes_over_a_third():
    masks = box_mask([[0, 0, 3, 3], [0, 0, 6, 6], [0, 0, 0, 0]], (6, 6))  # 1/4, all, nothing
    assert usable_boxes(masks).tolist() == [True, False, False]
    assert usable_boxes(masks, max_fraction=1.0).tolist() == [True, True, False]


def test_box_metrics_known_answers():
    box = box_mask([[2, 2, 6, 6]] * 3, (8, 8))
    g = torch.Generator().manual_seed(0)
    inside = torch.rand(3, 8, 8, generator=g) * box  # any heat, all of it in the box
    outside = torch.rand(3, 8, 8, generator=g) * ~box
    for score in (bbox_score(inside, box), ehr(inside, box, "count"), ehr(inside, box, "heat_share"),
                  ehr(box.float(), box)):  # the paper's EHR is 1 for heat 1 all over the box and nowhere else
        torch.testing.assert_close(score, torch.ones(3))
    assert (ehr(inside, box) < 1).all()  # ... and below 1 for varying heat, even all of it in the box
    for score in (bbox_score(outside, box), *(ehr(outside, box, w) for w in EHR_WEIGHTINGS)):
        torch.testing.assert_close(score, torch.zeros(3))
    # a linear model that reads only the box: its exact contribution beats a random map
    model, x, _, _, _ = signed_case((3, 1, 8, 8))
    contribution = (x * model.weight * box.unsqueeze(1)).abs()[:, 0]
    random = random_map(contribution)
    for metric in (bbox_score, ehr, lambda a, m: ehr(a, m, "count")):
        assert (metric(contribution, box) > metric(random, box) + 0.2).all()


def test_ehr_by_hand():
    box = torch.zeros(3, 1, 5, dtype=torch.bool)
    box[:, 0, :2] = True
    # heat 1 in the box, 0.5 outside: at q = 0 the bin holds both, from q = 0.1 only the 1
    heat = torch.tensor([[[1.0, 0.0, 0.5, 0.04, 0.0]], [[1.0, 0.0, 1.0, 0.0, 0.0]],
                         [[0.5, 0.0, 1.0, 0.0, 0.0]]])
    # the third: at q = 0 the bin holds 0.5 (in) and 1 (out); from q = 0.1 only the 1, outside
    torch.testing.assert_close(ehr(heat, box, "count"), torch.tensor([0.05 * 1.5 + 0.9, 0.5, 0.05 * 0.5]))
    # the paper's: heat in the box per element of the bin
    torch.testing.assert_close(ehr(heat, box), torch.tensor([0.05 * 1.5 + 0.9, 0.5, 0.05 * 0.25]))
    torch.testing.assert_close(ehr(3 * heat, box), ehr(heat, box))  # scaled by the maximum
    torch.testing.assert_close(ehr(heat, box, "heat_share"),
                               torch.tensor([0.05 * (1 + 1 / 1.5) + 0.9, 0.5, 0.05 / 3]))
    for weighting in EHR_WEIGHTINGS:
        assert torch.isnan(ehr(-heat, box, weighting)).all()  # no positive heat
    with pytest.raises(ValueError, match="no box pixels"):
        ehr(heat, torch.zeros_like(box))
    with pytest.raises(ValueError, match="does not match"):
        bbox_score(heat, box[:, :, :4])
    with pytest.raises(ValueError, match="weighting"):
        ehr(heat, box, "weighted")


def test_ssim_and_spearman():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 16, 16, generator=g)
    torch.testing.assert_close(ssim(a, a), torch.ones(3))
    torch.testing.assert_close(ssim(a, 2 * a + 3), torch.ones(3))  # maps are min-max normalised
    unrelated = ssim(a, torch.rand(3, 16, 16, generator=g))
    assert (unrelated < 0.2).all()
    assert (ssim(a, 1 - a) < 0).all()
    seq = torch.rand(2, 30, generator=g)
    torch.testing.assert_close(ssim(seq, seq), torch.ones(2))
    assert ssim(a[:, :5, :7], a[:, :5, :7] ** 2).shape == (3,)  # smaller than the window
    torch.testing.assert_close(spearman(a, a ** 3), torch.ones(3))
    torch.testing.assert_close(spearman(a, -a), -torch.ones(3))
    tied = spearman(torch.tensor([[1.0, 1.0, 2.0]]), torch.tensor([[1.0, 2.0, 3.0]]))
    torch.testing.assert_close(tied, torch.tensor([math.sqrt(3) / 2]))
    assert torch.isnan(spearman(torch.ones(1, 4), torch.rand(1, 4))).all()


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 2))


def gradient(model, x, target):
    x = x.clone().requires_grad_(True)
    score = model(x).gather(1, target.view(-1, 1)).sum()
    return torch.autograd.grad(score, x)[0][:, 0]


def test_sanity_check_separates_a_model_ignoring_method_and_leaves_the_model_alone():
    model = mlp().train()
    model[1].eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    ignoring = sanity_check(model, lambda m, inputs, t: inputs[:, 0] * 2, x, 1, ["3", "1"])
    assert ignoring.layers == ["3", "1"] and ignoring.ssim.shape == (2, 4) and ignoring.maps.shape == (2, 4, 8, 8)
    torch.testing.assert_close(ignoring.ssim, torch.ones(2, 4))
    torch.testing.assert_close(ignoring.spearman, torch.ones(2, 4))
    grad = sanity_check(model, gradient, x, 1, ["3", "1"], seed=5)
    assert (grad.ssim[-1] < 0.5).all() and (grad.spearman[-1].abs() < 0.5).all()
    again = sanity_check(model, gradient, x, 1, ["3", "1"], seed=5)
    torch.testing.assert_close(again.ssim, grad.ssim)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert [m.training for m in model.modules()] == modes
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="no layer named 'classifier.6'"):
        sanity_check(model, gradient, x, 1, ["classifier.6"])
    with pytest.raises(ValueError, match="no parameters"):
        sanity_check(model, gradient, x, 1, ["2"])

    def never(*args):
        raise AssertionError("layers are checked before any map is computed")

    custom = nn.Sequential(TwoClassLinear(torch.ones(1, 1, 8, 8)))
    with pytest.raises(ValueError, match="no reset_parameters"):
        sanity_check(custom, never, x, 1, ["0"])


def test_sanity_check_on_sequences():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4 * 12, 8), nn.Tanh(), nn.Linear(8, 2))
    x = torch.randn(3, 4, 12, generator=torch.Generator().manual_seed(0))

    def token_gradient(m, inputs, target):
        inputs = inputs.clone().requires_grad_(True)
        score = m(inputs).gather(1, target.view(-1, 1)).sum()
        return torch.autograd.grad(score, inputs)[0].norm(dim=1)

    res = sanity_check(model, token_gradient, x, torch.tensor([0, 1, 1]), ["3", "1"])
    assert res.ssim.shape == (2, 3) and res.original.shape == (3, 12)
    assert (res.spearman[-1] < 0.9).all()


def test_invalid_arguments_are_named(linear_case):
    model, x, contribution, target = linear_case
    with pytest.raises(ValueError, match="n_steps"):
        degradation(model, x, contribution, target, n_steps=0)
    with pytest.raises(ValueError, match="empty"):
        sensitivity_n(model, x[:0], contribution[:0], target[:0])
    nan = contribution.clone()
    nan[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        degradation(model, x, nan, target)
    with pytest.raises(ValueError, match="NaN"):
        bbox_score(nan, box_mask([[0, 0, 2, 2]] * 6, (8, 8)))
    with pytest.raises(ValueError, match=r"expected \(6, 8, 8\)"):
        sensitivity_n(model, x, contribution[:, :4], target)
    with pytest.raises(ValueError, match="each N"):
        sensitivity_n(model, x, contribution, target, ns=[0, 5])
    with pytest.raises(ValueError, match="tile"):
        degradation(model, x, contribution, target, tile=0)
