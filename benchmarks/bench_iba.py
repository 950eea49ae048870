"""Time and memory of the per-sample feature bottleneck (:class:`inputiba.IBA`).

Explains random images with a randomly initialised torchvision model (VGG16 at
``features.17``; ResNet-50 at ``layer2`` with the ReLU estimator, the presets of
:data:`inputiba.pipeline.PRESETS`) and the published settings (10 Adam steps,
10 noisy copies per step, beta 10). For each model and input size it measures:

- ``estimate``: estimating the noise statistics from random normal images;
- ``reference``: one image per call with ``copies_at_layer=False`` at float32,
  the cost shape of the original algorithm, where every noisy copy runs the
  whole network;
- ``layer copies, whole net``: copies made at the layer, but the whole network
  run at every step (the library before it cut models at the layer), batch 1;
- ``layer copies, cut``: the library's default: the network before the layer
  runs once per input (:mod:`inputiba.split`), each step only the rest, at each
  ``--precisions`` and ``--batch-sizes`` (``max_batch=b``).

Each configuration reports seconds per image, images per second, peak memory
(the rise of the process's resident memory on CPU, sampled every 20 ms; the
rise of ``torch.cuda.max_memory_allocated`` on CUDA) and its speed-up over the
reference. One small warm-up call per size is left out of the figures; the
one-off checks (the cut, the layout probe) are part of each configuration's
first call and are counted.

Run::

    python benchmarks/bench_iba.py                       # VGG16 at 224 and 112, batches 1 8
    python benchmarks/bench_iba.py --arch resnet50 --sizes 224 --precisions float32 bfloat16
    python benchmarks/bench_iba.py --sizes 64 --n-images 2 --batch-sizes 1 2
    python benchmarks/bench_iba.py --device cuda --batch-sizes 1 8 16 32 --out results.md
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import torch
import torchvision
from common import PeakMemory, load_average, machine_info, random_images, sync

from inputiba import IBA, FeatureStats
from inputiba.pipeline import preset_for


@dataclass
class Row:
    """One measured configuration of the table."""

    arch: str
    size: int
    config: str
    precision: str
    batch: int
    images: int
    sec_per_img: float
    peak_mib: float
    ref_sec_per_img: float


def time_estimation(model: torch.nn.Module, preset: dict, size: int, n_samples: int,
                    device: torch.device) -> tuple[FeatureStats, float]:
    """Estimate the layer's statistics from random normal images; returns them and the seconds."""
    images = random_images(n_samples, size, seed=1).to(device)
    loader = images.split(8)
    iba = IBA(model, **preset)
    sync(device)
    start = time.perf_counter()
    stats = iba.estimate(loader, n_samples)
    sync(device)
    return stats, time.perf_counter() - start


def warm_up(model: torch.nn.Module, preset: dict, stats: FeatureStats, size: int, device: torch.device) -> None:
    """One short attribution so that lazy initialisation stays out of the figures."""
    IBA(model, **preset, stats=stats, steps=1).attribute(random_images(1, size, seed=2).to(device), seed=0)
    sync(device)


def time_attribution(model: torch.nn.Module, preset: dict, stats: FeatureStats, images: torch.Tensor,
                     batch: int, device: torch.device, cut: bool = True, **settings) -> tuple[float, float]:
    """Explain ``images`` in calls of ``batch``; returns seconds per image and peak MiB.

    ``cut=False`` runs the whole network at every step (no :mod:`inputiba.split` cut).
    """
    iba = IBA(model, **preset, stats=stats, max_batch=batch, **settings)
    if not cut:
        iba._cut = lambda *args: None
    images = images.to(device)
    with PeakMemory(device) as memory:
        start = time.perf_counter()
        for chunk in images.split(batch):
            iba.attribute(chunk, seed=0)
        sync(device)
        seconds = time.perf_counter() - start
    return seconds / images.shape[0], memory.mib


def markdown_table(rows: list[Row]) -> str:
    lines = ["| model | size | configuration | precision | batch | images | s/image | images/s | peak MiB "
             "| speed-up vs reference |",
             "|---|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.arch} | {r.size} | {r.config} | {r.precision} | {r.batch} | {r.images} | "
                     f"{r.sec_per_img:.2f} | {1 / r.sec_per_img:.3f} | {r.peak_mib:.0f} | "
                     f"{r.ref_sec_per_img / r.sec_per_img:.2f}x |")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--arch", nargs="+", default=["vgg16"], choices=["vgg16", "resnet50"],
                        help="torchvision models (random weights)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 112], help="input sizes in pixels")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8],
                        help="images per call with the cut (batch 1 is always run)")
    parser.add_argument("--precisions", nargs="+", default=["float32"],
                        help="precisions of the cut runs (IBAConfig.precision)")
    parser.add_argument("--n-images", type=int, default=8, help="images each configuration explains")
    parser.add_argument("--estimate-samples", type=int, default=16,
                        help="random images the statistics are estimated from")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model's random weights")
    parser.add_argument("--out", default=None, help="also write the results as Markdown to this file")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    batches = [1] + [b for b in dict.fromkeys(args.batch_sizes) if b != 1]
    machine = machine_info(device)
    print(machine, flush=True)

    rows: list[Row] = []
    estimates = []
    for arch in args.arch:
        torch.manual_seed(args.seed)
        model = getattr(torchvision.models, arch)(weights=None).eval().to(device)
        preset = preset_for(model)
        for size in args.sizes:
            stats, est_seconds = time_estimation(model, preset, size, args.estimate_samples, device)
            estimates.append(f"{arch} at {size}px: estimated from {args.estimate_samples} samples in "
                             f"{est_seconds:.2f} s")
            print(estimates[-1], flush=True)
            warm_up(model, preset, stats, size, device)
            images = random_images(args.n_images, size, seed=3)

            def measure(config: str, precision: str, batch: int, **settings) -> None:
                sec, mib = time_attribution(model, preset, stats, images, batch, device, precision=precision,
                                            **settings)
                ref = rows[-1].ref_sec_per_img if rows and settings.get("copies_at_layer", True) else sec
                rows.append(Row(arch, size, config, precision, batch, args.n_images, sec, mib, ref))
                print(f"{arch} {size}px {config} {precision} batch {batch}: {sec:.2f} s/image, {mib:.0f} MiB",
                      flush=True)

            measure("reference (copies at input)", "float32", 1, copies_at_layer=False)
            measure("layer copies, whole net", "float32", 1, cut=False)
            for precision in args.precisions:
                for batch in batches:
                    measure("layer copies, cut", precision, batch)

    table = markdown_table(rows)
    load = f"at the end, {load_average()}"
    print(f"\n{load}\n\n{table}")
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join([machine, load, ""] + estimates + ["", table, ""]))


if __name__ == "__main__":
    main()
