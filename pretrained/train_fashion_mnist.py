"""Train the bundled FashionMNIST CNN and write the files the demo ships with.

Run from the repository root (reads FashionMNIST from ``--root``, unpacking it
there from the Debian package ``dataset-fashion-mnist`` if needed)::

    python pretrained/train_fashion_mnist.py --epochs 3 --threads 2

Writes to ``--out-dir``, each file atomically:

- ``fashion_mnist_cnn.pt``: the model's ``state_dict``;
- ``fashion_mnist_cnn_stats.pt``: IBA feature statistics at
  ``FASHION_CNN_LAYER`` over 1000 training images;
- ``fashion_mnist_samples.pt``: the first 16 test images (raw uint8) and labels;
- ``fashion_mnist_cnn.json``: test accuracy and the training settings.
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from inputiba import IBA
from inputiba.datasets import fashion_mnist
from inputiba.io import atomic_path
from inputiba.models import FASHION_CNN_LAYER, FashionCNN

N_STATS_SAMPLES = 1000
N_SHIPPED_SAMPLES = 16


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="data/", help="data folder (FashionMNIST/raw/ inside)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default="pretrained/", help="where the files are written")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's choice)")
    return parser.parse_args(argv)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                epoch: int, epochs: int) -> None:
    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    bar = tqdm(loader, desc=f"epoch {epoch}/{epochs}", unit="batch")
    for images, labels in bar:
        logits = model(images)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.item() * labels.shape[0]
        correct += int((logits.argmax(1) == labels).sum())
        seen += labels.shape[0]
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}")


@torch.no_grad()
def test_accuracy(model: nn.Module, loader: DataLoader) -> float:
    """Fraction of the loader's images that ``model`` classifies correctly."""
    model.eval()
    correct, seen = 0, 0
    for images, labels in tqdm(loader, desc="test", unit="batch"):
        correct += int((model(images).argmax(1) == labels).sum())
        seen += labels.shape[0]
    return correct / seen


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    out_dir = Path(args.out_dir)

    train_set = fashion_mnist(args.root, train=True)
    test_set = fashion_mnist(args.root, train=False)
    shuffled = DataLoader(train_set, batch_size=args.batch_size, shuffle=True,
                          generator=torch.Generator().manual_seed(args.seed))

    model = FashionCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        train_epoch(model, shuffled, optimizer, epoch, args.epochs)
    seconds = time.perf_counter() - start
    model.eval()

    accuracy = test_accuracy(model, DataLoader(test_set, batch_size=1000))
    print(f"test accuracy {accuracy:.4f} on {len(test_set)} images; trained in {seconds:.0f} s")

    # The first training images in file order: the files are already shuffled,
    # and a fixed subset makes the statistics reproducible.
    iba = IBA(model, FASHION_CNN_LAYER)
    iba.estimate(DataLoader(train_set, batch_size=250), n_samples=N_STATS_SAMPLES)

    # clone(): a slice would save the storage of all 10,000 test images.
    samples = {"images": test_set.data[:N_SHIPPED_SAMPLES].unsqueeze(1).clone(),
               "labels": test_set.targets[:N_SHIPPED_SAMPLES].clone()}
    info = {
        "test_accuracy": round(accuracy, 4),
        "epochs": args.epochs,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "torch_version": torch.__version__,
        "seconds": round(seconds, 1),
        "layer": FASHION_CNN_LAYER,
    }

    with atomic_path(out_dir / "fashion_mnist_cnn.pt") as tmp:
        torch.save(model.state_dict(), tmp)
    iba.save_stats(out_dir / "fashion_mnist_cnn_stats.pt")  # atomic itself
    with atomic_path(out_dir / "fashion_mnist_samples.pt") as tmp:
        torch.save(samples, tmp)
    with atomic_path(out_dir / "fashion_mnist_cnn.json") as tmp:
        Path(tmp).write_text(json.dumps(info, indent=2) + "\n")
    print(f"wrote {out_dir}/fashion_mnist_cnn{{.pt,_stats.pt,.json}} and fashion_mnist_samples.pt")


if __name__ == "__main__":
    main()
