"""Does ``torch.compile`` pay for a bottleneck's steps? One step's work, eager against compiled.

A step of IBA (copies at the layer, the model cut there by :mod:`inputiba.split`)
runs the network after the layer forward and backward on ``--rows`` noisy rows
(10 copies of one image). This times that step on torchvision's VGG16 (random
weights, cut after ``features.17``) eagerly and compiled (``torch.compile`` of
the cut's suffix, default mode), at each ``--precisions``, and reports the
compilation's one-off seconds. The library does not compile: on a CPU it did
not pay (``benchmarks/RESULTS.md``).

Run::

    python benchmarks/bench_compile.py --size 224 --precisions float32 bfloat16
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
import torchvision
from common import machine_info, random_images, sync

from inputiba.precision import lowered
from inputiba.split import split_at


def step(run, features: torch.Tensor, others: tuple, rows: int) -> None:
    """One step: the suffix forward and backward on ``rows`` copies of the features."""
    z = features.repeat_interleave(rows, dim=0).requires_grad_(True)
    out = run(z * 1.0, *others)  # not the leaf itself: the suffix starts with an in-place ReLU
    loss = F.cross_entropy(out.float(), torch.zeros(rows, dtype=torch.long, device=z.device))
    torch.autograd.grad(loss, z)


def seconds_per_step(run, features, others, rows: int, repeats: int, device) -> float:
    step(run, features, others, rows)  # warm-up (and, compiled, the compilation)
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        step(run, features, others, rows)
    sync(device)
    return (time.perf_counter() - start) / repeats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--rows", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--precisions", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(machine_info(device), flush=True)
    torch.manual_seed(0)
    model = torchvision.models.vgg16(weights=None).eval().to(device)
    for param in model.parameters():
        param.requires_grad_(False)
    split = split_at(model, "features.17")
    with torch.no_grad():
        features, others = split.run_prefix(random_images(1, args.size, 0).to(device))
    lines = []
    for precision in args.precisions:
        with lowered(split.suffix, precision, device) as run:
            eager = seconds_per_step(run, features, others, args.rows, args.repeats, device)
        compiled_suffix = torch.compile(split.suffix)
        with lowered(compiled_suffix, precision, device) as run:
            start = time.perf_counter()
            step(run, features, others, args.rows)
            sync(device)
            compile_s = time.perf_counter() - start
            compiled = seconds_per_step(run, features, others, args.rows, args.repeats, device)
        lines.append(f"| {precision} | {eager:.3f} | {compiled:.3f} | {eager / compiled:.2f}x | {compile_s:.1f} |")
        print(lines[-1], flush=True)
    print(f"\nVGG16 suffix after features.17, {args.size} px, {args.rows} rows per step, {device}\n")
    print("| precision | eager s/step | compiled s/step | speed-up | first compiled step, s |")
    print("|---|---:|---:|---:|---:|")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
