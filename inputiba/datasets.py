"""FashionMNIST from local files: the data the bundled demo model was trained on.

Nothing here downloads. The files come from the Debian package
``dataset-fashion-mnist`` (gzipped IDX files in
``/usr/share/datasets/fashion-mnist``) or from any folder holding the same four
files; they are unpacked once into the folder layout torchvision expects.
"""
from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

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
