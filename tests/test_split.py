"""The model cut at the bottleneck's layer (inputiba.split) and mixed precision (inputiba.precision)."""
import pytest
import torch
from torch import nn

from conftest import ResidualModel, TinyCNN, model_fingerprint
from inputiba import IBA
from inputiba.evaluation import spearman
from inputiba.precision import compute_dtype, lowered
from inputiba.split import Split, outputs_match, split_at


class _InPlaceSkip(ResidualModel):
    """The skipped value is changed in place after the layer."""

    def forward(self, x):
        s = self.stem(x)
        s.add_(self.inner(s))  # (fx records `s += ...` as an out-of-place add)
        return self.fc(torch.relu(s).flatten(1))


class _FixedBatch(ResidualModel):
    """The batch size is read before the layer and used after it."""

    def forward(self, x):
        b = x.shape[0]
        y = torch.relu(self.inner(self.stem(x)))
        return self.fc(y.reshape(b, -1))


class _TwiceCalled(ResidualModel):
    def forward(self, x):
        return self.fc(self.inner(self.inner(self.stem(x))).flatten(1))


def test_the_cut_reproduces_the_model_and_shares_its_modules():
    torch.manual_seed(0)
    model = ResidualModel().eval()
    split = split_at(model, "inner")
    x = torch.randn(2, 3, 8, 8)
    features, others = split.run_prefix(x)
    torch.testing.assert_close(features, model.inner(model.stem(x)))
    assert len(others) == 1  # the skipped stem output
    torch.testing.assert_close(split.run_suffix(features, others), model(x), rtol=0, atol=0)
    assert split.suffix.get_submodule("fc") is model.fc
    # copies made after the prefix, the skipped value repeated with them
    assert split.check(x, model(x), n_copies=3) is not None
    out = split.run_suffix(features.repeat_interleave(3, 0), Split.repeat(others, 2, 3))
    torch.testing.assert_close(out, model(x).repeat_interleave(3, 0))


def test_values_the_suffix_changes_in_place_are_copied_first():
    torch.manual_seed(0)
    model = _InPlaceSkip().eval()
    split = split_at(model, "inner")
    assert split.mutated == (True,)
    x = torch.randn(2, 3, 8, 8)
    features, others = split.run_prefix(x)
    kept = others[0].clone()
    first = split.run_suffix(features, others)
    second = split.run_suffix(features, others)
    torch.testing.assert_close(others[0], kept, rtol=0, atol=0)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    torch.testing.assert_close(first, model(x))


def test_models_that_cannot_be_cut():
    class Branchy(ResidualModel):
        def forward(self, x):
            return super().forward(x if x.sum() > 0 else -x)  # control flow on values

    assert split_at(Branchy(), "inner") is None
    assert split_at(_TwiceCalled(), "inner") is None
    assert split_at(ResidualModel(), "no_such_layer") is None
    # traceable, but the batch size is fixed before the layer: the check refuses copies
    model = _FixedBatch().eval()
    split = split_at(model, "inner")
    x = torch.randn(2, 3, 8, 8)
    assert split.check(x, model(x), n_copies=1) is not None
    assert split.check(x, model(x), n_copies=3) is None


def test_iba_falls_back_where_the_cut_does_not_hold():
    torch.manual_seed(0)
    model = _FixedBatch().eval()
    iba = IBA(model, "inner", steps=3)
    iba.estimate([torch.randn(8, 3, 8, 8)], n_samples=8)
    x = torch.randn(2, 3, 8, 8)
    heat = iba.attribute(x, seed=0)
    assert iba._split_copies_ok == {False: False} and iba._expand_ok == {False: False}
    ref = IBA(model, "inner", stats=iba.stats, steps=3, copies_at_layer=False).attribute(x, seed=0)
    torch.testing.assert_close(heat, ref)


def test_a_changed_model_is_cut_again():
    torch.manual_seed(0)
    model = ResidualModel().eval()
    iba = IBA(model, "inner", steps=2)
    iba.estimate([torch.randn(8, 3, 8, 8)], n_samples=8)
    x = torch.randn(1, 3, 8, 8)
    iba.attribute(x, seed=0)
    first = iba._split
    model.fc = nn.Linear(4 * 8 * 8, 3)
    after = iba.attribute(x, seed=0)
    assert iba._split is not first and iba._split[1].suffix.get_submodule("fc") is model.fc
    ref = IBA(model, "inner", stats=iba.stats, steps=2, copies_at_layer=False).attribute(x, seed=0)
    torch.testing.assert_close(after, ref)


def test_precision_names():
    assert compute_dtype("float32", "cpu") is None
    assert compute_dtype("bfloat16", "cpu") is torch.bfloat16
    assert compute_dtype("float16", "cpu") is torch.float16
    assert compute_dtype("auto", "cpu") in (None, torch.bfloat16)
    with pytest.raises(ValueError, match="precision must be one of"):
        compute_dtype("half", "cpu")
    with pytest.raises(ValueError, match="precision must be one of"):
        IBA(TinyCNN(), "features.2", precision="fp8")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_lowered_equals_autocast_and_leaves_the_model_alone(dtype):
    torch.manual_seed(0)
    model = TinyCNN().eval()
    before = model_fingerprint(model)
    x = torch.randn(2, 3, 16, 16)
    with lowered(model, dtype, "cpu") as run:
        out = run(x)
    with torch.autocast("cpu", dtype=getattr(torch, dtype)):
        expected = model(x)
    assert out.dtype == getattr(torch, dtype)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    after = model_fingerprint(model)
    for k, v in before["state"].items():
        assert after["state"][k].dtype == torch.float32
        torch.testing.assert_close(after["state"][k], v, rtol=0, atol=0)
    with lowered(model, "float32", "cpu") as run:
        assert run is model


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_maps_rank_like_float32(tiny_cnn, image_loader, dtype):
    iba = IBA(tiny_cnn, "features.2")
    iba.estimate(image_loader, n_samples=40)
    x = torch.randn(2, 3, 16, 16)
    full = iba.attribute(x, seed=0)
    low = IBA(iba.model, iba.layer, stats=iba.stats, precision=dtype).attribute(x, seed=0)
    assert low.dtype == torch.float32 and not torch.equal(low, full)
    assert (spearman(full, low) > 0.9).all()


def test_outputs_match_is_relative_to_the_outputs_size():
    a = torch.tensor([100.0, 0.0])
    assert outputs_match(a, a + torch.tensor([0.0, 5e-3]))  # rounding of a large output
    assert not outputs_match(a, a + torch.tensor([0.0, 1.0]))
    assert not outputs_match(a, a[:1])
