import pytest
import torch
from torch import nn

from conftest import TinyCNN
from inputiba.hooks import LayerNotReached, features_at, forward_hooks, preserved_state, resolve_layer


def test_resolve_layer_by_name_and_module(tiny_cnn):
    name, module = resolve_layer(tiny_cnn, "features.2")
    assert module is tiny_cnn.features[2]
    assert resolve_layer(tiny_cnn, tiny_cnn.features[2]) == ("features.2", module)


def test_resolve_layer_errors_name_the_problem(tiny_cnn):
    with pytest.raises(ValueError, match=r"no layer named 'features\.22'.*close names: features\.2"):
        resolve_layer(tiny_cnn, "features.22")
    with pytest.raises(ValueError, match="not a submodule"):
        resolve_layer(tiny_cnn, nn.Conv2d(1, 1, 1))
    with pytest.raises(TypeError, match="dotted name"):
        resolve_layer(tiny_cnn, 3)
    with pytest.raises(ValueError, match="no layer named ''"):
        resolve_layer(tiny_cnn, "")


def test_forward_hooks_are_removed_after_an_exception(tiny_cnn):
    layer = tiny_cnn.features[2]
    with pytest.raises(KeyError):
        with forward_hooks([(layer, lambda m, a, o: o), (tiny_cnn, lambda m, a, o: o)]):
            assert len(layer._forward_hooks) == 1
            raise KeyError("boom")
    assert not layer._forward_hooks and not tiny_cnn._forward_hooks


def test_preserved_state_restores_modes_and_flags_after_an_exception(tiny_cnn):
    tiny_cnn.train()
    tiny_cnn.head.eval()
    tiny_cnn.features[0].weight.requires_grad_(False)
    modes = [m.training for m in tiny_cnn.modules()]
    flags = [p.requires_grad for p in tiny_cnn.parameters()]
    with pytest.raises(RuntimeError):
        with preserved_state(tiny_cnn):
            assert not any(m.training for m in tiny_cnn.modules())
            assert not any(p.requires_grad for p in tiny_cnn.parameters())
            raise RuntimeError
    assert [m.training for m in tiny_cnn.modules()] == modes
    assert [p.requires_grad for p in tiny_cnn.parameters()] == flags


def test_features_at_returns_the_layer_output_and_names_a_missing_layer(tiny_cnn):
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = tiny_cnn.features[:3](x)
    torch.testing.assert_close(features_at(tiny_cnn, tiny_cnn.features[2], x), expected)
    tiny_cnn.spare = nn.ReLU()
    with pytest.raises(LayerNotReached, match="'spare'"):
        features_at(tiny_cnn, tiny_cnn.spare, x, "spare")
    assert not tiny_cnn.features[2]._forward_hooks


def test_replaced_swaps_a_modules_input_or_output_and_always_unhooks(tiny_cnn):
    from inputiba.hooks import replaced

    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        with replaced(tiny_cnn, "input", lambda inp: inp.repeat(3, 1, 1, 1)):
            assert tiny_cnn(x).shape == (6, 5)
        with replaced(tiny_cnn.features[2], "output", torch.zeros_like):
            torch.testing.assert_close(tiny_cnn(x), tiny_cnn.head(torch.zeros(2, 6, 8, 8)))
    with pytest.raises(RuntimeError):
        with replaced(tiny_cnn, "input", lambda inp: inp):
            raise RuntimeError
    assert not tiny_cnn._forward_pre_hooks and not tiny_cnn.features[2]._forward_hooks
    with pytest.raises(ValueError, match="'input' or 'output'"):
        with replaced(tiny_cnn, "inside", lambda inp: inp):
            pass


