"""The memory estimate: measured activations, and a refusal before any work when a run cannot fit."""
import pytest
import torch
from torch import nn

import inputiba.memory as memory
from conftest import LeftHalfModel
from inputiba import InputIBA, InputIBAConfig
from inputiba.memory import activation_bytes, check_fits


def test_activation_bytes_counts_leaf_outputs_but_not_in_place_ones():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(32, 3))
    x = torch.randn(1, 1, 4, 4)
    # conv: 2 x 4 x 4 floats; the in-place ReLU: nothing; Flatten: a view of its input, nothing; linear: 3
    assert activation_bytes(model, lambda: model(x)) == (32 + 3) * 4
    model[1].inplace = False
    assert activation_bytes(model, lambda: model(x)) == (32 + 32 + 3) * 4
    assert not any(m._forward_hooks for m in model.modules())


def test_check_fits_names_the_run_and_the_remedy(monkeypatch):
    monkeypatch.setattr(memory, "free_bytes", lambda device: 2 * memory.GiB)
    check_fits(memory.GiB, "cpu", "this", "do that")
    with pytest.raises(MemoryError, match=r"this needs at least 3.0 GiB but 2.0 GiB are free on cpu; do that"):
        check_fits(3 * memory.GiB, "cpu", "this", "do that")


def test_inputiba_refuses_a_call_that_cannot_fit_before_any_work(monkeypatch):
    torch.manual_seed(0)
    model = LeftHalfModel().eval()
    att = InputIBA(model, "conv", InputIBAConfig())
    att.estimate([torch.randn(8, 1, 16, 16)])
    x = torch.randn(4, 1, 16, 16)
    need = att.estimated_bytes(x, 4)
    # 4 inputs x 10 copies x the model's activations per row (conv 4x16x16, then the head's)
    assert need == 4 * 10 * activation_bytes(model, lambda: model(x[:1]))
    monkeypatch.setattr(memory, "free_bytes", lambda device: need - 1)
    calls = []
    monkeypatch.setattr(att, "_attribute_chunk", lambda *a, **k: calls.append(1))
    with pytest.raises(MemoryError, match="lower InputIBAConfig.max_batch"):
        att.attribute(x, seed=0)
    assert calls == []
    monkeypatch.delattr(att, "_attribute_chunk")
    att.config.max_batch = 2  # half the rows at once: fits in the same free memory
    assert att.attribute(x, seed=0).shape == (4, 16, 16)


def test_default_batch_keeps_a_cpu_step_small_and_fills_a_gpu():
    from inputiba.memory import CPU_STEP_BYTES, default_max_batch

    vgg16_224 = 10 * 512 * 28 * 28 * 4  # ten noisy copies of features.17 at 224 px
    assert default_max_batch("cpu", vgg16_224) == 1
    assert default_max_batch("cpu", vgg16_224 // 4) == 4  # 112 px
    assert default_max_batch("cpu", 1000) == 8
    assert default_max_batch("cpu", 2 * CPU_STEP_BYTES) == 1
    assert default_max_batch("cuda", vgg16_224) == 8


def test_iba_and_inputiba_choose_their_batch_from_the_layer(tiny_cnn, image_loader):
    from inputiba import IBA, IBAConfig

    iba = IBA(tiny_cnn, "features.2")
    iba.estimate(image_loader, n_samples=20)
    x = torch.randn(3, 3, 16, 16)
    assert iba.max_batch_for(x) == 8  # 6 x 16 x 16 features: small
    assert IBA(tiny_cnn, "features.2", max_batch=2, stats=iba.stats).max_batch_for(x) == 2
    with pytest.raises(ValueError, match="max_batch must be positive"):
        IBAConfig(max_batch=0)
    pipeline = InputIBA(tiny_cnn, "features.2", InputIBAConfig(max_batch=3), stats=iba.stats)
    assert pipeline.feature_iba.config.max_batch == 3
    assert InputIBA(tiny_cnn, "features.2", stats=iba.stats).feature_iba.config.max_batch is None
