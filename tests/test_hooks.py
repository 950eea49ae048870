import pytest
import torch
from torch import nn

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
