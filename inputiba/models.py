"""The small CNN the demo explains, and loading of its shipped weights.

``FashionCNN`` is a VGG-style network for ``(1, 28, 28)`` FashionMNIST images.
Its trained weights, the bottleneck statistics at :data:`FASHION_CNN_LAYER` and
16 test images live in the repository's ``pretrained/`` folder, written by
``pretrained/train_fashion_mnist.py``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor, nn

__all__ = ["FashionCNN", "FASHION_CNN_LAYER", "load_state", "pretrained_path", "load_fashion_cnn"]

#: The layer the bottleneck goes at: the first conv of the second block,
#: before its ReLU, ``(64, 14, 14)`` per image (the analogue of VGG16's
#: ``features.17``, conv4_1).
FASHION_CNN_LAYER = "features.5"

_PRETRAINED = Path(__file__).resolve().parent.parent / "pretrained"


class FashionCNN(nn.Module):
    """Two VGG blocks and a two-layer classifier, about 468k parameters.

    Input ``(B, 1, 28, 28)`` standardised images (see
    :func:`inputiba.datasets.fashion_mnist_transform`); output ``(B, 10)``
    logits. Feature map sizes: ``(32, 28, 28)`` in block 1, ``(64, 14, 14)``
    in block 2, ``(64, 7, 7)`` into the classifier.

    Args:
        num_classes: number of outputs.
        dropout: dropout probability before the last layer.
    """

    def __init__(self, num_classes: int = 10, dropout: float = 0.25) -> None:
        super().__init__()
        # ReLUs are not in-place: an in-place one would overwrite the output of
        # the conv before it, which a forward hook may have kept.
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(64 * 7 * 7, 128), nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 1, 28, 28)`` images to ``(B, num_classes)`` logits."""
        return self.classifier(torch.flatten(self.features(x), 1))


def load_state(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a ``state_dict`` saved with ``torch.save`` into ``model``.

    The file is read with ``weights_only=True``, onto the CPU; the model's
    parameters keep their device.

    Returns:
        ``model``, with the loaded weights.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is corrupt, holds no state dict, or its keys or
            shapes do not match ``model`` (the offending keys are named).
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:
        raise ValueError(f"cannot read a state dict from {path}: {err}") from err
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")
    _check_keys(model, state, path)
    model.load_state_dict(state)
    return model


def _check_keys(model: nn.Module, state: Mapping[str, Tensor], path: str | os.PathLike) -> None:
    """Name every missing, unexpected or misshapen key, which ``load_state_dict`` reports only partly."""
    expected = model.state_dict()
    problems = []
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing:
        problems.append(f"missing keys {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_names(unexpected)}")
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
             for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if wrong:
        problems.append(f"shape mismatches {_names(wrong)}")
    if problems:
        raise ValueError(f"{path} does not fit {type(model).__name__}: {'; '.join(problems)}")


def _names(items: list[str], limit: int = 6) -> str:
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown} and {len(items) - limit} more"


def pretrained_path(name: str) -> Path:
    """Path of the file ``name`` in the repository's ``pretrained/`` folder.

    Raises:
        FileNotFoundError: no such file (e.g. in an install without the folder).
    """
    path = _PRETRAINED / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist. The pretrained files ship with the source repository, not "
            f"with the package; recreate them with `python pretrained/train_fashion_mnist.py`.")
    return path


def load_fashion_cnn(path: str | os.PathLike | None = None) -> FashionCNN:
    """A :class:`FashionCNN` in eval mode with trained weights.

    Args:
        path: state-dict file; ``None`` takes the shipped
            ``pretrained/fashion_mnist_cnn.pt``.
    """
    model = FashionCNN()
    load_state(model, pretrained_path("fashion_mnist_cnn.pt") if path is None else path)
    return model.eval()
