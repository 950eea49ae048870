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
           "LSTMClassifier", "TEXT_INPUT_LAYER", "TextCheckpoint", "save_text_classifier", "load_text_classifier",
           "load_text_model"]

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
    if Path(path).suffix == ".safetensors":  # the format of Hugging Face and timm weights: no code in it
        state = _read_safetensors(path)
    else:
        from .io import load_weights_only

        state = load_weights_only(path, "a state dict")
    state = _unwrap(state)
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")
    _check_keys(model, state, path)
    model.load_state_dict(state)
    return model


def _read_safetensors(path: str | os.PathLike) -> dict:
    try:
        from safetensors.torch import load_file
    except ImportError as err:
        raise ImportError("reading .safetensors files needs the safetensors package (pip install safetensors)") \
            from err
    if not Path(path).is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    try:
        return load_file(str(path), device="cpu")
    except Exception as err:  # safetensors raises its own error type for corrupt headers
        raise ValueError(f"{path} is not a readable safetensors file: {err}") from err


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
    """Path of the file (or model folder) ``name`` in the repository's ``pretrained/`` folder.

    Raises:
        FileNotFoundError: no such file (e.g. in an install without the folder).
    """
    path = _PRETRAINED / name
    if not path.exists():
        script = "nlp/train_transformer.py" if name.endswith("_bert") else "pretrained/train_fashion_mnist.py"
        raise FileNotFoundError(
            f"{path} does not exist. The pretrained files ship with the source repository, not "
            f"with the package; recreate them with `python {script}` (pretrained/README.md).")
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

    ``"fashion_cnn"``, ``"cluttered_vgg"``, ``"cluttered_vit"`` and
    ``"cluttered_convnext"`` are the bundled :class:`FashionCNN`,
    :class:`ClutteredVGG`, :func:`cluttered_vit` and :func:`cluttered_convnext`; ``"timm:<name>"`` is a ``timm`` model
    (``"timm:vit_small_patch16_224"``, ``"timm:convnext_tiny"``; needs
    ``timm``); any other name is a torchvision architecture (``"vgg16"``,
    ``"resnet50"``, ...). All are built without weights.

    Raises:
        ValueError: unknown name (close names are listed).
    """
    import difflib

    import torchvision

    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if arch.startswith("timm:"):
        try:
            import timm
        except ImportError as err:
            raise ImportError(f"{arch} needs the optional dependency: pip install 'inputiba[timm]'") from err
        name = arch[len("timm:"):]
        if not timm.is_model(name):
            close = difflib.get_close_matches(name, timm.list_models(), n=5)
            hint = f"; close names: {', '.join('timm:' + c for c in close)}" if close else ""
            raise ValueError(f"unknown timm architecture {name!r}{hint}")
        return timm.create_model(name, pretrained=False, **kwargs)
    ours = {"fashion_cnn": FashionCNN, "cluttered_vgg": ClutteredVGG, "cluttered_vit": cluttered_vit,
            "cluttered_convnext": cluttered_convnext}
    if arch in ours:
        return ours[arch](**kwargs)
    names = torchvision.models.list_models()
    if arch not in names:
        close = difflib.get_close_matches(arch, names + list(ours), n=5)
        hint = f"; close names: {', '.join(close)}" if close else ""
        raise ValueError(f"unknown architecture {arch!r}{hint}")
    return torchvision.models.get_model(arch, weights=None, **kwargs)


def hub_weights_path(arch: str) -> Path:
    """Where torchvision keeps the default weights of ``arch`` in the torch hub cache.

    For ``"timm:<name>"``: the model's weights in the Hugging Face hub cache
    (``~/.cache/huggingface/hub``, where ``timm`` keeps them), looked up
    without any network access.

    Nothing is downloaded: the file must already be there (copy it from a
    machine that has it, or download it yourself).

    Raises:
        FileNotFoundError: the file is not in the cache (the path is named).
        ValueError: torchvision (or timm) has no weights for ``arch``.
    """
    if arch.startswith("timm:"):
        return _timm_cached_weights(arch[len("timm:"):])
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


def _timm_cached_weights(name: str) -> Path:
    import timm
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub_id:
        raise ValueError(f"timm names no Hugging Face weights for {name!r}")
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(hub_id, filename)
        if isinstance(found, str):
            return Path(found)
    raise FileNotFoundError(f"the weights of timm:{name} are not in the Hugging Face cache (repository {hub_id}); "
                            "nothing is downloaded at run time: pass the weights file with --weights instead")


def load_model(arch: str, weights: str | os.PathLike | None, num_classes: int | None = None) -> nn.Module:
    """A model in eval mode, with weights from a local file or the hub cache.

    Args:
        arch: architecture name (see :func:`build_model`).
        weights: a state-dict file (``torch.save``, or ``.safetensors``);
            ``"hub"`` for the default weights already in the torch hub cache
            (torchvision) or the Hugging Face cache (``timm:`` models)
            (:func:`hub_weights_path`); ``"bundled"`` for the shipped weights
            (``arch`` ``"fashion_cnn"``, ``"cluttered_vgg"``,
            ``"cluttered_vit"`` or ``"cluttered_convnext"``); ``None`` keeps
            random weights.
        num_classes: output classes, when not the architecture's default.
    """
    model = build_model(arch, num_classes)
    if weights == "hub":
        weights = hub_weights_path(arch)
    elif weights == "bundled":
        bundled = {"fashion_cnn": "fashion_mnist_cnn.pt", "cluttered_vgg": "cluttered_vgg.pt",
                   "cluttered_vit": "cluttered_vit.pt", "cluttered_convnext": "cluttered_convnext.pt"}
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
    path: Path | None = None

    @property
    def feature_layer(self) -> str:
        """The feature bottleneck's default layer (:attr:`LSTMClassifier.feature_layer`)."""
        return self.model.feature_layer

    @property
    def input_layer(self) -> str:
        """The embedding layer, where InputIBA's input stage acts."""
        return TEXT_INPUT_LAYER

    @property
    def stats_path(self) -> Path | None:
        """The statistics file ``nlp/train.py`` writes beside the checkpoint (``<stem>_stats.pt``)."""
        return None if self.path is None else self.path.with_name(self.path.stem + "_stats.pt")

    def encode(self, texts, max_length: int | None = None):
        """Token ids of raw texts or token lists, one word per token (:func:`inputiba.text.encode_words`)."""
        from .text import encode_words

        return encode_words(texts, self.vocab, max_length)


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
    return TextCheckpoint(model.eval(), vocab, list(state["classes"]), dict(state["info"]), Path(path))


