import pytest
import torch
from torch import nn

from inputiba.evaluation import deletion, insertion, pixel_ranks


def test_pixel_ranks():
    attribution = torch.tensor([[[0.1, 0.9], [0.5, 0.5]]])
    assert pixel_ranks(attribution).tolist() == [[[3, 0], [1, 2]]]


class TwoClassLinear(nn.Module):
    """Logits (0, w . x): class 1's evidence is a weighted sum of the pixels."""

    def __init__(self, weight):
        super().__init__()
        self.weight = nn.Parameter(weight)

    def forward(self, x):
        score = (x * self.weight).flatten(1).sum(1)
        return torch.stack([torch.zeros_like(score), score], dim=1)


@pytest.fixture
def linear_case():
    g = torch.Generator().manual_seed(0)
    weight = torch.rand(1, 1, 8, 8, generator=g)
    x = torch.rand(6, 1, 8, 8, generator=g) + 0.5
    model = TwoClassLinear(weight).eval()
    contribution = (x * weight)[:, 0]  # the exact contribution of each pixel
    return model, x, contribution, torch.ones(6, dtype=torch.long)


def test_the_true_contribution_beats_random_and_reversed_rankings(linear_case):
    model, x, contribution, target = linear_case
    random = torch.rand(contribution.shape, generator=torch.Generator().manual_seed(1))
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
