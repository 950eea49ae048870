import pytest
import torch
from torch import nn

from conftest import LeftHalfModel, TinyCNN, model_fingerprint
from inputiba import IBA, LayerNotReached
from inputiba.estimation import estimate_layer_stats
from inputiba.hooks import capture, resolve_layers
from inputiba.multi import MultiIBA, MultiIBAResult


class TwoDepthLeftHalf(nn.Module):
    """A 3x3 smoothing stem before :class:`LeftHalfModel`: two depths, only the left half read."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 1, 3, padding=1)
        with torch.no_grad():
            self.stem.weight.fill_(0.05)
            self.stem.weight[0, 0, 1, 1] = 1.0
            self.stem.bias.zero_()
        self.lh = LeftHalfModel()

    def forward(self, x):
        return self.lh(self.stem(x))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def two_depths():
    torch.manual_seed(0)
    model = TwoDepthLeftHalf().eval()
    multi = MultiIBA(model, ["stem", "lh.conv"], sigma=0.0)
    multi.estimate([torch.randn(20, 1, 16, 16) for _ in range(5)], n_samples=100)
    return multi


def test_maps_per_depth_and_combined_shapes_units(two_depths):
    x = torch.randn(3, 1, 16, 16)
    res = two_depths.attribute(x, seed=0, return_result=True)
    assert isinstance(res, MultiIBAResult)
    assert set(res.maps) == {"stem", "lh.conv"}
    assert res.saliency.shape == (3, 16, 16)
    for name, shape in [("stem", (3, 1, 16, 16)), ("lh.conv", (3, 4, 16, 16))]:
        assert res.maps[name].shape == (3, 16, 16)
        assert res.capacity[name].shape == res.lam[name].shape == shape
        assert torch.isfinite(res.maps[name]).all() and (res.maps[name] >= 0).all()
        bits = res.capacity[name].sum((1, 2, 3)) / torch.log(torch.tensor(2.0))
        torch.testing.assert_close(res.maps[name].sum((1, 2)), bits)
    torch.testing.assert_close(res.saliency, res.maps["stem"] + res.maps["lh.conv"])
    assert res.losses.shape == (10, 3) and (res.losses[-1] < res.losses[0]).all()
    torch.testing.assert_close(two_depths.attribute(x, seed=0), res.saliency)


def test_every_depth_concentrates_where_the_model_reads(two_depths):
    res = two_depths.attribute(torch.randn(6, 1, 16, 16), seed=0, return_result=True)
    for heat in [*res.maps.values(), res.saliency]:
        left = heat[..., :8].sum((1, 2)) / heat.sum((1, 2))
        assert left.mean() > 0.9 and left.min() > 0.7  # as for IBA: the blur spreads a little over the middle


def test_deterministic_under_a_seed(two_depths):
    x = torch.randn(2, 1, 16, 16)
    a = two_depths.attribute(x, seed=3)
    torch.testing.assert_close(two_depths.attribute(x, seed=3), a, rtol=0, atol=0)
    assert not torch.equal(two_depths.attribute(x, seed=4), a)


def test_one_layer_is_plain_iba():
    torch.manual_seed(0)
    model = LeftHalfModel().eval()
    data = [torch.randn(20, 1, 16, 16) for _ in range(3)]
    iba = IBA(model, "conv", copies_at_layer=False, steps=5)
    iba.estimate(data, n_samples=60)
    multi = MultiIBA(model, ["conv"], steps=5, stats={"conv": iba.stats})
    x = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(multi.attribute(x, target=[0, 2], seed=1),
                               iba.attribute(x, target=[0, 2], seed=1), rtol=1e-4, atol=1e-5)


def test_model_left_as_found_and_chunks(tiny_cnn, image_loader):
    tiny_cnn.train()
    before = model_fingerprint(tiny_cnn)
    multi = MultiIBA(tiny_cnn, ["features.0", "features.2"], steps=2, n_copies=2, max_batch=2)
    multi.estimate(image_loader, n_samples=40)
    res = multi.attribute(torch.randn(3, 3, 16, 16), target=1, seed=0, return_result=True)
    assert res.saliency.shape == (3, 16, 16) and res.targets.tolist() == [1, 1, 1]
    assert res.losses.shape == (2, 3)
    after = model_fingerprint(tiny_cnn)
    assert before["training"] == after["training"] and before["requires_grad"] == after["requires_grad"]
    assert before["hooks"] == after["hooks"] and all(g is None for g in after["grads"])
    assert all(torch.equal(before["state"][k], after["state"][k]) for k in before["state"])


def test_betas_weigh_each_layer(two_depths):
    x = torch.randn(2, 1, 16, 16)
    free = MultiIBA(two_depths.model, ["stem", "lh.conv"], betas=[0.0, 10.0], stats=two_depths.stats)
    res_free = free.attribute(x, seed=0, return_result=True)
    res = two_depths.attribute(x, seed=0, return_result=True)
    assert res_free.maps["stem"].sum() > res.maps["stem"].sum()
    with pytest.raises(ValueError, match="one non-negative beta per layer"):
        MultiIBA(two_depths.model, ["stem", "lh.conv"], betas=[1.0])


def test_errors_name_the_problem(tiny_cnn):
    with pytest.raises(ValueError, match="no layer named 'features.9'"):
        MultiIBA(tiny_cnn, ["features.0", "features.9"])
    with pytest.raises(ValueError, match="given twice"):
        MultiIBA(tiny_cnn, ["features.0", "features.0"])
    with pytest.raises(TypeError, match="unknown MultiIBA settings"):
        MultiIBA(tiny_cnn, ["features.0"], stepz=3)
    multi = MultiIBA(tiny_cnn, ["features.0"])
    with pytest.raises(RuntimeError, match="estimate"):
        multi.attribute(torch.randn(1, 3, 16, 16))
    multi.estimate([torch.randn(4, 3, 16, 16)])
    x = torch.randn(1, 3, 16, 16)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        multi.attribute(x)
    with pytest.raises(ValueError, match=r"MultiIBA explains float image batches .*got \(3, 16, 16\)"):
        multi.attribute(torch.randn(3, 16, 16))
    with pytest.raises(ValueError, match="batch size 0"):
        multi.attribute(torch.randn(0, 3, 16, 16))
    head = MultiIBA(tiny_cnn, ["head.2"])
    head.estimate([torch.randn(4, 3, 16, 16)])
    with pytest.raises(ValueError, match="not \\(C, h, w\\) maps"):
        head.attribute(torch.randn(1, 3, 16, 16))


def test_capture_stops_after_the_last_layer_and_names_missing_ones(tiny_cnn):
    layers = resolve_layers(tiny_cnn, ["features.2", "features.0"])
    assert list(layers) == ["features.2", "features.0"]
    out, logits = capture(tiny_cnn, layers, torch.randn(2, 3, 16, 16))
    assert logits is None and out["features.0"].shape == (2, 4, 16, 16)
    out, logits = capture(tiny_cnn, layers, torch.randn(2, 3, 16, 16), run_to_end=True)
    assert logits.shape == (2, 5)
    unused = TinyCNN()
    tiny_cnn.spare = unused
    with pytest.raises(LayerNotReached, match="spare"):
        capture(tiny_cnn, resolve_layers(tiny_cnn, ["features.0", "spare"]), torch.randn(1, 3, 16, 16))
    del tiny_cnn.spare


def test_layer_stats_match_single_layer_estimates(tiny_cnn, image_loader):
    from inputiba.estimation import estimate_stats

    layers = resolve_layers(tiny_cnn, ["features.0", "features.3"])
    stats = estimate_layer_stats(tiny_cnn, layers, image_loader, n_samples=25, relu={"features.3": True})
    single = estimate_stats(tiny_cnn, layers["features.0"], image_loader, n_samples=25)
    torch.testing.assert_close(stats["features.0"].std, single.std)
    assert stats["features.3"].relu and not stats["features.0"].relu
    assert stats["features.0"].n_samples == 25


# ---------------------------------------------------------------------- the family behind the common protocol
@pytest.mark.parametrize("name,settings", [
    ("readout_iba", dict(epochs=1)),
    ("multi_iba", dict(steps=2, n_copies=2)),
    ("information", dict(n_bins=8)),
])
def test_registered_methods_follow_the_protocol(tiny_cnn, image_loader, name, settings):
    from inputiba.methods import get_method

    method = get_method(name, tiny_cnn, **settings)
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(RuntimeError, match="prepare"):
        method.attribute(x, target=0)
    before = model_fingerprint(tiny_cnn)
    method.prepare(image_loader, n_samples=40)
    heat = method.attribute(x, target=[0, 1])
    assert heat.shape == (2, 16, 16) and torch.isfinite(heat).all() and (heat >= 0).all()
    torch.testing.assert_close(method.attribute(x, target=[0, 1]), heat, rtol=0, atol=0)
    after = model_fingerprint(tiny_cnn)
    assert before["hooks"] == after["hooks"] and all(g is None for g in after["grads"])
    assert all(torch.equal(before["state"][k], after["state"][k]) for k in before["state"])
    assert method.unit
