import math

import pytest
import torch
from torch import nn

from conftest import model_fingerprint
from inputiba.information import (ActivationPrior, HalfGaussianPrior, HistogramPrior, InformationResult,
                                  information_map)


class Probe(nn.Module):
    """Identity ``pixels`` (the input itself), a conv and its ReLU, then a linear head."""

    def __init__(self):
        super().__init__()
        self.pixels = nn.Identity()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(3 * 4 * 4, 2)

    def forward(self, x):
        return self.head(self.pool(self.relu(self.conv(self.pixels(x)))).flatten(1))


def _data(n_batches=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 2, 8, 8, generator=g), torch.zeros(16, dtype=torch.long)) for _ in range(n_batches)]


@pytest.fixture(scope="module")
def probe():
    torch.manual_seed(0)
    return Probe().eval()


def test_histogram_is_a_distribution_and_rare_values_carry_more_bits(probe):
    prior = ActivationPrior.estimate(probe, ["pixels", "conv"], _data(), n_bins=20)
    pixels = prior["pixels"]
    assert isinstance(pixels, HistogramPrior) and pixels.counts.shape == (2, 20)
    torch.testing.assert_close(pixels.probabilities().sum(1), torch.ones(2, dtype=torch.float64))
    assert pixels.counts.sum().item() == 64 * 2 * 8 * 8
    # standard-normal pixels: 0 is common, 2.5 rare, 100 outside the range (one count of N)
    z = torch.tensor([0.0, 2.5, 100.0]).view(1, 1, 3, 1).expand(1, 2, 3, 1)
    bits = -pixels.log_prob(z) / math.log(2.0)
    assert (bits[:, :, 0] < bits[:, :, 1]).all() and (bits[:, :, 1] < bits[:, :, 2]).all()
    torch.testing.assert_close(bits[0, :, 2, 0], torch.full((2,), math.log2(64 * 8 * 8)))
    counts = pixels.counts[0]
    k = int(((0.0 - pixels.low[0]) / (pixels.high[0] - pixels.low[0]) * 20).floor())
    assert bits[0, 0, 0].item() == pytest.approx(-math.log2(counts[k].item() / counts.sum().item()), rel=1e-6)


def test_a_given_range_takes_one_pass_and_counts_the_same(probe):
    data = _data()
    two_pass = ActivationPrior.estimate(probe, ["pixels"], data, n_bins=10, per_channel=False)
    low, high = float(two_pass["pixels"].low[0]), float(two_pass["pixels"].high[0])
    one_pass = ActivationPrior.estimate(probe, ["pixels"], iter(data), n_bins=10, per_channel=False,
                                        value_range=(low, high))
    torch.testing.assert_close(one_pass["pixels"].counts, two_pass["pixels"].counts)
    assert one_pass["pixels"].counts.shape == (1, 10) and one_pass.n_samples == 64
    with pytest.raises(ValueError, match="reads the loader twice"):
        ActivationPrior.estimate(probe, ["pixels"], iter(data))


def test_half_gaussian_estimate_and_log_density_match_the_analytic_values():
    model = nn.Sequential(nn.ReLU())
    g = torch.Generator().manual_seed(0)
    data = [2.0 * torch.randn(500, 3, 2, 2, generator=g) for _ in range(4)]
    prior = ActivationPrior.estimate(model, ["0"], data, kind="half_gaussian", n_samples=2000)
    hg = prior["0"]
    assert isinstance(hg, HalfGaussianPrior)
    assert torch.allclose(hg.p_zero, torch.full((3,), 0.5, dtype=torch.float64), atol=0.02)
    assert torch.allclose(hg.sigma, torch.full((3,), 2.0, dtype=torch.float64), atol=0.05)
    z = torch.tensor([0.0, 0.3, 1.0, 4.0]).view(1, 1, 4).expand(1, 3, 4)
    log_p = hg.log_prob(z)
    for c in range(3):
        p0, sigma = hg.p_zero[c].item(), hg.sigma[c].item()
        half_normal = torch.distributions.HalfNormal(torch.tensor(sigma, dtype=torch.float64))
        expected = half_normal.log_prob(z[0, c, 1:].double()) + math.log(1 - p0)
        torch.testing.assert_close(log_p[0, c, 1:].double(), expected, rtol=1e-5, atol=1e-5)
        assert log_p[0, c, 0].item() == pytest.approx(math.log(p0), rel=1e-6)
    assert (-log_p[0, :, 3] > -log_p[0, :, 1]).all()  # rare large activations carry more bits
    with pytest.raises(ValueError, match="negative activations"):
        hg.log_prob(-torch.ones(1, 3, 1))
    with pytest.raises(ValueError, match="negative activations"):
        ActivationPrior.estimate(nn.Sequential(nn.Identity()), ["0"], data, kind="half_gaussian")


