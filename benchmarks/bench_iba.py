"""Time and memory of the per-sample feature bottleneck (:class:`inputiba.IBA`).

Explains random images with a randomly initialised torchvision VGG16, with the
bottleneck at ``features.17`` and the published settings (10 Adam steps, 10
noisy copies per step, beta 10). For each input size it measures:

- ``estimate``: estimating the noise statistics from random normal images;
- ``reference``: one image per call with ``copies_at_layer=False``, the cost
  shape of the original algorithm, where every noisy copy runs the whole network;
- ``copies at layer``: calls of ``b`` images (``max_batch=b``) with the noisy
  copies made at the layer, so the network before it runs once per image and
  step instead of once per copy.

Each configuration reports seconds per image, images per second, peak memory
(the rise of the process's resident memory on CPU, sampled every 20 ms; the
rise of ``torch.cuda.max_memory_allocated`` on CUDA) and its speed-up over the
reference. One small warm-up call per size is left out of the figures; the
one-off check of whether copies can be made at the layer is part of each
configuration's first call and is counted.

Run::

    python benchmarks/bench_iba.py                       # sizes 224 112, batches 1 8
    python benchmarks/bench_iba.py --sizes 64 --n-images 2 --batch-sizes 1 2
    python benchmarks/bench_iba.py --device cuda --out results.md
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import torch
import torchvision
from common import PeakMemory, load_average, machine_info, random_images, sync

from inputiba import IBA, FeatureStats

LAYER = "features.17"


@dataclass
class Row:
    """One measured configuration of the table."""

    size: int
    config: str
    batch: int
    images: int
    sec_per_img: float
    peak_mib: float
    ref_sec_per_img: float


def time_estimation(model: torch.nn.Module, size: int, n_samples: int,
                    device: torch.device) -> tuple[FeatureStats, float]:
    """Estimate the layer's statistics from random normal images; returns them and the seconds."""
    images = random_images(n_samples, size, seed=1)
    loader = images.split(8)
    iba = IBA(model, LAYER)
    sync(device)
    start = time.perf_counter()
    stats = iba.estimate(loader, n_samples)
    sync(device)
    return stats, time.perf_counter() - start


def warm_up(model: torch.nn.Module, stats: FeatureStats, size: int, device: torch.device) -> None:
    """One short attribution so that lazy initialisation stays out of the figures."""
    IBA(model, LAYER, stats=stats, steps=1).attribute(random_images(1, size, seed=2).to(device), seed=0)
    sync(device)


def time_attribution(model: torch.nn.Module, stats: FeatureStats, images: torch.Tensor, batch: int,
                     copies_at_layer: bool, device: torch.device) -> tuple[float, float]:
    """Explain ``images`` in calls of ``batch``; returns seconds per image and peak MiB."""
    iba = IBA(model, LAYER, stats=stats, max_batch=batch, copies_at_layer=copies_at_layer)
    images = images.to(device)
    with PeakMemory(device) as memory:
        start = time.perf_counter()
        for chunk in images.split(batch):
            iba.attribute(chunk, seed=0)
        sync(device)
        seconds = time.perf_counter() - start
    return seconds / images.shape[0], memory.mib


def markdown_table(rows: list[Row]) -> str:
    lines = ["| size | config | batch | images | s/image | images/s | peak MiB | speed-up vs reference |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.size} | {r.config} | {r.batch} | {r.images} | {r.sec_per_img:.2f} | "
                     f"{1 / r.sec_per_img:.3f} | {r.peak_mib:.0f} | {r.ref_sec_per_img / r.sec_per_img:.2f}x |")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 112], help="input sizes in pixels")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8],
                        help="images per call with copies at the layer (batch 1 is always run)")
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
    torch.manual_seed(args.seed)
    model = torchvision.models.vgg16(weights=None).eval().to(device)
    batches = [1] + [b for b in dict.fromkeys(args.batch_sizes) if b != 1]
    machine = machine_info(device)
    print(machine, flush=True)

    rows: list[Row] = []
    estimates = []
    for size in args.sizes:
        stats, est_seconds = time_estimation(model, size, args.estimate_samples, device)
        estimates.append(f"estimate at {size}px: {args.estimate_samples} samples in {est_seconds:.2f} s")
        print(estimates[-1], flush=True)
        warm_up(model, stats, size, device)
        images = random_images(args.n_images, size, seed=3)

        ref_sec, ref_mib = time_attribution(model, stats, images, 1, False, device)
        rows.append(Row(size, "reference (copies at input)", 1, args.n_images, ref_sec, ref_mib, ref_sec))
        print(f"{size}px reference: {ref_sec:.2f} s/image, {ref_mib:.0f} MiB", flush=True)
        for batch in batches:
            sec, mib = time_attribution(model, stats, images, batch, True, device)
            rows.append(Row(size, "copies at layer", batch, args.n_images, sec, mib, ref_sec))
            print(f"{size}px copies at layer, batch {batch}: {sec:.2f} s/image, {mib:.0f} MiB", flush=True)

    table = markdown_table(rows)
    load = f"at the end, {load_average()}"
    print(f"\n{load}\n\n{table}")
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join([machine, load, ""] + estimates + ["", table, ""]))


if __name__ == "__main__":
    main()