class _ViewHead(nn.Module):
    """A conv net that flattens with ``view``, which a channels-last tensor cannot do."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 16 * 16, 5)

    def forward(self, x):
        f = self.conv(x)
        return self.fc(f.view(f.shape[0], -1))


def _is_channels_last(t):
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def test_conv_layout_converts_images_only_inside_a_block_the_model_accepts(tiny_cnn):
    from inputiba.hooks import channels_last_where_safe, conv_layout

    x = torch.randn(2, 3, 16, 16)
    assert conv_layout(x) is x  # off outside a block
    with channels_last_where_safe([tiny_cnn], x) as on:
        assert on
        y = conv_layout(x)
        assert _is_channels_last(y) and torch.equal(y, x)
        ids = torch.zeros(2, 7, dtype=torch.long)
        seq = torch.randn(2, 7, 3)
        assert conv_layout(ids) is ids and conv_layout(seq) is seq
    assert conv_layout(x) is x  # off again afterwards
    with channels_last_where_safe([tiny_cnn], torch.zeros(2, 7, dtype=torch.long)) as on:
        assert not on  # token ids: nothing to lay out
    with channels_last_where_safe([tiny_cnn, _ViewHead().eval()], x) as on:
        assert not on and conv_layout(x) is x


def test_grey_images_get_channels_last_strides_so_the_network_runs_channels_last():
    from inputiba.hooks import channels_last_where_safe, conv_layout

    model = TinyCNN(in_channels=1).eval()
    x = torch.randn(2, 1, 16, 16)
    assert x.is_contiguous(memory_format=torch.channels_last)  # ambiguous: a conv would read it channels-first
    with channels_last_where_safe([model], x):
        y = conv_layout(x)
        assert torch.equal(y, x) and y.stride() == (256, 1, 16, 1)
        with torch.no_grad():
            assert _is_channels_last(model.features[0](y))
            assert not _is_channels_last(model.features[0](x))


def test_the_layout_probe_runs_once_per_model_state_and_shape(tiny_cnn):
    from inputiba.hooks import channels_last_where_safe

    calls = []
    handle = tiny_cnn.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape))
    try:
        x = torch.randn(2, 3, 16, 16)
        for _ in range(3):
            with channels_last_where_safe([tiny_cnn], x) as on:
                assert on
        assert len(calls) == 1
        with channels_last_where_safe([tiny_cnn], torch.randn(1, 3, 20, 20)):
            pass
        assert len(calls) == 2  # another input shape is probed again
        with torch.no_grad():
            tiny_cnn.features[0].weight.mul_(2)  # a changed model too
        with channels_last_where_safe([tiny_cnn], x):
            pass
        assert len(calls) == 3
    finally:
        handle.remove()


@pytest.mark.parametrize("method", ["iba", "inputiba"])
def test_attribution_runs_convolutions_channels_last_where_the_model_allows(tiny_cnn, method):
    from inputiba import IBA, InputIBA, InputIBAConfig
    from inputiba.gan import GANConfig

    def build(model, layer):
        if method == "iba":
            return IBA(model, layer)
        cfg = InputIBAConfig(gan=GANConfig(n_samples=8, epochs=1, batch_size=8, critic_width=4))
        cfg.input.steps = 2
        return InputIBA(model, layer, cfg)

    data = [torch.randn(8, 3, 16, 16)]
    seen = []
    handle = tiny_cnn.features[0].register_forward_pre_hook(lambda m, args: seen.append(_is_channels_last(args[0])))
    try:
        att = build(tiny_cnn, "features.2")
        att.estimate(data)
        seen.clear()
        att.attribute(torch.randn(2, 3, 16, 16), target=[0, 1], seed=0)
    finally:
        handle.remove()
    assert seen and all(seen)  # every pass of every stage, the probe included
    assert all(p.is_contiguous() for p in tiny_cnn.parameters())  # the weights were not touched

    # a model that flattens with view() is run in the ordinary layout, and works
    model = _ViewHead().eval()
    att = build(model, "conv")
    att.estimate(data)
    out = att.attribute(torch.randn(2, 3, 16, 16), target=[0, 1], seed=0)
    assert out.shape == (2, 16, 16) and torch.isfinite(out).all()
