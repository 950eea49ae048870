"""Extremal perturbation: ours against TorchRay's ``extremal_perturbation`` on the cluttered benchmark.

Explains the first ``--n`` test canvases of the cluttered Fashion-MNIST
benchmark (``ClutteredFashionMNIST("data", "test", n, seed=0)``) with the
bundled VGG-style CNN, target = the true label, with

- **TorchRay** 1.0.0.2, one image per call, the "preserve" variant with its
  simple (logit) reward;
- **ours** (:class:`inputiba.methods.ExtremalPerturbation`), all images in
  batches of ``--batch-size``;
- **TorchRay, input + 1e-6 noise**: TorchRay again on the canvases plus
  Gaussian noise of std ``1e-6``, a change at the level of float rounding
  (with ``--self-check``); how far TorchRay's result moves under it says how
  close two implementations of the same algorithm can be expected to agree;
- **old simplified version** (``git show HEAD~N:inputiba/methods/extremal.py``
  with ``--old-rev``), with its own defaults, where git has that file.

Both run with the same settings: area ``--area`` (0.3), step / sigma / max
blur (default: TorchRay's 7 / 21 / 20 px; ``--step 2 --sigma 6 --max-blur
5.71`` scales them to 64 px), 8 blur levels, ``--iterations`` (800). TorchRay's ``extremal_perturbation``
does not pass a blur to its perturbation (it is always 20 px); a
``functools.partial`` over its ``Perturbation`` class sets it.

Per method: bounding-box score and EHR (canvases whose box covers at most a
third of the image), insertion and deletion AUC of the target probability
(``n_steps=64``), the per-image Spearman correlation with TorchRay's mask, and
seconds per image; mean ± standard error. Markdown on stdout (and ``--out``).

TorchRay is not a dependency of the project. Install it next to the project,
without letting pip touch torch::

    .venv/bin/python -m pip install --no-deps --target /tmp/torchray_site torchray

and run from the repository root::

    PYTHONPATH=/tmp/torchray_site .venv/bin/python benchmarks/bench_extremal.py --n 16 --self-check
"""
from __future__ import annotations

import argparse
import functools
import importlib
import subprocess
import sys
import time
import types
import warnings
from pathlib import Path

import torch
from common import machine_info

from inputiba.cluttered import ClutteredFashionMNIST
from inputiba.evaluation import bbox_score, box_mask, deletion, ehr, insertion, spearman, usable_boxes
from inputiba.methods import ExtremalPerturbation
from inputiba.models import load_cluttered_vgg

INSTALL = ("TorchRay is not installed. Install it beside the project without touching torch:\n"
           "    .venv/bin/python -m pip install --no-deps --target /tmp/torchray_site torchray\n"
           "and run with PYTHONPATH=/tmp/torchray_site")


def import_torchray() -> types.ModuleType:
    """TorchRay's extremal perturbation module, or exit with how to install it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module("torchray.attribution.extremal_perturbation")
    except ImportError as err:
        sys.exit(f"{INSTALL}\n({err})")


def torchray_masks(module: types.ModuleType, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                   args: argparse.Namespace) -> tuple[torch.Tensor, float]:
    """TorchRay's masks, one image per call: ``(N, H, W)`` and seconds per image."""
    original = module.Perturbation
    module.Perturbation = functools.partial(original, max_blur=args.max_blur)
    masks = []
    try:
        start = time.perf_counter()
        for x, y in zip(images, labels):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.meshgrid's indexing warning
                mask, _ = module.extremal_perturbation(
                    model, x[None], int(y), areas=[args.area], max_iter=args.iterations, num_levels=args.levels,
                    step=args.step, sigma=args.sigma, variant="preserve")
            masks.append(mask[0, 0].detach())
        seconds = (time.perf_counter() - start) / len(images)
    finally:
        module.Perturbation = original
    return torch.stack(masks), seconds


def our_masks(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
              args: argparse.Namespace) -> tuple[torch.Tensor, float]:
    """Ours, in batches of ``--batch-size``: ``(N, H, W)`` and seconds per image."""
    method = ExtremalPerturbation(model, area=args.area, iterations=args.iterations, step=args.step,
                                  sigma=args.sigma, max_blur=args.max_blur, levels=args.levels)
    start = time.perf_counter()
    masks = torch.cat([method.attribute(x, target=y)
                       for x, y in zip(images.split(args.batch_size), labels.split(args.batch_size))])
    return masks, (time.perf_counter() - start) / len(images)


