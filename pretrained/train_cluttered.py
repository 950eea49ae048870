"""Train the bundled ClutteredVGG (or the cluttered ViT) on cluttered FashionMNIST canvases and write its files.

Run from the repository root (reads FashionMNIST from ``--root``, unpacking it
there from the Debian package ``dataset-fashion-mnist`` if needed)::

    python pretrained/train_cluttered.py --threads 2
    python pretrained/train_cluttered.py --arch vit --epochs 8 --lr 5e-4 --threads 2   # needs timm

The canvases come from :class:`inputiba.cluttered.ClutteredFashionMNIST`
(default :class:`~inputiba.cluttered.ClutteredConfig`): ``--n-train`` train
canvases (items from FashionMNIST's training images) and ``--n-test`` test
canvases (items from its test images), both drawn with ``--seed``.

Writes to ``--out-dir``, each file atomically:

- ``cluttered_vgg.pt``: the model's ``state_dict``;
- ``cluttered_vgg_stats.pt``: IBA feature statistics at ``CLUTTERED_LAYER``
  over the first 1000 train canvases;
- ``cluttered_examples.pt``: the first 8 test canvases (raw uint8), labels
  and target boxes (:func:`inputiba.cluttered.save_examples`);
- ``cluttered_vgg.json``: test accuracy and the training settings.

With ``--arch vit`` the model is :func:`inputiba.models.cluttered_vit` (AdamW,
weight decay 0.05) and the files are ``cluttered_vit.pt``,
``cluttered_vit_stats.pt`` (at its preset layer, ``blocks.2``) and
``cluttered_vit.json``; the shipped examples are not rewritten. ``--arch
convnext`` is :func:`inputiba.models.cluttered_convnext` in the same way
(AdamW, weight decay 0.05; preset layer ``stages.1``), files
``cluttered_convnext*``.
"""
from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from inputiba import IBA
from inputiba.cluttered import (CLUTTERED_MEAN, CLUTTERED_STD, ClutteredFashionMNIST, normalize_canvases,
                                save_examples)
from inputiba.io import atomic_path
from inputiba.models import CLUTTERED_LAYER, ClutteredVGG, cluttered_convnext, cluttered_vit
from inputiba.pipeline import preset_for

N_STATS_SAMPLES = 1000
N_SHIPPED_EXAMPLES = 8


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="data/", help="data folder (FashionMNIST/raw/ inside)")
    parser.add_argument("--arch", choices=["vgg", "vit", "convnext"], default="vgg")
    parser.add_argument("--n-train", type=int, default=100_000, help="train canvases")
    parser.add_argument("--n-test", type=int, default=2000, help="test canvases")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam's initial learning rate (cosine decay to 0)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default="pretrained/", help="where the files are written")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's choice)")
    return parser.parse_args(argv)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def generate(data: ClutteredFashionMNIST) -> tuple[Tensor, Tensor]:
    """All canvases of ``data`` at once: ``(N, 1, S, S)`` uint8 and ``(N,)`` labels.

    Kept as uint8 (4 kB a canvas) and standardised batch by batch.
    """
    size = data.config.size
    images = torch.empty(len(data), 1, size, size, dtype=torch.uint8)
    labels = torch.empty(len(data), dtype=torch.int64)
    for i in tqdm(range(len(data)), desc=f"generate {data.split}", unit="canvas"):
        canvas = data.canvas(i)
        images[i, 0], labels[i] = canvas.image, canvas.label
    return images, labels


def train_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                scheduler: torch.optim.lr_scheduler.LRScheduler, epoch: int, epochs: int) -> None:
    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    bar = tqdm(loader, desc=f"epoch {epoch}/{epochs}", unit="batch")
    for images, labels in bar:
        logits = model(normalize_canvases(images))
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss_sum += loss.item() * labels.shape[0]
        correct += int((logits.argmax(1) == labels).sum())
        seen += labels.shape[0]
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}")


@torch.no_grad()
def predict(model: nn.Module, images: Tensor, batch_size: int = 500) -> Tensor:
    """``(N,)`` predicted classes of uint8 canvases."""
    model.eval()
    return torch.cat([model(normalize_canvases(images[i:i + batch_size])).argmax(1)
                      for i in range(0, len(images), batch_size)])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    out_dir = Path(args.out_dir)

    train_set = ClutteredFashionMNIST(args.root, "train", args.n_train, args.seed)
    test_set = ClutteredFashionMNIST(args.root, "test", args.n_test, args.seed)
    start = time.perf_counter()
    train_images, train_labels = generate(train_set)
    test_images, test_labels = generate(test_set)
    generate_seconds = time.perf_counter() - start

    shuffled = DataLoader(TensorDataset(train_images, train_labels), batch_size=args.batch_size,
                          shuffle=True, generator=torch.Generator().manual_seed(args.seed))
    if args.arch in ("vit", "convnext"):
        make = cluttered_vit if args.arch == "vit" else cluttered_convnext
        model, layer, name = make(), preset_for(make())["layer"], f"cluttered_{args.arch}"
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    else:
        model, layer, name = ClutteredVGG(), CLUTTERED_LAYER, "cluttered_vgg"
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs * len(shuffled))
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        train_epoch(model, shuffled, optimizer, scheduler, epoch, args.epochs)
    seconds = time.perf_counter() - start
    model.eval()

    predicted = predict(model, test_images)
    accuracy = float((predicted == test_labels).float().mean())
    examples_correct = int((predicted[:N_SHIPPED_EXAMPLES] == test_labels[:N_SHIPPED_EXAMPLES]).sum())
    print(f"test accuracy {accuracy:.4f} on {len(test_labels)} canvases "
          f"({examples_correct}/{N_SHIPPED_EXAMPLES} shipped examples right); trained in {seconds:.0f} s")

    iba = IBA(model, layer)
    stats_images = normalize_canvases(train_images[:N_STATS_SAMPLES])
    iba.estimate(DataLoader(TensorDataset(stats_images), batch_size=250), n_samples=N_STATS_SAMPLES)

    info = {
        "test_accuracy": round(accuracy, 4),
        "n_test": args.n_test,
        "n_train": args.n_train,
        "epochs": args.epochs,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "schedule": ("Adam" if args.arch == "vgg" else "AdamW (weight decay 0.05)")
                    + ", cosine decay to 0 over all steps",
        "arch": args.arch,
        "canvas_config": asdict(train_set.config),
        "pixel_mean": CLUTTERED_MEAN,
        "pixel_std": CLUTTERED_STD,
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "seconds": round(seconds, 1),
        "generate_seconds": round(generate_seconds, 1),
        "layer": layer,
        "examples_correct": examples_correct,
    }

    with atomic_path(out_dir / f"{name}.pt") as tmp:
        torch.save(model.state_dict(), tmp)
    iba.save_stats(out_dir / f"{name}_stats.pt")  # atomic itself
    if args.arch == "vgg":
        save_examples(out_dir / "cluttered_examples.pt", test_set, N_SHIPPED_EXAMPLES)
    with atomic_path(out_dir / f"{name}.json") as tmp:
        Path(tmp).write_text(json.dumps(info, indent=2) + "\n")
    print(f"wrote {out_dir}/{name}{{.pt,_stats.pt,.json}}")


if __name__ == "__main__":
    main()