def load_text_model(path: str | os.PathLike | None = None, device: str | torch.device = "cpu"):
    """Any text classifier of this project: an LSTM checkpoint file or a Hugging Face model folder.

    Both kinds answer the same questions (``model``, ``classes``,
    ``encode(texts)``, ``feature_layer``, ``input_layer``, ``stats_path``):
    a :class:`TextCheckpoint` for a file written by
    :func:`save_text_classifier` (``None``: the bundled Rotten Tomatoes LSTM),
    an :class:`inputiba.hf.TransformerCheckpoint` for a folder written by
    ``save_pretrained`` (loaded from that folder only).
    """
    from .hf import is_model_folder, load_text_transformer

    if path is not None and is_model_folder(path):
        return load_text_transformer(path, device)
    ck = load_text_classifier(path)
    ck.model.to(device)
    return ck


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


__all__ += ["CLUTTERED_VIT", "cluttered_vit", "load_cluttered_vit", "CLUTTERED_CONVNEXT", "cluttered_convnext",
            "load_cluttered_convnext"]

#: The bundled vision transformer of the cluttered benchmark (``timm``'s
#: ``VisionTransformer``): 64 x 64 grey canvases in 8 x 8 patches (an 8 x 8
#: grid and a class token), width 128, 6 blocks of 4 heads, MLP ratio 2.
CLUTTERED_VIT = dict(img_size=64, patch_size=8, in_chans=1, num_classes=10, embed_dim=128, depth=6,
                     num_heads=4, mlp_ratio=2.0)


def cluttered_vit(**overrides) -> nn.Module:
    """A new, untrained :data:`CLUTTERED_VIT` (needs ``timm``: ``pip install 'inputiba[timm]'``)."""
    try:
        from timm.models.vision_transformer import VisionTransformer
    except ImportError as err:
        raise ImportError("the cluttered ViT needs the optional dependency: pip install 'inputiba[timm]'") from err
    return VisionTransformer(**{**CLUTTERED_VIT, **overrides})


def load_cluttered_vit(path: str | os.PathLike | None = None) -> nn.Module:
    """The bundled cluttered-benchmark ViT in eval mode with trained weights.

    Its preset bottleneck (:data:`inputiba.pipeline.PRESETS`) is the token
    output of ``blocks.2``, halfway up its 6 blocks: 65 tokens of 128 channels.

    Args:
        path: state-dict file; ``None`` takes ``pretrained/cluttered_vit.pt``
            (written by ``pretrained/train_cluttered.py --arch vit``).
    """
    model = cluttered_vit()
    load_state(model, cluttered_file("cluttered_vit.pt") if path is None else path)
    return model.eval()


#: The bundled ConvNeXt of the cluttered benchmark (``timm``'s ``ConvNeXt``):
#: 64 x 64 grey canvases, a 4 x 4 patch stem, four stages of two blocks at
#: widths 24, 48, 96 and 192 and resolutions 16, 8, 4 and 2. No layer scale
#: (``ls_init_value=None``): eight blocks train without it, and every
#: parameter then has a re-initialiser, as the sanity check needs.
CLUTTERED_CONVNEXT = dict(in_chans=1, num_classes=10, depths=(2, 2, 2, 2), dims=(24, 48, 96, 192),
                          ls_init_value=None)


def cluttered_convnext(**overrides) -> nn.Module:
    """A new, untrained :data:`CLUTTERED_CONVNEXT` (needs ``timm``: ``pip install 'inputiba[timm]'``)."""
    try:
        from timm.models.convnext import ConvNeXt
    except ImportError as err:
        raise ImportError("the cluttered ConvNeXt needs the optional dependency: pip install 'inputiba[timm]'") \
            from err
    return ConvNeXt(**{**CLUTTERED_CONVNEXT, **overrides})


def load_cluttered_convnext(path: str | os.PathLike | None = None) -> nn.Module:
    """The bundled cluttered-benchmark ConvNeXt in eval mode with trained weights.

    Its preset bottleneck (:data:`inputiba.pipeline.PRESETS`) is the output
    of ``stages.1``: ``(48, 8, 8)``, at 1/8 of the canvas as ClutteredVGG's.

    Args:
        path: state-dict file; ``None`` takes ``pretrained/cluttered_convnext.pt``
            (written by ``pretrained/train_cluttered.py --arch convnext``).
    """
    model = cluttered_convnext()
    load_state(model, cluttered_file("cluttered_convnext.pt") if path is None else path)
    return model.eval()


def cluttered_file(name: str) -> Path:
    """:func:`pretrained_path`, naming the script that writes the cluttered benchmark's files."""
    try:
        return pretrained_path(name)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{_PRETRAINED / name} does not exist. The pretrained files ship with the source repository, "
            f"not with the package; recreate them with `python pretrained/train_cluttered.py`.") from None