def test_information_maps_shape_units_combination_and_determinism(probe):
    probe.train()
    before = model_fingerprint(probe)
    prior = ActivationPrior.estimate(probe, ["conv", "relu", "pool"], _data(), n_bins=16)
    x = _data(1, seed=5)[0][0][:3]
    res = information_map(probe, ["conv", "pool"], prior, x)
    after = model_fingerprint(probe)
    assert before["training"] == after["training"] and before["hooks"] == after["hooks"]
    assert all(g is None for g in after["grads"])
    probe.eval()
    assert isinstance(res, InformationResult) and res.combine == "product"
    assert res.combined.shape == (3, 8, 8) and torch.isfinite(res.combined).all()
    assert res.information["conv"].shape == (3, 3, 8, 8) and res.information["pool"].shape == (3, 3, 4, 4)
    for name in ("conv", "pool"):
        assert res.maps[name].shape == (3, 8, 8) and (res.maps[name] >= 0).all()
        torch.testing.assert_close(res.maps[name].sum((1, 2)), res.information[name].sum((1, 2, 3)))
    # each layer's scaled map lies in [0, C]; their product in [0, C^2]
    assert (res.combined >= 0).all() and (res.combined <= 9 + 1e-4).all()
    again = information_map(probe, ["conv", "pool"], prior, x)
    torch.testing.assert_close(again.combined, res.combined, rtol=0, atol=0)
    summed = information_map(probe, ["conv", "pool"], prior, x, combine="sum")
    torch.testing.assert_close(summed.combined, res.maps["conv"] + res.maps["pool"])
    assert information_map(probe, None, prior, x).maps.keys() == {"conv", "relu", "pool"}


def test_the_half_gaussian_prior_on_a_relu_layer_maps_and_round_trips(probe, tmp_path):
    prior = ActivationPrior.estimate(probe, ["relu"], _data(), kind="half_gaussian", per_channel=False)
    assert prior["relu"].sigma.shape == (1,)
    x = _data(1, seed=5)[0][0][:2]
    res = information_map(probe, ["relu"], prior, x)
    assert torch.isfinite(res.maps["relu"]).all() and res.combined.shape == (2, 8, 8)
    path = tmp_path / "prior.pt"
    prior.save(path)
    loaded = ActivationPrior.load(path)
    torch.testing.assert_close(information_map(probe, ["relu"], loaded, x).combined, res.combined)


def test_errors_name_the_problem(probe, tmp_path):
    data = _data(1)
    prior = ActivationPrior.estimate(probe, ["conv", "head"], data, n_bins=4)
    x = data[0][0][:1]
    with pytest.raises(ValueError, match="no layer named 'conv9'"):
        information_map(probe, ["conv9"], prior, x)
    with pytest.raises(ValueError, match=r"no prior was estimated for layer\(s\) \['relu'\]"):
        information_map(probe, ["relu"], prior, x)
    with pytest.raises(KeyError, match="no prior was estimated for layer 'relu'"):
        prior["relu"]
    with pytest.raises(ValueError, match="not \\(B, C, h, w\\) maps"):
        information_map(probe, ["head"], prior, x)
    with pytest.raises(TypeError, match="ActivationPrior"):
        information_map(probe, ["conv"], None, x)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        information_map(probe, ["conv"], prior, bad)
    with pytest.raises(ValueError, match=r"information_map explains float image batches .*torch.int64"):
        information_map(probe, ["conv"], prior, x.long())
    with pytest.raises(ValueError, match="batch size 0"):
        information_map(probe, ["conv"], prior, x[:0])
    with pytest.raises(ValueError, match="NaN"):
        ActivationPrior.estimate(probe, ["conv"], [bad])
    with pytest.raises(ValueError, match="kind"):
        ActivationPrior.estimate(probe, ["conv"], data, kind="gaussian")
    with pytest.raises(ValueError, match="combine"):
        information_map(probe, ["conv"], prior, x, combine="max")
    torch.save({"a": 1}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not an activation-prior file"):
        ActivationPrior.load(tmp_path / "bad.pt")
