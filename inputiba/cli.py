"""The ``inputiba`` command line.

``inputiba demo`` explains the bundled example canvases (Fashion-MNIST items
among distractors) with InputIBA on the bundled VGG-style CNN and writes, per
canvas, every stage's float maps (``.npz``) and a figure: the canvas with the
object's box, the IBA map of the feature stage (bits per pixel), the input
prior ``lambda_G`` and the InputIBA mask. ``inputiba evaluate CONFIG`` runs the
evaluation harness; ``inputiba report OUTDIR`` writes an HTML report of a run.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

import torch

from .io import run_command

__all__ = ["main", "run_demo"]


def run_demo(out_dir: str | os.PathLike = "outputs/demo", indices: Sequence[int] | None = None,
             seed: int = 0, device: str = "cpu", schedule: str = "default") -> list[tuple[str, str]]:
    """Explain bundled example canvases with InputIBA (and its IBA feature stage).

    Args:
        out_dir: folder for the results (created).
        indices: which bundled canvases to explain (``None``: all of them).
        seed: seed of every random draw.
        device: torch device to run on.
        schedule: ``"default"`` (``InputIBAConfig()``) or ``"published"``
            (:meth:`InputIBAConfig.published`).

    Returns:
        ``(npz_path, png_path)`` for each canvas. The ``.npz`` holds
        ``feature_map`` (bits per pixel), ``gan_mask`` (``lambda_G``),
        ``mask`` (InputIBA, ``[0, 1]``), ``target`` and ``box``.
    """
    from .cluttered import bundled_canvases
    from .datasets import FASHION_MNIST_CLASSES
    from .io import save_npz
    from .models import CLUTTERED_LAYER, cluttered_file, load_cluttered_vgg
    from .pipeline import InputIBA
    from .pipeline import schedule as named_schedule
    from .plotting import plot_panels

    config = named_schedule(schedule)
    raw, normalised, labels, boxes = bundled_canvases()
    n = raw.shape[0]
    indices = list(range(n)) if indices is None else list(indices)
    bad = [i for i in indices if not 0 <= i < n]
    if bad:
        raise ValueError(f"canvas index {bad[0]} is out of range: {n} bundled canvases (0..{n - 1})")
    x = normalised[indices].to(device)
    model = load_cluttered_vgg().to(device)
    att = InputIBA(model, CLUTTERED_LAYER, config)
    att.load_stats(cluttered_file("cluttered_vgg_stats.pt"))
    result = att.attribute(x, seed=seed, return_stages=True)
    with torch.no_grad():
        probs = torch.softmax(model(x), dim=1)

    written = []
    for k, index in enumerate(indices):
        pred, true = int(result.targets[k]), int(labels[index])
        stem = os.path.join(os.fspath(out_dir), f"canvas{index:02d}")
        npz, png = stem + ".npz", stem + ".png"
        gan = result.gan_mask[k].mean(dim=0)
        save_npz(npz, feature_map=result.feature_map[k].cpu().numpy(), gan_mask=gan.cpu().numpy(),
                 mask=result.mask[k].cpu().numpy(), target=pred, box=boxes[index].numpy())
        title = (f"canvas {index}: predicted {FASHION_MNIST_CLASSES[pred]} (p = {probs[k, pred]:.2f}), "
                 f"true {FASHION_MNIST_CLASSES[true]}")
        plot_panels(raw[index], {
            f"IBA at {CLUTTERED_LAYER}: {float(result.feature_map[k].sum()):.0f} bits":
                (result.feature_map[k], "bits per pixel"),
            ("prior lambda_G" if result.gan is None else "lambda_G after the GAN"): (gan, "[0, 1]"),
            "InputIBA mask": (result.mask[k], "[0, 1]"),
        }, png, title=title, box=tuple(boxes[index].tolist()))
        written.append((npz, png))
    return written


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inputiba", description=__doc__.split("\n\n")[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="explain the bundled example canvases with InputIBA and IBA")
    demo.add_argument("--out", default="outputs/demo", help="output folder (default: outputs/demo)")
    demo.add_argument("--indices", type=int, nargs="+", default=None,
                      help="bundled canvases to explain (default: all)")
    demo.add_argument("--seed", type=int, default=0, help="seed of every random draw")
    demo.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    demo.add_argument("--schedule", choices=["default", "published"], default="default",
                      help="InputIBA schedule (default: the library's; published: the paper's, much slower)")
    evaluate = sub.add_parser("evaluate", help="evaluate attribution methods with every metric, from a config file")
    evaluate.add_argument("config", help="configuration file (.toml or .json), "
                                         "e.g. configs/evaluate_fashion_mnist.toml")
    evaluate.add_argument("--retry-failed", action="store_true",
                          help="evaluate again the samples an earlier run recorded as failed")
    evaluate.add_argument("--report", action="store_true", help="also write <out_dir>/report.html")
    report = sub.add_parser("report", help="write an HTML report of a run's output folder")
    report.add_argument("folder", help="a run's output folder (vision/attribute.py, demo, evaluate, explain.py)")
    report.add_argument("--page-size", type=int, default=60, help="maps per page (default: 60)")
    return parser


def _demo(args: argparse.Namespace) -> None:
    for npz, png in run_demo(args.out, args.indices, args.seed, args.device, args.schedule):
        print(f"maps:   {npz}")
        print(f"figure: {png}")


def _evaluate(args: argparse.Namespace) -> int:
    from .harness import load_evaluation, run_evaluation

    config = load_evaluation(args.config)
    config.harness.retry_failed = args.retry_failed
    result = run_evaluation(config)
    print(result.markdown())
    for name, path in result.files.items():
        print(f"{name + ':':20s}{path}")
    if args.report:
        from .report import write_report

        print(f"{'report:':20s}{write_report(config.harness.out_dir)[0]}")
    if result.failed:
        listed = "; ".join(f"{row}: {', '.join(map(str, items))}" for row, items in result.failed.items())
        print(f"inputiba: {sum(map(len, result.failed.values()))} evaluations failed and are left out "
              f"({listed}); see {config.harness.out_dir}/failures.jsonl, --retry-failed retries them",
              file=sys.stderr)
        return 1
    return 0


def _report(args: argparse.Namespace) -> None:
    from .report import write_report

    for path in write_report(args.folder, page_size=args.page_size):
        print(f"report: {path}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``inputiba`` command; returns the exit status.

    Mistakes (a bad configuration, a missing file, an unknown method) are
    reported in one line with exit status 2; ``--debug`` shows the traceback.
    """
    def run(args: list[str]) -> int:
        parsed = _parser().parse_args(args)
        return {"demo": _demo, "evaluate": _evaluate, "report": _report}[parsed.command](parsed) or 0

    return run_command(run, argv, "inputiba")


if __name__ == "__main__":
    sys.exit(main())
