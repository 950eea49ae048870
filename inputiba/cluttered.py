"""A cluttered-object benchmark built from real FashionMNIST items.

Each canvas (default ``64 x 64``, black background) holds one *target* item,
the one its label names, at a random place and scale, and a few *distractor*
items. Because the target's bounding box is known exactly, attribution maps
can be scored against it (:func:`inputiba.evaluation.box_mask`,
``bbox_score``, EHR).

The label is unambiguous by construction (see :class:`ClutteredConfig`):

- the target is drawn at full contrast, scaled to ``target_scale`` pixels
  (default 20 to 36) and lies wholly inside the canvas;
- every distractor is of another class, smaller (``distractor_scale``,
  default 10 to 16: always below the smallest target), dimmer (its pixels
  multiplied by ``distractor_contrast``, default 0.35 to 0.65) and may be
  cut by the canvas edge (at most ``max_cut`` of its side on each axis);
- no distractor pixel lies in the target's box: a distractor's visible tight
  extent never intersects it (placements are redrawn until one fits; after
  ``max_tries`` misses that distractor is left out, which the
  metadata records).

Items are pasted by taking the pixelwise maximum, so where distractors meet
each other the brighter pixel shows; inside the target's box the canvas
equals the target alone.

Canvas ``i`` of a split is generated from its own random generator, seeded
with ``(seed, split, i)``: any index can be regenerated without the others,
and the train and test splits never share a stream. The train split draws
items from FashionMNIST's 60,000 training images only, the test split from
its 10,000 test images only.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from .datasets import DEBIAN_FASHION_MNIST, fashion_mnist
from .io import atomic_path

__all__ = [
    "ClutteredConfig",
    "Canvas",
    "make_canvas",
    "ClutteredFashionMNIST",
    "CLUTTERED_MEAN",
    "CLUTTERED_STD",
    "normalize_canvases",
    "measure_pixel_stats",
    "save_examples",
    "bundled_canvases",
]

#: Mean of the pixels (scaled to [0, 1]) of 2,000 default train canvases,
#: seed 0: ``measure_pixel_stats(root, n=2000, seed=0)`` (measured: 0.07389).
CLUTTERED_MEAN = 0.0739

#: Std of the same pixels (measured: 0.19751).
CLUTTERED_STD = 0.1975

_SPLITS = {"train": 0, "test": 1}


@dataclass(frozen=True)
class ClutteredConfig:
    """How canvases are drawn. Ranges are inclusive ``(low, high)``.

    Attributes:
        size: side of the square canvas, pixels.
        target_scale: side, in pixels, the 28-pixel target image is resized to.
        n_distractors: how many distractors are tried per canvas.
        distractor_scale: side of each distractor, pixels; its high end must
            be below ``target_scale``'s low end.
        distractor_contrast: factor on each distractor's pixels, in ``(0, 1]``.
        max_cut: largest fraction of a distractor's side that may lie
            outside the canvas, on each axis.
        max_tries: placements tried per distractor before it is left out.
    """

    size: int = 64
    target_scale: tuple[int, int] = (20, 36)
    n_distractors: tuple[int, int] = (2, 4)
    distractor_scale: tuple[int, int] = (10, 16)
    distractor_contrast: tuple[float, float] = (0.35, 0.65)
    max_cut: float = 1 / 3
    max_tries: int = 100

    def __post_init__(self) -> None:
        if not 0 < self.target_scale[0] <= self.target_scale[1] <= self.size:
            raise ValueError(f"target_scale {self.target_scale} must lie in 1..size={self.size}")
        if not 0 < self.distractor_scale[0] <= self.distractor_scale[1] < self.target_scale[0]:
            raise ValueError(f"distractor_scale {self.distractor_scale} must be positive and below "
                             f"the smallest target scale {self.target_scale[0]}")
        if not 0 <= self.n_distractors[0] <= self.n_distractors[1]:
            raise ValueError(f"n_distractors {self.n_distractors} is not a range of counts")
        if not 0 < self.distractor_contrast[0] <= self.distractor_contrast[1] <= 1:
            raise ValueError(f"distractor_contrast {self.distractor_contrast} must lie in (0, 1]")
        if not 0 <= self.max_cut < 1:
            raise ValueError(f"max_cut must be in [0, 1), got {self.max_cut}")


@dataclass
class Canvas:
    """One generated canvas and everything about how it was made.

    Boxes are ``(x0, y0, x1, y1)``, half-open pixel coordinates (``x`` along
    the width), the tight extent of an item's non-zero pixels on the canvas.

    Attributes:
        image: ``(S, S)`` uint8 canvas.
        label: the target's class.
        box: the target's box.
        source_index: the target's index in its FashionMNIST split.
        target: ``(S, S)`` uint8, the target alone on an empty canvas.
        distractor_labels, distractor_boxes, distractor_sources: class, box
            (visible part) and source index of each placed distractor.
    """

    image: Tensor
    label: int
    box: tuple[int, int, int, int]
    source_index: int
    target: Tensor
    distractor_labels: list[int] = field(default_factory=list)
    distractor_boxes: list[tuple[int, int, int, int]] = field(default_factory=list)
    distractor_sources: list[int] = field(default_factory=list)


def _resize(item: Tensor, side: int, contrast: float = 1.0) -> Tensor:
    """A ``(28, 28)`` uint8 item as ``(side, side)`` uint8, antialiased, times ``contrast``."""
    out = F.interpolate(item[None, None].float(), size=(side, side), mode="bilinear",
                        align_corners=False, antialias=True)[0, 0]
    return (out * contrast).round().clamp(0, 255).to(torch.uint8)


def _extent(layer: Tensor) -> tuple[int, int, int, int] | None:
    """Tight half-open box ``(x0, y0, x1, y1)`` of a 2-D tensor's non-zero pixels, or None."""
    rows = layer.any(dim=1).nonzero().flatten()
    cols = layer.any(dim=0).nonzero().flatten()
    if rows.numel() == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _paste(size: int, item: Tensor, x: int, y: int) -> Tensor:
    """``item`` on an empty ``(size, size)`` canvas with its top-left at ``(x, y)``, clipped."""
    layer = torch.zeros(size, size, dtype=torch.uint8)
    h, w = item.shape
    cx0, cy0, cx1, cy1 = max(x, 0), max(y, 0), min(x + w, size), min(y + h, size)
    if cx0 < cx1 and cy0 < cy1:
        layer[cy0:cy1, cx0:cx1] = item[cy0 - y:cy1 - y, cx0 - x:cx1 - x]
    return layer