def old_method(rev: str) -> type | None:
    """The simplified class at git revision ``rev``, loaded into a scratch module (unregistered)."""
    root = Path(__file__).resolve().parents[1]
    try:
        source = subprocess.run(["git", "show", f"{rev}:inputiba/methods/extremal.py"], cwd=root, check=True,
                                capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        print(f"(old version skipped: {err})", file=sys.stderr)
        return None
    if "extremal_mask" not in source:
        print(f"(old version skipped: {rev} holds no simplified version)", file=sys.stderr)
        return None
    source = (source.replace("from ..", "from inputiba.").replace("from .base", "from inputiba.methods.base")
              .replace('@register("extremal_perturbation")\n', ""))
    module = types.ModuleType("extremal_simplified")
    exec(compile(source, f"{rev}:inputiba/methods/extremal.py", "exec"), module.__dict__)
    return module.ExtremalPerturbation


def mean_se(values: torch.Tensor) -> str:
    values = values[~values.isnan()].double()
    if len(values) == 0:
        return "–"
    se = values.std() / len(values) ** 0.5 if len(values) > 1 else float("nan")
    return f"{values.mean():.3f} ± {se:.3f}"


def row(name: str, masks: torch.Tensor, reference: torch.Tensor | None, seconds: float, model: torch.nn.Module,
        images: torch.Tensor, labels: torch.Tensor, boxes: torch.Tensor) -> str:
    usable = usable_boxes(boxes)
    scores = [bbox_score(masks[usable], boxes[usable]), ehr(masks[usable], boxes[usable]),
              insertion(model, images, masks, labels, n_steps=64).auc,
              deletion(model, images, masks, labels, n_steps=64).auc]
    rho = mean_se(spearman(masks, reference)) if reference is not None else "–"
    return f"| {name} | " + " | ".join(mean_se(s) for s in scores) + f" | {rho} | {seconds:.2f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=16, help="canvases")
    parser.add_argument("--area", type=float, default=0.3)
    parser.add_argument("--iterations", type=int, default=800)
    parser.add_argument("--step", type=int, default=7, help="pixels between mask parameters")
    parser.add_argument("--sigma", type=float, default=21.0, help="bump radius, pixels")
    parser.add_argument("--max-blur", type=float, default=20.0, help="std of the strongest blur, pixels")
    parser.add_argument("--levels", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4, help="images per call of ours")
    parser.add_argument("--self-check", action="store_true", help="also run TorchRay on input + 1e-6 noise")
    parser.add_argument("--old-rev", default="HEAD", help="git revision with the simplified version ('' skips)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="also write the table here")
    parser.add_argument("--save", type=Path, help="write the masks here (torch.save of a dict)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torchray = import_torchray()

    data = ClutteredFashionMNIST("data", "test", n=args.n, seed=0)
    items = [data[i] for i in range(args.n)]
    images = torch.stack([x for x, _, _ in items])
    labels = torch.tensor([y for _, y, _ in items])
    boxes = box_mask(torch.stack([b for _, _, b in items]), tuple(images.shape[-2:]))
    model = load_cluttered_vgg()

    theirs, t_theirs = torchray_masks(torchray, model, images, labels, args)
    ours, t_ours = our_masks(model, images, labels, args)
    rows = [row("TorchRay 1.0.0.2", theirs, None, t_theirs, model, images, labels, boxes),
            row("ours", ours, theirs, t_ours, model, images, labels, boxes)]
    if args.self_check:
        noise = 1e-6 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
        again, t_again = torchray_masks(torchray, model, images + noise, labels, args)
        rows.append(row("TorchRay, input + 1e-6 noise", again, theirs, t_again, model, images, labels, boxes))
    old = old_method(args.old_rev) if args.old_rev else None
    if old is not None:
        start = time.perf_counter()
        simplified = old(model, area=args.area).attribute(images, target=labels)
        t_old = (time.perf_counter() - start) / args.n
        rows.append(row(f"old simplified ({args.old_rev}, its defaults)", simplified, theirs, t_old, model, images,
                        labels, boxes))

    rho = spearman(ours, theirs)
    order = rho.argsort()
    spread = (f"Spearman of ours with TorchRay per canvas: median {rho.median():.3f}, lowest "
              + ", ".join(f"{rho[i]:.3f} (canvas {int(i)})" for i in order[:3]) + ".")
    if args.save:
        torch.save({"torchray": theirs, "ours": ours, "labels": labels, "boxes": boxes}, args.save)
    n_usable = int(usable_boxes(boxes).sum())
    lines = [f"{args.n} canvases (bbox/EHR: the {n_usable} whose box covers at most 1/3); area {args.area}, "
             f"step {args.step}, sigma {args.sigma}, max blur {args.max_blur:.2f}, {args.levels} levels, "
             f"{args.iterations} iterations; ours in batches of {args.batch_size}.",
             f"Machine: {machine_info(torch.device('cpu'))}", "",
             "| method | bbox ↑ | EHR ↑ | insertion AUC ↑ | deletion AUC ↓ | Spearman with TorchRay | s / image |",
             "| --- | --- | --- | --- | --- | --- | --- |", *rows, "", spread]
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
