"""The ``inputiba`` command line.

``inputiba demo`` explains bundled FashionMNIST test images with the
per-sample bottleneck on the bundled CNN and writes, per image, the float map
(``.npy``, bits per pixel) and a PNG figure.

``inputiba evaluate CONFIG.toml`` runs the evaluation harness
(:mod:`inputiba.harness`) as a configuration file (TOML or JSON) describes:
every metric for every method, one table (``results.csv``, ``results.md``)
and the figures; an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

import torch

__all__ = ["main", "run_demo"]


def run_demo(out_dir: str | os.PathLike = "outputs/demo", indices: Sequence[int] = (0,),
             seed: int = 0, device: str = "cpu", beta: float = 10.0) -> list[tuple[str, str]]:
    """Explain bundled FashionMNIST images with IBA on the bundled CNN.

    Args:
        out_dir: folder for the results (created).
        indices: which of the 16 bundled test images to explain.
        seed: seed of the bottleneck noise.
        device: torch device to run on.
        beta: weight of the information term.

    Returns:
        ``(npy_path, png_path)`` for each image.
    """
    from .datasets import FASHION_MNIST_CLASSES
    from .estimation import FeatureStats
    from .iba import IBA
    from .io import save_npy
    from .models import FASHION_CNN_LAYER, bundled_samples, load_fashion_cnn, pretrained_path
    from .plotting import plot_saliency_map

    raw, normalised, all_labels = bundled_samples()
    n = raw.shape[0]
    bad = [i for i in indices if not 0 <= i < n]
    if bad:
        raise ValueError(f"sample index {bad[0]} is out of range: {n} bundled images (0..{n - 1})")
    images = raw[list(indices)].float() / 255.0
    x = normalised[list(indices)].to(device)
    labels = all_labels[list(indices)]

    model = load_fashion_cnn().to(device)
    stats = FeatureStats.load(pretrained_path("fashion_mnist_cnn_stats.pt"))
    iba = IBA(model, FASHION_CNN_LAYER, stats=stats, beta=beta)
    result = iba.attribute(x, seed=seed, return_result=True)
    with torch.no_grad():
        probs = torch.softmax(model(x), dim=1)

    written = []
    for k, index in enumerate(indices):
        pred = int(result.targets[k])
        stem = os.path.join(os.fspath(out_dir), f"sample{index:02d}_iba")
        npy, png = stem + ".npy", stem + ".png"
        save_npy(npy, result.saliency[k])
        title = (f"#{index}: {FASHION_MNIST_CLASSES[pred]} p={probs[k, pred]:.2f} "
                 f"(true: {FASHION_MNIST_CLASSES[int(labels[k])]})\n"
                 f"{float(result.saliency[k].sum()):.1f} bits at {FASHION_CNN_LAYER}")
        plot_saliency_map(result.saliency[k], images[k], path=png, title=title)
        written.append((npy, png))
    return written


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inputiba", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="explain bundled FashionMNIST images with IBA")
    demo.add_argument("--out", default="outputs/demo", help="output folder (default: outputs/demo)")
    demo.add_argument("--indices", type=int, nargs="+", default=[0],
                      help="bundled test images to explain, 0..15 (default: 0)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the bottleneck noise")
    demo.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    demo.add_argument("--beta", type=float, default=10.0, help="information weight (default: 10)")
    evaluate = sub.add_parser("evaluate", help="evaluate attribution methods with every metric, from a config file")
    evaluate.add_argument("config", help="configuration file (.toml or .json), "
                                         "e.g. configs/evaluate_fashion_mnist.toml")
    return parser


def _demo(args: argparse.Namespace) -> None:
    for npy, png in run_demo(args.out, args.indices, args.seed, args.device, args.beta):
        print(f"heatmap (bits per pixel): {npy}")
        print(f"figure:                   {png}")


def _evaluate(args: argparse.Namespace) -> None:
    from .harness import load_evaluation, run_evaluation

    result = run_evaluation(load_evaluation(args.config))
    print(result.markdown())
    for name, path in result.files.items():
        print(f"{name + ':':20s}{path}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``inputiba`` command; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        {"demo": _demo, "evaluate": _evaluate}[args.command](args)
    except (ValueError, FileNotFoundError) as err:
        print(f"inputiba: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