def _intersects(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def make_canvas(images: Tensor, labels: Tensor, rng: np.random.Generator,
                config: ClutteredConfig | None = None) -> Canvas:
    """Draw one canvas from a pool of FashionMNIST items.

    Args:
        images: ``(N, 28, 28)`` uint8 item pool.
        labels: ``(N,)`` their classes.
        rng: the only source of randomness.
        config: the drawing rules (defaults: :class:`ClutteredConfig`).
    """
    cfg = config or ClutteredConfig()
    n, size = len(images), cfg.size
    source = int(rng.integers(n))
    label = int(labels[source])
    side = int(rng.integers(cfg.target_scale[0], cfg.target_scale[1] + 1))
    x, y = (int(v) for v in rng.integers(0, size - side + 1, size=2))
    target = _paste(size, _resize(images[source], side), x, y)
    box = _extent(target)
    if box is None:  # an all-black item: FashionMNIST has none, but a custom pool might
        raise ValueError(f"item {source} has no non-zero pixel at scale {side}")

    canvas = target.clone()
    d_labels, d_boxes, d_sources = [], [], []
    n_distractors = int(rng.integers(cfg.n_distractors[0], cfg.n_distractors[1] + 1))
    if n_distractors and bool((labels == label).all()):
        raise ValueError(f"distractors must be of another class than {label}, and the pool has none")
    for _ in range(n_distractors):
        other = int(rng.integers(n))
        while int(labels[other]) == label:
            other = int(rng.integers(n))
        contrast = float(rng.uniform(*cfg.distractor_contrast))
        for _ in range(cfg.max_tries):
            d_side = int(rng.integers(cfg.distractor_scale[0], cfg.distractor_scale[1] + 1))
            cut = int(cfg.max_cut * d_side)
            dx, dy = (int(v) for v in rng.integers(-cut, size - d_side + cut + 1, size=2))
            layer = _paste(size, _resize(images[other], d_side, contrast), dx, dy)
            d_box = _extent(layer)
            if d_box is not None and not _intersects(d_box, box):
                canvas = torch.maximum(canvas, layer)
                d_labels.append(int(labels[other]))
                d_boxes.append(d_box)
                d_sources.append(other)
                break
    return Canvas(canvas, label, box, source, target, d_labels, d_boxes, d_sources)


def normalize_canvases(images: Tensor) -> Tensor:
    """uint8 canvases (any shape) as float model inputs: ``(p / 255 - MEAN) / STD``."""
    return (images.float() / 255.0 - CLUTTERED_MEAN) / CLUTTERED_STD


class ClutteredFashionMNIST(Dataset):
    """``n`` cluttered canvases, generated on access, the same for the same seed.

    Items are ``(image, label, box)``: a ``(1, S, S)`` float canvas
    (standardised with :data:`CLUTTERED_MEAN` / :data:`CLUTTERED_STD` when
    ``normalize``, else in [0, 1]), the target's class (int), and its box as
    an int64 ``(4,)`` tensor ``(x0, y0, x1, y1)``, half-open. :meth:`canvas`
    gives the full :class:`Canvas` with its metadata.

    Args:
        root: data folder (see :func:`inputiba.datasets.fashion_mnist`).
        split: ``"train"`` draws items from FashionMNIST's training images
            only, ``"test"`` from its test images only.
        n: number of canvases.
        seed: canvas ``i`` is drawn from a generator seeded with
            ``(seed, split, i)``.
        config: drawing rules.
        normalize: standardise the images.
        source: folder with the gzipped IDX files, if ``root`` lacks them.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", n: int = 10_000, seed: int = 0,
                 config: ClutteredConfig | None = None, normalize: bool = True,
                 source: str | os.PathLike = DEBIAN_FASHION_MNIST) -> None:
        if split not in _SPLITS:
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if n < 0:
            raise ValueError(f"n must be non-negative, got {n}")
        items = fashion_mnist(root, train=split == "train", normalize=False, source=source)
        self.images, self.labels = items.data, items.targets
        self.split, self.n, self.seed = split, n, seed
        self.config = config or ClutteredConfig()
        self.normalize = normalize

    def __len__(self) -> int:
        return self.n

    def canvas(self, index: int) -> Canvas:
        """The :class:`Canvas` at ``index``, with its metadata."""
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} canvases")
        rng = np.random.default_rng([self.seed, _SPLITS[self.split], index])
        return make_canvas(self.images, self.labels, rng, self.config)

    def source_index(self, index: int) -> int:
        """Index of canvas ``index``'s target in its FashionMNIST split."""
        return self.canvas(index).source_index

    def __getitem__(self, index: int) -> tuple[Tensor, int, Tensor]:
        c = self.canvas(index)
        image = normalize_canvases(c.image) if self.normalize else c.image.float() / 255.0
        return image.unsqueeze(0), c.label, torch.tensor(c.box, dtype=torch.int64)


def measure_pixel_stats(root: str | os.PathLike, n: int = 2000, seed: int = 0,
                        config: ClutteredConfig | None = None,
                        source: str | os.PathLike = DEBIAN_FASHION_MNIST) -> tuple[float, float]:
    """Mean and std of the pixels, in [0, 1], of ``n`` train canvases.

    How :data:`CLUTTERED_MEAN` and :data:`CLUTTERED_STD` were measured.
    """
    data = ClutteredFashionMNIST(root, "train", n, seed, config, normalize=False, source=source)
    pixels = torch.stack([data.canvas(i).image for i in range(n)]).double() / 255.0
    return float(pixels.mean()), float(pixels.std())


def save_examples(path: str | os.PathLike, data: ClutteredFashionMNIST, n: int = 8) -> None:
    """Write the first ``n`` canvases of ``data`` to ``path``, atomically.

    The file holds ``{"images": uint8 (n, 1, S, S), "labels": int64 (n,),
    "boxes": int64 (n, 4), "sources": int64 (n,)}`` and loads with
    ``weights_only=True``.
    """
    canvases = [data.canvas(i) for i in range(n)]
    examples = {"images": torch.stack([c.image for c in canvases]).unsqueeze(1),
                "labels": torch.tensor([c.label for c in canvases], dtype=torch.int64),
                "boxes": torch.tensor([c.box for c in canvases], dtype=torch.int64).reshape(n, 4),
                "sources": torch.tensor([c.source_index for c in canvases], dtype=torch.int64)}
    with atomic_path(path) as tmp:
        torch.save(examples, tmp)


def bundled_canvases(path: str | os.PathLike | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The shipped example canvases (``pretrained/cluttered_examples.pt``).

    Args:
        path: a file written by :func:`save_examples`; ``None`` takes the
            shipped one.

    Returns:
        ``(images, x, labels, boxes)``: ``(n, 1, S, S)`` uint8 raw pixels,
        the same standardised as :class:`~inputiba.models.ClutteredVGG`
        expects (float), ``(n,)`` labels and ``(n, 4)`` target boxes.
    """
    from .models import cluttered_file

    path = cluttered_file("cluttered_examples.pt") if path is None else Path(path)
    examples = torch.load(path, map_location="cpu", weights_only=True)
    images = examples["images"]
    return images, normalize_canvases(images), examples["labels"], examples["boxes"]
