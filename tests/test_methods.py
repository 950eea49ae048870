"""The common attribution protocol: registry, contract, and known answers per method."""
from __future__ import annotations

import sys
from dataclasses import replace

import pytest
import torch
from torch import nn

from conftest import TinyCNN, model_fingerprint
from inputiba.gan import GANConfig
from inputiba.iba import IBAConfig
from inputiba.methods import available_methods, get_method
from inputiba.methods.base import last_conv_layer
from inputiba.pipeline import InputIBAConfig

pytest.importorskip("captum")

pytestmark = pytest.mark.usefixtures("one_thread")


ALL = ["contrastive_excitation_backprop", "deconvolution", "deeplift_shap", "excitation_backprop",
       "extremal_perturbation", "grad_cam", "gradient", "guided_backprop", "guided_grad_cam", "iba",
       "information", "inputiba", "integrated_gradients", "linear_approximation", "lrp", "multi_iba",
       "occlusion", "occlusion_14", "random", "readout_iba", "rise", "smoothgrad"]
STOCHASTIC = ["smoothgrad", "rise", "random", "deeplift_shap", "iba"]
TEXT_ONLY = ["lime", "token_gradient", "token_gradient_x_input", "token_integrated_gradients",
             "token_occlusion"]  # tests/test_nlp.py and tests/test_harness_text.py cover them


class SmallCNN(nn.Module):
    """3x16x16 -> 5 classes, with in-place ReLUs and dropout (hook-based methods must cope)."""

    def __init__(self, bias: bool = True):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1, bias=bias), nn.ReLU(inplace=True),
            nn.Conv2d(4, 6, 3, padding=1, bias=bias), nn.ReLU(inplace=True), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(6 * 8 * 8, 5, bias=bias))

    def forward(self, x):
        return self.head(self.features(x))


def linear_model(channels: int = 2, size: int = 8, classes: int = 3) -> nn.Module:
    """Scores ``W x`` without bias; ``"0"`` is an identity layer at the input."""
    torch.manual_seed(3)
    return nn.Sequential(nn.Identity(), nn.Flatten(), nn.Linear(channels * size * size, classes, bias=False))


class RegionModel(nn.Module):
    """Class 0's score is the match of rows 2:8, cols 4:12 with a fixed +-1 pattern; class 1's is fixed.

    The pattern is symmetric left-right, so the horizontal flips of
    extremal perturbation's jitter do not change what the model sees.
    """

    rows, cols = slice(2, 8), slice(4, 12)

    def __init__(self, scale: float = 8.0):
        super().__init__()
        half = (torch.rand(6, 4, generator=torch.Generator().manual_seed(0)) < 0.5).float() * 2 - 1
        self.register_buffer("pattern", torch.cat([half, half.flip(1)], dim=1))
        self.scale = nn.Parameter(torch.tensor(scale))

    def forward(self, x):
        match = (x[:, 0, self.rows, self.cols] * self.pattern).mean(dim=(1, 2))
        return self.scale * torch.stack([match, torch.full_like(match, 0.5)], dim=1)


def region_images(n: int = 2) -> torch.Tensor:
    """Noise images holding the model's pattern in its region."""
    x = 0.5 * torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    x[:, 0, RegionModel.rows, RegionModel.cols] = RegionModel().pattern
    return x


def region_mask() -> torch.Tensor:
    inside = torch.zeros(16, 16, dtype=torch.bool)
    inside[RegionModel.rows, RegionModel.cols] = True
    return inside


def fast_settings(name: str) -> dict:
    """Small budgets so that the whole file runs in seconds."""
    return {
        "smoothgrad": dict(n_samples=6),
        "rise": dict(n_masks=64),
        "extremal_perturbation": dict(iterations=4),
        "deeplift_shap": dict(n_baselines=3),
        "iba": dict(layer="features.2", steps=2, n_copies=2),
        "multi_iba": dict(steps=2, n_copies=2),
        "readout_iba": dict(epochs=1),
        "information": dict(n_bins=10),
        "inputiba": dict(layer="features.2", config=InputIBAConfig(
            feature=IBAConfig(beta=20.0, sigma=0.0, steps=2, n_copies=2),
            gan=GANConfig(n_samples=4, epochs=1, batch_size=4, critic_steps=1, critic_width=4),
            input=replace(InputIBAConfig().input, steps=2, n_copies=2))),
    }.get(name, {})


def loader():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(8, 3, 16, 16, generator=g) for _ in range(2)]


