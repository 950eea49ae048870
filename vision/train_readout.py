"""Train a readout bottleneck for the bundled FashionMNIST CNN.

The readout network learns, over the FashionMNIST training set, to predict the
bottleneck's mask from the CNN's own feature maps; afterwards an attribution
is one forward pass (:class:`inputiba.readout.ReadoutBottleneck`).

Examples::

    # the defaults: bottleneck at features.5, readout from features.5, features.7 and the logits
    python vision/train_readout.py --epochs 2 --out outputs/readout/fashion_readout.pt

    # a quick check on 64 images, then one more epoch from the checkpoint
    python vision/train_readout.py --limit 64 --epochs 1 --out /tmp/r.pt
    python vision/train_readout.py --limit 64 --epochs 2 --out /tmp/r.pt --resume

The checkpoint ``--out`` is written atomically after every epoch; it is the
trained readout as well (``ReadoutBottleneck.load(model, path)``). The order
of the training images depends only on ``--seed`` and the epoch, so a resumed
run trains exactly as an uninterrupted one.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Sampler, Subset

from inputiba.datasets import fashion_mnist
from inputiba.io import UsageError, run_command
from inputiba.models import FASHION_CNN_LAYER, load_fashion_cnn
from inputiba.readout import ReadoutBottleneck, ReadoutConfig

DEFAULT_READOUT = (FASHION_CNN_LAYER, "features.7", "classifier.3")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default="data/", help="data folder (FashionMNIST/raw/ inside)")
    p.add_argument("--weights", default=None, help="CNN state-dict file (default: the bundled weights)")
    p.add_argument("--layer", default=FASHION_CNN_LAYER, help="the bottleneck's layer")
    p.add_argument("--readout-layers", nargs="+", default=list(DEFAULT_READOUT),
                   help="layers whose outputs feed the readout network")
    p.add_argument("--epochs", type=int, default=2, help="total epochs, counting resumed ones")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3,
                   help="Adam learning rate (the paper's 1e-5 is for 20 ImageNet epochs)")
    p.add_argument("--beta", type=float, default=ReadoutConfig.beta)
    p.add_argument("--train-target", choices=["label", "predicted"], default="label")
    p.add_argument("--no-target-input", action="store_true",
                   help="the paper's readout, which is not told the class to explain")
    p.add_argument("--limit", type=int, default=None, help="train on the first N training images only")
    p.add_argument("--estimate-samples", type=int, default=1000, help="images for the feature statistics")
    p.add_argument("--out", default="outputs/readout/fashion_readout.pt", help="checkpoint file")
    p.add_argument("--resume", action="store_true", help="continue from --out")
    p.add_argument("--log-dir", default=None, help="TensorBoard folder")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


class EpochShuffle(Sampler):
    """A random order of ``n`` indices that depends only on ``seed`` and the epoch."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    if out.exists() and not args.resume:
        raise UsageError(f"{out} exists: pass --resume to continue training it, or choose another --out")
    torch.manual_seed(args.seed)
    model = load_fashion_cnn(args.weights).to(args.device)
    data = fashion_mnist(args.root, train=True)
    if args.limit is not None:
        data = Subset(data, range(min(args.limit, len(data))))
    progress = not args.no_progress

    rb = ReadoutBottleneck(model, args.layer, args.readout_layers, beta=args.beta, seed=args.seed,
                           train_target=args.train_target, target_input=not args.no_target_input)
    if not (args.resume and out.exists()):
        rb.estimate(DataLoader(data, batch_size=256), n_samples=args.estimate_samples, progress=progress)
    loader = DataLoader(data, batch_size=args.batch_size, sampler=EpochShuffle(len(data), args.seed))
    history = rb.fit(loader, epochs=args.epochs, lr=args.lr, checkpoint=out, resume=args.resume,
                     log_dir=args.log_dir, progress=progress)
    for epoch, loss in enumerate(history, 1):
        print(f"epoch {epoch}/{args.epochs}: mean loss {loss:.4f}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main, None, "train_readout.py"))
