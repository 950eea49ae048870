"""Tiny models and data shared by the tests."""
from __future__ import annotations

import pytest
import torch
from torch import nn


class TinyCNN(nn.Module):
    """3x16x16 -> 5 classes; ``features.2`` is a conv whose output has no ReLU before it."""

    def __init__(self, in_channels: int = 3, n_classes: int = 5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU(),
            nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(6 * 8 * 8, n_classes))

    def forward(self, x):
        return self.head(self.features(x))


class LeftHalfModel(nn.Module):
    """A model whose classifier reads only the left half of its feature map.

    The head's weights are scaled so that it is confident, as a trained
    classifier is; an unconfident model loses nothing by closing the whole
    bottleneck, and then no region is preferred.
    """

    def __init__(self, channels: int = 4, size: int = 16, n_classes: int = 3, scale: float = 20.0):
        super().__init__()
        self.conv = nn.Conv2d(1, channels, 3, padding=1)
        self.half = size // 2
        self.fc = nn.Linear(channels * size * self.half, n_classes)
        with torch.no_grad():
            self.fc.weight.mul_(scale)

    def forward(self, x):
        f = self.conv(x)
        return self.fc(f[..., : self.half].flatten(1))


class ResidualModel(nn.Module):
    """A skip connection around the layer: copies cannot be made at the layer."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.inner = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        s = self.stem(x)
        y = torch.relu(self.inner(s) + s)
        return self.fc(y.flatten(1))


@pytest.fixture
def tiny_cnn():
    torch.manual_seed(0)
    return TinyCNN().eval()


@pytest.fixture
def image_loader():
    """A list of (inputs, targets) batches: 40 random 3x16x16 images."""
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(10, 3, 16, 16, generator=g), torch.zeros(10, dtype=torch.long))
            for _ in range(4)]


def model_fingerprint(model: nn.Module) -> dict:
    """Everything an attribution call must leave unchanged on a model."""
    return {
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad for p in model.parameters()],
        "hooks": [len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                  for m in model.modules()],
        "inplace": [getattr(m, "inplace", None) for m in model.modules()],
        "state": {k: v.clone() for k, v in model.state_dict().items()},
    }


def assert_left_as_found(model: nn.Module, before: dict) -> None:
    """Modes, flags, hooks, gradients and weights as :func:`model_fingerprint` recorded them."""
    after = model_fingerprint(model)
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    assert all(g is None for g in after["grads"])
    assert sum(after["hooks"]) == 0
    for k, v in before["state"].items():
        torch.testing.assert_close(after["state"][k], v, rtol=0, atol=0)


class TwoClassLinear(nn.Module):
    """Logits ``(0, w . x)``: class 1's evidence is a weighted sum of the inputs (any layout)."""

    def __init__(self, weight):
        super().__init__()
        self.weight = nn.Parameter(weight)

    def forward(self, x):
        score = (x * self.weight).flatten(1).sum(1)
        return torch.stack([torch.zeros_like(score), score], dim=1)


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny models: a second intra-op thread only adds waiting on a busy machine.

    Use as ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
