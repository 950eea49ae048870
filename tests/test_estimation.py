import pytest
import torch
from torch import nn

from inputiba.estimation import FeatureStats, batch_moments, estimate_stats, merge_moments
from inputiba.hooks import LayerNotReached


def _merged(chunks, masks=None):
    m = None
    for i, c in enumerate(chunks):
        b = batch_moments(c, None if masks is None else masks[i])
        m = b if m is None else merge_moments(m, b)
    return m


def test_merged_moments_equal_whole_data_statistics_for_any_split():
    x = torch.randn(41, 3, 4) * 3 + 1
    for sizes in ([41], [7, 13, 1, 20], [1] * 41):
        m = _merged(list(torch.split(x, sizes)))
        stats = FeatureStats.from_moments(m, 41, min_std=0.0)
        torch.testing.assert_close(stats.mean, x.mean(0))
        torch.testing.assert_close(stats.std, x.std(0))
        assert (m.count == 41).all()


def test_masked_elements_are_left_out():
    x = torch.randn(30, 5)
    mask = torch.rand(30, 5) > 0.4
    m = _merged(list(torch.split(x, 8)), list(torch.split(mask, 8)))
    for j in range(5):
        vals = x[mask[:, j], j].double()
        assert m.count[j].item() == vals.numel()
        # each batch's sums are float32 (about 1e-7 of the value); the statistics are kept in float32
        assert m.mean[j].item() == pytest.approx(vals.mean().item(), rel=1e-6, abs=1e-7)
        assert (m.m2[j] / (vals.numel() - 1)).item() == pytest.approx(vals.var().item(), rel=1e-6)


def test_relu_variant_is_half_gaussian_with_zero_mean():
    x = torch.relu(torch.randn(200, 6))
    stats = FeatureStats.from_moments(batch_moments(x), 200, relu=True, min_std=0.0)
    assert (stats.mean == 0).all()
    expected = torch.sqrt((x.double() ** 2).sum(0) / (x != 0).sum(0))
    torch.testing.assert_close(stats.std, expected.float())


def test_active_mask_and_min_std():
    x = torch.zeros(200, 3)
    x[:1, 1] = 5.0      # 0.5 % non-zero: inactive
    x[:10, 2] = 5.0     # 5 % non-zero: active
    stats = FeatureStats.from_moments(batch_moments(x), 200, min_std=0.01)
    assert stats.active.tolist() == [0.0, 0.0, 1.0]
    assert stats.std[0].item() == pytest.approx(0.01)


class _Stops(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = nn.Linear(4, 3)
        self.second = nn.Linear(3, 2)

    def forward(self, x):
        self.first(x)
        raise AssertionError("the forward pass should have stopped at the layer")


def test_estimate_stops_at_the_layer_and_uses_exactly_n_samples():
    model = _Stops()
    loader = [torch.randn(10, 4) for _ in range(3)]
    stats = estimate_stats(model, model.first, loader, n_samples=25)
    assert stats.n_samples == 25 and stats.shape == (3,)
    with torch.no_grad():
        feats = model.first(torch.cat(loader)[:25])
    torch.testing.assert_close(stats.mean, feats.mean(0))


def test_estimate_errors():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
    with pytest.raises(ValueError, match="no samples"):
        estimate_stats(model, model[0], [], n_samples=10)
    with pytest.raises(ValueError, match="NaN"):
        estimate_stats(model, model[0], [torch.full((2, 4), float("nan"))], n_samples=10)
    with pytest.raises(TypeError, match="loader"):
        estimate_stats(model, model[0], ["text"], n_samples=10)
    with pytest.raises(ValueError, match=r"rejected inputs of shape \(2, 7\)"):
        estimate_stats(model, model[0], [torch.randn(2, 7)], n_samples=10)
    outer = nn.Module()
    outer.used, outer.unused = model, nn.Linear(1, 1)
    outer.forward = lambda x: outer.used(x)
    with pytest.raises(LayerNotReached, match="never called"):
        estimate_stats(outer, outer.unused, [torch.randn(2, 4)], n_samples=10)


def test_save_load_round_trip_and_corrupt_files(tmp_path):
    x = torch.randn(20, 2, 3, 3)
    stats = FeatureStats.from_moments(batch_moments(x), 20, relu=False)
    path = tmp_path / "stats.pt"
    stats.save(path)
    loaded = FeatureStats.load(path)
    for name in ("mean", "std", "active"):
        torch.testing.assert_close(getattr(loaded, name), getattr(stats, name))
    assert loaded.n_samples == 20 and loaded.relu is False
    assert [p.name for p in tmp_path.iterdir()] == ["stats.pt"]

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match="cannot read"):
        FeatureStats.load(bad)
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a feature-statistics file"):
        FeatureStats.load(tmp_path / "other.pt")
    state = stats.state_dict()
    state["std"] = torch.zeros_like(state["std"])
    torch.save(state, tmp_path / "zero_std.pt")
    with pytest.raises(ValueError, match="corrupt"):
        FeatureStats.load(tmp_path / "zero_std.pt")
    with pytest.raises(FileNotFoundError):
        FeatureStats.load(tmp_path / "missing.pt")


def test_unmasked_moments_equal_moments_with_a_mask_of_ones():
    x = torch.relu(torch.randn(37, 3, 5, 4, generator=torch.Generator().manual_seed(2)))
    plain, weighted = batch_moments(x), batch_moments(x, torch.ones(1, 3, 5, 4))
    for field in ("count", "mean", "m2", "nonzero", "sumsq"):
        assert torch.equal(getattr(plain, field), getattr(weighted, field)), field
    assert float(plain.count[0, 0, 0]) == 37 and plain.mean.dtype == torch.float64
