"""What estimating a layer's statistics costs on top of the forward passes it needs.

``IBA.estimate`` runs the network up to the layer on each batch and merges the
batch's per-element moments into running ones. The floor is the forward pass;
everything else is overhead. For each model this times, per batch:

- ``forward``: the network up to the layer (what any estimator must run);
- ``moments``: :func:`inputiba.estimation.batch_moments` as shipped (the batch's
  sums in float32 around its own mean, widened to float64 only for the merge);
- ``moments, float64 batch``: the previous way, the whole batch widened to
  float64 first (kept here as the reference);
- ``estimate``: the whole :meth:`inputiba.IBA.estimate` per batch, and its ratio
  to the forward pass alone.

Run::

    python benchmarks/bench_estimation.py --batches 8 --batch-size 64
"""
from __future__ import annotations

import argparse
import time

import torch
import torchvision
from common import machine_info, random_images

from inputiba import IBA, models
from inputiba.estimation import Moments, batch_moments
from inputiba.hooks import features_at


def moments_float64(x: torch.Tensor) -> Moments:
    """The previous batch moments: the whole batch widened to float64 first (the reference)."""
    x = x.detach().double()
    n = x.shape[0]
    mean = x.mean(0)
    centred = x - mean
    return Moments(torch.full(x.shape[1:], float(n), dtype=torch.float64), mean, (centred * centred).sum(0),
                   (x != 0).sum(0, dtype=torch.float64), (x * x).sum(0))


def per_batch(fn, batches) -> float:
    for b in batches[:2]:  # warm-up: the first calls on a shape build the kernels' plans
        fn(b)
    start = time.perf_counter()
    for b in batches:
        fn(b)
    return (time.perf_counter() - start) / len(batches) * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine_info(torch.device("cpu")), flush=True)
    torch.manual_seed(0)
    cases = [("ClutteredVGG, features.13, 64 px", models.load_cluttered_vgg(), models.CLUTTERED_LAYER, 1, 64),
             ("VGG16 (random), features.17, 112 px", torchvision.models.vgg16().eval(), "features.17", 3, 112)]
    lines = []
    for name, model, layer, channels, size in cases:
        batches = [random_images(args.batch_size, size, seed=k)[:, :channels] for k in range(args.batches)]
        module = model.get_submodule(layer)
        with torch.no_grad():
            features = [features_at(model, module, b, layer) for b in batches]
            forward = per_batch(lambda b: features_at(model, module, b, layer), batches)
        ours = per_batch(batch_moments, features)
        old = per_batch(moments_float64, features)
        iba = IBA(model, layer)
        iba.estimate(batches[:2], n_samples=2 * args.batch_size)  # warm-up, as for the others
        start = time.perf_counter()
        iba.estimate(batches, n_samples=args.batches * args.batch_size)
        estimate = (time.perf_counter() - start) / args.batches * 1000
        lines.append(f"| {name} | {tuple(features[0].shape[1:])} | {forward:.1f} | {ours:.1f} | {old:.1f} | "
                     f"{estimate:.1f} | {estimate / forward:.2f}x |")
        print(lines[-1], flush=True)
    print(f"\nms per batch of {args.batch_size}\n")
    print("| model | features | forward | moments | moments, float64 batch | estimate | estimate / forward |")
    print("|---|---|---:|---:|---:|---:|---:|")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
