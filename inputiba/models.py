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

__all__ = ["FashionCNN", "FASHION_CNN_LAYER", "load_state", "pretrained_path", "load_fashion_cnn",
           "bundled_samples",
           "build_model", "hub_weights_path", "load_model"]

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
    state = _unwrap(state)
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")
    _check_keys(model, state, path)
    model.load_state_dict(state)
    return model


def _unwrap(state):
    """The state dict inside common checkpoint layouts.

    Training scripts often save ``{"state_dict": ...}`` or ``{"model": ...}``,
    and ``nn.DataParallel`` prefixes every key with ``module.``.
    """
    if isinstance(state, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), Mapping) and len(state) <= 4:
                state = state[key]
                break
        if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
            state = {k[len("module."):]: v for k, v in state.items()}
    return state


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


def bundled_samples() -> tuple[Tensor, Tensor, Tensor]:
    """The 16 shipped FashionMNIST test images.

    Returns:
        ``(images, x, labels)``: ``(16, 1, 28, 28)`` uint8 raw pixels, the
        same normalised as the bundled CNN expects (float), and ``(16,)``
        labels.
    """
    from .datasets import FASHION_MNIST_MEAN, FASHION_MNIST_STD

    path = pretrained_path("fashion_mnist_samples.pt")
    samples = torch.load(path, map_location="cpu", weights_only=True)
    images = samples["images"]
    x = (images.float() / 255.0 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD
    return images, x, samples["labels"]


def load_fashion_cnn(path: str | os.PathLike | None = None) -> FashionCNN:
    """A :class:`FashionCNN` in eval mode with trained weights.

    Args:
        path: state-dict file; ``None`` takes the shipped
            ``pretrained/fashion_mnist_cnn.pt``.
    """
    model = FashionCNN()
    load_state(model, pretrained_path("fashion_mnist_cnn.pt") if path is None else path)
    return model.eval()


def build_model(arch: str, num_classes: int | None = None) -> nn.Module:
    """An untrained model by architecture name.

    ``"fashion_cnn"`` is the bundled :class:`FashionCNN`; any other name is a
    torchvision architecture (``"vgg16"``, ``"resnet50"``, ...), built without
    weights.

    Raises:
        ValueError: unknown name (close names are listed).
    """
    import difflib

    import torchvision

    if arch == "fashion_cnn":
        return FashionCNN(**({} if num_classes is None else {"num_classes": num_classes}))
    names = torchvision.models.list_models()
    if arch not in names:
        close = difflib.get_close_matches(arch, names + ["fashion_cnn"], n=5)
        hint = f"; close names: {', '.join(close)}" if close else ""
        raise ValueError(f"unknown architecture {arch!r}{hint}")
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    return torchvision.models.get_model(arch, weights=None, **kwargs)


def hub_weights_path(arch: str) -> Path:
    """Where torchvision keeps the default weights of ``arch`` in the torch hub cache.

    Nothing is downloaded: the file must already be there (copy it from a
    machine that has it, or download it yourself).

    Raises:
        FileNotFoundError: the file is not in the cache (the path is named).
        ValueError: torchvision has no weights for ``arch``.
    """
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
    except (ValueError, KeyError) as err:
        raise ValueError(f"torchvision has no pretrained weights for {arch!r}") from err
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    if not path.is_file():
        raise FileNotFoundError(
            f"the weights of {arch} are not in the torch hub cache: expected {path} "
            f"(from {weights.url}); nothing is downloaded at run time")
    return path


def load_model(arch: str, weights: str | os.PathLike | None, num_classes: int | None = None) -> nn.Module:
    """A model in eval mode, with weights from a local file or the hub cache.

    Args:
        arch: architecture name (see :func:`build_model`).
        weights: a state-dict file; ``"hub"`` for torchvision's default
            weights in the torch hub cache (:func:`hub_weights_path`);
            ``"bundled"`` for the shipped FashionMNIST weights
            (``arch="fashion_cnn"``); ``None`` keeps random weights.
        num_classes: output classes, when not the architecture's default.
    """
    model = build_model(arch, num_classes)
    if weights == "hub":
        weights = hub_weights_path(arch)
    elif weights == "bundled":
        if arch != "fashion_cnn":
            raise ValueError("weights='bundled' exists only for arch='fashion_cnn'")
        weights = pretrained_path("fashion_mnist_cnn.pt")
    if weights is not None:
        load_state(model, weights)
    return model.eval()