def same(a: dict, b: dict) -> bool:
    return (all(a[k] == b[k] for k in ("training", "requires_grad", "hooks", "inplace"))
            and all(g is None for g in b["grads"])
            and all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"]))


# ---------------------------------------------------------------------- registry
def test_registry_names_and_errors():
    # other test files may register methods of their own, named test_*
    assert [n for n in available_methods() if not n.startswith("test_")] == sorted(ALL + TEXT_ONLY)
    model = SmallCNN()
    with pytest.raises(ValueError, match="did you mean grad_cam"):
        get_method("gradcam", model)
    with pytest.raises(TypeError):
        get_method("gradient", model, n_steps=3)
    assert get_method("occlusion_14", model).window == 14
    occlusion = get_method("occlusion", model, window=4)
    assert (occlusion.name, occlusion.window, occlusion.stride) == ("occlusion", 4, 4)
    for name in ALL:
        method = get_method(name, model, **fast_settings(name))
        assert method.name == name and method.unit


# ---------------------------------------------------------------------- the contract, for every method
@pytest.mark.parametrize("name", ALL)
def test_shape_finite_deterministic_and_model_left_as_found(name):
    torch.manual_seed(0)
    model = SmallCNN().train()
    model.features[0].register_forward_hook(lambda m, a, o: None)
    before = model_fingerprint(model)
    method = get_method(name, model, **fast_settings(name))
    method.prepare(loader(), n_samples=16)
    x = torch.randn(2, 3, 16, 16)
    first = method.attribute(x, target=[1, 3])
    second = method.attribute(x, target=torch.tensor([1, 3]))
    assert first.shape == (2, 16, 16) and first.dtype == torch.float32
    assert torch.isfinite(first).all()
    assert not first.requires_grad
    assert torch.equal(first, second)
    assert same(before, model_fingerprint(model))


# the bottleneck methods draw their noise for the whole batch under one seed
@pytest.mark.parametrize("name", [n for n in ALL if n not in ("random", "iba", "inputiba", "multi_iba")])
def test_a_map_does_not_depend_on_the_rest_of_the_batch(name):
    torch.manual_seed(0)
    model = SmallCNN().eval()
    x = torch.randn(3, 3, 16, 16)
    method = get_method(name, model, **fast_settings(name))
    method.prepare(loader(), n_samples=16)
    together = method.attribute(x, target=[0, 1, 2])
    alone = method.attribute(x[1:2], target=1)
    torch.testing.assert_close(together[1:2], alone, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", STOCHASTIC)
def test_seed_sets_the_draws(name):
    torch.manual_seed(0)
    model = SmallCNN().eval()
    x = torch.randn(2, 3, 16, 16)
    maps = []
    for seed in (1, 1, 2):
        method = get_method(name, model, seed=seed, **fast_settings(name))
        if name == "iba":
            method.prepare(loader(), n_samples=16)
        maps.append(method.attribute(x, target=0))
    assert torch.equal(maps[0], maps[1])
    assert not torch.equal(maps[0], maps[2])


def test_targets_and_input_checks():
    torch.manual_seed(0)
    model = SmallCNN().eval()
    x = torch.randn(3, 3, 16, 16)
    method = get_method("gradient", model)
    predicted = model(x).argmax(1)
    assert torch.equal(method.attribute(x), method.attribute(x, target=predicted))
    assert torch.equal(method.attribute(x, target=2), method.attribute(x, target=[2, 2, 2]))
    with pytest.raises(ValueError, match="out of range"):
        method.attribute(x, target=7)
    with pytest.raises(ValueError, match="one per input"):
        method.attribute(x, target=[0, 1])
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        method.attribute(x[0], target=0)
    with pytest.raises(ValueError, match="NaN"):
        method.attribute(torch.full((1, 3, 16, 16), float("nan")), target=0)


# ---------------------------------------------------------------------- known answers: a linear model
def test_gradient_methods_on_a_linear_model():
    model = linear_model()
    x = torch.rand(2, 2, 8, 8)
    t = torch.tensor([0, 2])
    w = model[2].weight.detach().reshape(3, 2, 8, 8)[t]
    torch.testing.assert_close(get_method("gradient", model).attribute(x, t), w.abs().amax(1))
    torch.testing.assert_close(get_method("smoothgrad", model, n_samples=4).attribute(x, t),
                               w.abs().sum(1))
    torch.testing.assert_close(get_method("integrated_gradients", model).attribute(x, t), (w * x).sum(1))
    torch.testing.assert_close(get_method("lrp", model).attribute(x, t), (w * x).sum(1),
                               rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(get_method("linear_approximation", model, layer="0").attribute(x, t),
                               (w * x).sum(1))
    baselines = torch.rand(4, 2, 8, 8)
    torch.testing.assert_close(
        get_method("deeplift_shap", model, baselines=baselines).attribute(x, t),
        (w * (x - baselines.mean(0))).sum(1), rtol=1e-4, atol=1e-5)


def test_deeplift_shap_sums_to_the_score_difference_without_max_pooling():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Flatten(),
                          nn.Linear(4 * 8 * 8, 3)).eval()
    x, baselines = torch.randn(2, 3, 8, 8), torch.randn(3, 3, 8, 8)
    heat = get_method("deeplift_shap", model, baselines=baselines).attribute(x, target=2)
    with torch.no_grad():
        expected = model(x)[:, 2] - model(baselines)[:, 2].mean()
    torch.testing.assert_close(heat.sum(dim=(1, 2)), expected, rtol=1e-4, atol=1e-5)


def test_excitation_backprop_on_a_linear_model():
    model = linear_model()
    x = torch.rand(2, 2, 8, 8)
    t = torch.tensor([1, 0])
    w = model[2].weight.detach().reshape(3, 2, 8, 8)[t]

    def mwp(weights):
        share = x * weights.clamp(min=0)
        return (share / share.sum(dim=(1, 2, 3), keepdim=True)).sum(1)

    eb = get_method("excitation_backprop", model, layer="0").attribute(x, t)
    torch.testing.assert_close(eb, mwp(w))
    torch.testing.assert_close(eb.sum(dim=(1, 2)), torch.ones(2))
    ceb = get_method("contrastive_excitation_backprop", model, layer="0").attribute(x, t)
    torch.testing.assert_close(ceb, mwp(w) - mwp(-w))


def test_excitation_backprop_conserves_probability_through_a_relu_cnn():
    torch.manual_seed(0)
    model = SmallCNN(bias=False).eval()
    x = torch.rand(2, 3, 16, 16)
    eb = get_method("excitation_backprop", model, layer="features.0").attribute(x, target=[0, 4])
    assert (eb >= 0).all()
    torch.testing.assert_close(eb.sum(dim=(1, 2)), torch.ones(2))
    ceb = get_method("contrastive_excitation_backprop", model, layer="features.0").attribute(x, target=1)
    torch.testing.assert_close(ceb.sum(dim=(1, 2)), torch.zeros(2), atol=1e-5, rtol=0)
    assert ceb.min() < 0 < ceb.max()


def test_lrp_conserves_the_score_and_names_unsupported_layers():
    torch.manual_seed(0)
    model = SmallCNN(bias=False).eval()
    x = torch.rand(2, 3, 16, 16)
    relevance = get_method("lrp", model).attribute(x, target=2)
    torch.testing.assert_close(relevance.sum(dim=(1, 2)), model(x)[:, 2].detach(), rtol=1e-3, atol=1e-5)
    with pytest.raises(ValueError, match=r"1 \(GELU\)"):
        get_method("lrp", nn.Sequential(nn.Flatten(), nn.GELU(), nn.Linear(12, 2))).attribute(
            torch.rand(1, 3, 2, 2), target=0)
    relu = nn.ReLU()

    class Reused(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.relu = relu

        def forward(self, x):
            return self.fc(self.relu(self.fc(x.flatten(1))))

    with pytest.raises(ValueError, match="more than once"):
        get_method("lrp", Reused()).attribute(torch.rand(1, 1, 2, 2), target=0)


# ---------------------------------------------------------------------- known answers: a model that reads one region
def test_occlusion_sees_only_the_region_read():
    heat = get_method("occlusion", RegionModel(), window=4).attribute(region_images(), target=0)
    tiles = torch.zeros(16, 16, dtype=torch.bool)
    tiles[0:8, 4:12] = True
    assert (heat[:, ~tiles] == 0).all()
    assert (heat[:, tiles] > 0).all()


def test_rise_finds_the_region_read():
    heat = get_method("rise", RegionModel(), n_masks=300, cells=4).attribute(region_images(), target=0)
    inside = region_mask()
    assert (heat[:, inside].mean(1) > 1.1 * heat[:, ~inside].mean(1)).all()
    assert (heat[:, inside].mean(1) > 1.1 * heat[:, 12:, :].amax(dim=(1, 2))).all()


def test_extremal_perturbation_keeps_the_region_read():
    # the score must outweigh the area term early on (lambda_0 = 300 is tuned for ImageNet logits);
    # area 0.1 of the mask's frame (the image and a margin of sigma) is about the region's size
    method = get_method("extremal_perturbation", RegionModel(scale=100.0), step=1, sigma=3.0, max_blur=2.0,
                        iterations=100, lr=0.1, area=0.1)
    mask = method.attribute(region_images(), target=0)
    assert mask.min() >= 0 and mask.max() <= 1
    inside = region_mask()
    assert (mask[:, inside].mean(1) > 0.8).all()
    assert (mask[:, 11:, :].amax(dim=(1, 2)) < 0.1).all()
    assert (mask.mean(dim=(1, 2)) < 0.35).all()


# ---------------------------------------------------------------------- layers, data and dependencies
def test_layer_methods_default_to_the_last_conv_and_check_the_name():
    model = SmallCNN()
    assert last_conv_layer(model) == "features.2"
    for name in ("grad_cam", "guided_grad_cam", "linear_approximation", "excitation_backprop"):
        # the CAMs read the conv's ReLU (features.3), the others the conv itself
        expected = "features.3" if name.endswith("grad_cam") else "features.2"
        assert get_method(name, model).layer == expected
        with pytest.raises(ValueError, match="has no layer named 'features.9'"):
            get_method(name, model, layer="features.9")
    cam = get_method("grad_cam", model).attribute(torch.randn(2, 3, 16, 16), target=1)
    assert (cam >= 0).all()


def test_bottleneck_methods_need_prepare():
    model = SmallCNN()
    for name in ("iba", "inputiba"):
        with pytest.raises(RuntimeError, match="prepare"):
            get_method(name, model, layer="features.2").attribute(torch.randn(1, 3, 16, 16), target=0)


def test_deeplift_shap_takes_baselines_from_data():
    torch.manual_seed(0)
    model = SmallCNN().eval()
    method = get_method("deeplift_shap", model, n_baselines=4)
    method.prepare(loader())
    torch.testing.assert_close(method.baselines, loader()[0][:4])


def test_captum_missing_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "captum.attr", None)
    with pytest.raises(ImportError, match="inputiba\\[baselines\\]"):
        get_method("gradient", SmallCNN())
    assert get_method("rise", SmallCNN()).name == "rise"


def test_grad_cam_reads_the_last_conv_activation_by_default():
    model = SmallCNN()
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    cam = get_method("grad_cam", model)
    following = dict(model.named_modules())[cam.layer]
    assert isinstance(following, nn.ReLU) and cam.layer != names[-1]
    assert get_method("grad_cam", model, layer=names[-1]).layer == names[-1]


def test_a_given_target_costs_no_extra_forward_pass_after_the_first_call():
    torch.manual_seed(0)
    model = TinyCNN().eval()
    calls = []
    handle = model.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    try:
        method = get_method("gradient", model)
        x = torch.randn(2, 3, 16, 16)
        method.attribute(x, target=[1, 2])
        first = len(calls)
        calls.clear()
        again = method.attribute(x, target=[1, 2])
        assert len(calls) == first - 1  # the probe that reads the number of classes is gone
        calls.clear()
        method.attribute(x)  # target=None still needs the prediction
        assert len(calls) == first
        with pytest.raises(ValueError, match="target 5 is out of range for a model with 5 classes"):
            method.attribute(x, target=5)
    finally:
        handle.remove()
    assert again.shape == (2, 16, 16)


@pytest.mark.parametrize("name", ["guided_backprop", "deconvolution"])
def test_the_hooked_copy_is_reused_until_the_model_changes(name):
    torch.manual_seed(0)
    model = TinyCNN().eval()
    method = get_method(name, model)
    x = torch.randn(2, 3, 16, 16)
    first = method.attribute(x, target=[0, 1])
    copy_ = method._copy[1]
    torch.testing.assert_close(method.attribute(x, target=[0, 1]), first)
    assert method._copy[1] is copy_  # no deep copy on the second call
    with torch.no_grad():
        model.features[0].weight.mul_(-1)  # in place: the copy must be made again
    changed = method.attribute(x, target=[0, 1])
    assert method._copy[1] is not copy_
    torch.testing.assert_close(changed, get_method(name, model).attribute(x, target=[0, 1]))
    assert not torch.allclose(changed, first)
