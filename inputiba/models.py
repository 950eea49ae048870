"""The models the project ships, and loading of weights.

``FashionCNN`` is a VGG-style network for ``(1, 28, 28)`` FashionMNIST images.
Its trained weights, the bottleneck statistics at :data:`FASHION_CNN_LAYER` and
16 test images live in the repository's ``pretrained/`` folder, written by
``pretrained/train_fashion_mnist.py``.

``LSTMClassifier`` is the DeepLSTM-style text classifier (embedding, stacked
LSTMs, linear head); :func:`save_text_classifier` / :func:`load_text_classifier`
keep it in one file with its vocabulary and settings.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor, nn

__all__ = ["FashionCNN", "FASHION_CNN_LAYER", "load_state", "pretrained_path", "load_fashion_cnn",
           "bundled_samples", "build_model", "hub_weights_path", "load_model",
           "LSTMClassifier", "TEXT_INPUT_LAYER", "TextCheckpoint", "save_text_classifier", "load_text_classifier"]

#: The embedding layer's name in :class:`LSTMClassifier`.
TEXT_INPUT_LAYER = "embedding"

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
    from .io import load_weights_only

    state = load_weights_only(path, "a state dict")
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

    ``"fashion_cnn"`` and ``"cluttered_vgg"`` are the bundled
    :class:`FashionCNN` and :class:`ClutteredVGG`; any other name is a
    torchvision architecture (``"vgg16"``, ``"resnet50"``, ...), built without
    weights.

    Raises:
        ValueError: unknown name (close names are listed).
    """
    import difflib

    import torchvision

    ours = {"fashion_cnn": FashionCNN, "cluttered_vgg": ClutteredVGG}
    if arch in ours:
        return ours[arch](**({} if num_classes is None else {"num_classes": num_classes}))
    names = torchvision.models.list_models()
    if arch not in names:
        close = difflib.get_close_matches(arch, names + list(ours), n=5)
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
            ``"bundled"`` for the shipped weights (``arch="fashion_cnn"`` or
            ``"cluttered_vgg"``); ``None`` keeps random weights.
        num_classes: output classes, when not the architecture's default.
    """
    model = build_model(arch, num_classes)
    if weights == "hub":
        weights = hub_weights_path(arch)
    elif weights == "bundled":
        bundled = {"fashion_cnn": "fashion_mnist_cnn.pt", "cluttered_vgg": "cluttered_vgg.pt"}
        if arch not in bundled:
            raise ValueError(f"weights='bundled' exists only for arch in {sorted(bundled)}")
        weights = pretrained_path(bundled[arch])
    if weights is not None:
        load_state(model, weights)
    return model.eval()


class LSTMClassifier(nn.Module):
    """Embedding, stacked LSTMs, and a linear head on the last real token's output.

    Input ``(B, T)`` token ids, right-padded with ``pad_index``; output
    ``(B, n_classes)`` logits. The LSTMs are separate modules ``lstm.0``,
    ``lstm.1``, ... so a bottleneck can go on any one's output sequence
    ``(B, T, hidden_size)``. The head reads the top LSTM's *output sequence*
    at each text's last real token (for a unidirectional LSTM the same value
    as its final hidden state), so a bottleneck on that sequence reaches the
    decision; a head on the returned ``(h, c)`` would bypass it. Padding
    comes after the real tokens and so never changes their outputs.

    Args:
        vocab_size: rows of the embedding (the vocabulary's size).
        n_classes: outputs.
        embedding_dim: embedding width.
        hidden_size: width of every LSTM.
        num_layers: stacked LSTMs.
        dropout: dropout between layers and before the head (training only).
        pad_index: padding id (the embedding's ``padding_idx``).
    """

    def __init__(self, vocab_size: int, n_classes: int = 2, embedding_dim: int = 100,
                 hidden_size: int = 256, num_layers: int = 4, dropout: float = 0.3,
                 pad_index: int = 0) -> None:
        super().__init__()
        self._settings = {"vocab_size": vocab_size, "n_classes": n_classes, "embedding_dim": embedding_dim,
                          "hidden_size": hidden_size, "num_layers": num_layers, "dropout": dropout,
                          "pad_index": pad_index}
        self.pad_index = pad_index
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=pad_index)
        sizes = [embedding_dim] + [hidden_size] * num_layers
        self.lstm = nn.ModuleList(nn.LSTM(sizes[i], sizes[i + 1], batch_first=True)
                                  for i in range(num_layers))
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, n_classes)

    def forward(self, ids: Tensor) -> Tensor:
        """``(B, T)`` token ids to ``(B, n_classes)`` logits."""
        lengths = (ids != self.pad_index).sum(dim=1).clamp_min(1)
        x = self.embedding(ids)
        for lstm in self.lstm:
            x, _ = lstm(self.drop(x))
        last = x[torch.arange(x.shape[0], device=x.device), lengths - 1]
        return self.head(self.drop(last))

    def settings(self) -> dict:
        """The constructor's arguments, to rebuild the model."""
        return dict(self._settings)

    @property
    def feature_layer(self) -> str:
        """The default layer of the feature bottleneck: the LSTM below the top one.

        The head reads the top LSTM only at the last token, so a bottleneck on
        the top LSTM's sequence matters at that one position and gives a
        degenerate map. The outputs of the LSTM below feed the top one at
        every position. A one-layer model has only its top LSTM.
        """
        return f"lstm.{max(len(self.lstm) - 2, 0)}"


@dataclass
class TextCheckpoint:
    """A text classifier with everything needed to use it.

    Attributes:
        model: the :class:`LSTMClassifier`, in eval mode.
        vocab: its :class:`inputiba.text.Vocabulary`.
        classes: class names in output order.
        info: free-form facts about training (accuracy, data, seed).
    """

    model: "LSTMClassifier"
    vocab: object
    classes: list[str]
    info: dict = field(default_factory=dict)


def save_text_classifier(path: str | os.PathLike, model: "LSTMClassifier", vocab, classes: list[str],
                         info: dict | None = None) -> None:
    """Write model weights, settings, vocabulary and class names to one file, atomically.

    Only tensors, strings and numbers are stored: the file loads with
    ``weights_only=True``.
    """
    from .io import atomic_path

    state = {"format": "inputiba.text_classifier/1", "settings": model.settings(),
             "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
             "vocab": list(vocab.tokens), "classes": list(classes), "info": dict(info or {})}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_text_classifier(path: str | os.PathLike | None = None) -> TextCheckpoint:
    """Read a file written by :func:`save_text_classifier` (``weights_only`` load).

    Args:
        path: the file; ``None`` takes the shipped
            ``pretrained/rotten_tomatoes_lstm.pt``.

    Raises:
        ValueError: the file is corrupt, not a text-classifier file, or its
            vocabulary and weights disagree.
    """
    from .text import Vocabulary, check_vocabulary

    path = pretrained_path("rotten_tomatoes_lstm.pt") if path is None else path
    from .io import load_weights_only

    state = load_weights_only(path, "a text classifier", "a text-classifier", "inputiba.text_classifier/1")
    try:
        model = LSTMClassifier(**state["settings"])
    except TypeError as err:
        raise ValueError(f"{path} holds unknown model settings: {err}") from err
    vocab = Vocabulary(state["vocab"])
    check_vocabulary(model, vocab)
    _check_keys(model, state["state_dict"], path)
    model.load_state_dict(state["state_dict"])
    return TextCheckpoint(model.eval(), vocab, list(state["classes"]), dict(state["info"]))


# ---------------------------------------------------------------- cluttered FashionMNIST

__all__ += ["ClutteredVGG", "CLUTTERED_LAYER", "load_cluttered_vgg", "cluttered_file"]

#: The layer the bottleneck goes at in :class:`ClutteredVGG`: the first conv
#: of the fourth block, at 1/8 of the input resolution, before its ReLU,
#: ``(128, 8, 8)`` per image (the analogue of VGG16's conv4_1, ``features.17``).
CLUTTERED_LAYER = "features.13"


class ClutteredVGG(nn.Module):
    """A VGG11-style network for ``(1, 64, 64)`` cluttered canvases, about 554k parameters.

    Input ``(B, 1, 64, 64)`` standardised canvases (see
    :mod:`inputiba.cluttered`); output ``(B, 10)`` logits. Four blocks of
    3x3 convs with ReLUs, each ending in a 2x2 max-pool, as in VGG11 (one
    conv in the first block, two in the others). Feature map sizes:
    ``(16, 64, 64)``, ``(32, 32, 32)``, ``(64, 16, 16)``, ``(128, 8, 8)``;
    ``(128, 4, 4)`` into a two-layer classifier.

    Args:
        num_classes: number of outputs.
        dropout: dropout probability before the last layer.
    """

    def __init__(self, num_classes: int = 10, dropout: float = 0.25) -> None:
        super().__init__()
        # ReLUs are not in-place: an in-place one would overwrite the output of
        # the conv before it, which a forward hook may have kept.
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(),
            nn.Conv2d(128, 128, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(128 * 4 * 4, 128), nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(128, num_classes),
        )
        # torchvision's VGG initialisation: with PyTorch's default one this
        # plain (batch-norm free) stack learns several times more slowly.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 1, 64, 64)`` canvases to ``(B, num_classes)`` logits."""
        return self.classifier(torch.flatten(self.features(x), 1))


def load_cluttered_vgg(path: str | os.PathLike | None = None) -> ClutteredVGG:
    """A :class:`ClutteredVGG` in eval mode with trained weights.

    Args:
        path: state-dict file; ``None`` takes the shipped
            ``pretrained/cluttered_vgg.pt`` (written by
            ``pretrained/train_cluttered.py``).
    """
    model = ClutteredVGG()
    load_state(model, cluttered_file("cluttered_vgg.pt") if path is None else path)
    return model.eval()


def cluttered_file(name: str) -> Path:
    """:func:`pretrained_path`, naming the script that writes the cluttered benchmark's files."""
    try:
        return pretrained_path(name)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{_PRETRAINED / name} does not exist. The pretrained files ship with the source repository, "
            f"not with the package; recreate them with `python pretrained/train_cluttered.py`.") from None
