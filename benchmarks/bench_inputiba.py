"""Speed of InputIBA's default schedule against the published one run one image at a time.

Two models:

- ``--model cluttered``: the bundled ``ClutteredVGG`` of the cluttered benchmark
  at ``features.13`` with its shipped statistics, on test canvases (64 px);
- ``--model vgg16`` / ``resnet50``: torchvision's model with random weights at
  its preset layer (``features.17``; ``layer2`` with the ReLU estimator), on
  random images of ``--size`` pixels (statistics from 16 of them).

The reference is the published schedule (``InputIBAConfig.published()``: GAN
200 x 20 with the original critic, 60 input steps) one image per call with
the feature stage's copies made at the input (the original's cost shape).
At large sizes on a CPU the reference takes hours per image, so
``--reference-fraction f`` runs its GAN epochs and input steps cut to the
fraction ``f`` and scales each of those stages' seconds back to the full
count (the feature stage runs in full); the table says so. The same process
then runs the default schedule (``InputIBAConfig()``) at the given batch sizes
and ``--precisions``, and any other named schedule. Printed per configuration:
seconds per image of each stage, images per second, peak memory and the
speed-up over the reference. Quality is measured by
``benchmarks/ablate_inputiba.py`` and the results page, not here.

Run::

    python benchmarks/bench_inputiba.py --model cluttered --n-reference 4 --batch-sizes 1 8
    python benchmarks/bench_inputiba.py --model vgg16 --size 112 --n-reference 1 --batch-sizes 1 8
    python benchmarks/bench_inputiba.py --model vgg16 --size 224 --reference-fraction 0.05 \
        --precisions float32 bfloat16
    python benchmarks/bench_inputiba.py --model vgg16 --size 224 --device cuda --batch-sizes 1 8 32
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch
import torchvision
from common import PeakMemory, machine_info, random_images

from inputiba import FeatureStats, InputIBA, InputIBAConfig
from inputiba.iba import IBA
from inputiba.pipeline import preset_for


def load(args, device: torch.device):
    """``(model, layer, stats, images, description)``."""
    n = max([args.n_reference, *args.batch_sizes])
    if args.model == "cluttered":
        from inputiba.cluttered import ClutteredFashionMNIST
        from inputiba.models import CLUTTERED_LAYER, cluttered_file, load_cluttered_vgg

        model = load_cluttered_vgg().to(device)
        stats = FeatureStats.load(cluttered_file("cluttered_vgg_stats.pt"))
        data = ClutteredFashionMNIST(args.root, "test", n=n, seed=1)
        images = torch.stack([data[i][0] for i in range(n)])
        return model, CLUTTERED_LAYER, stats, images, "bundled ClutteredVGG, features.13, 64x64 test canvases"
    torch.manual_seed(0)
    model = getattr(torchvision.models, args.model)(weights=None).eval().to(device)
    preset = preset_for(model)
    feature = IBA(model, **preset)
    feature.estimate([random_images(16, args.size, 1).to(device)], n_samples=16)
    images = random_images(n, args.size, 2)
    return model, preset["layer"], feature.stats, images, \
        f"{args.model} (random weights), {preset['layer']}, {args.size}x{args.size} random images"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=["cluttered", "vgg16", "resnet50"], default="cluttered")
    p.add_argument("--size", type=int, default=112, help="input size of the torchvision models")
    p.add_argument("--precisions", nargs="+", default=["float32"], help="precisions of the default schedule")
    p.add_argument("--reference-fraction", type=float, default=1.0,
                   help="run this fraction of the reference's GAN epochs and input steps, and scale their "
                        "seconds to the full count")
    p.add_argument("--n-reference", type=int, default=2, help="images of the one-at-a-time reference")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8], help="batches of the default schedule")
    p.add_argument("--published-batches", type=int, nargs="*", default=[],
                   help="also the published schedule at these batch sizes")
    p.add_argument("--root", default="data", help="data folder (cluttered canvases)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model, layer, stats, images, what = load(args, device)
    print(machine_info(device), flush=True)

    published = InputIBAConfig.published()
    reference, scale = published, {"feature": 1.0, "gan": 1.0, "input": 1.0}
    name = "reference: published, one at a time"
    if args.reference_fraction < 1:
        epochs = max(1, round(published.gan.epochs * args.reference_fraction))
        steps = max(1, round(published.input.steps * args.reference_fraction))
        reference = replace(published, gan=replace(published.gan, epochs=epochs),
                            input=replace(published.input, steps=steps))
        scale = {"feature": 1.0, "gan": published.gan.epochs / epochs, "input": published.input.steps / steps}
        name += f" (GAN {epochs}/{published.gan.epochs} epochs, input {steps}/{published.input.steps} " \
                "steps, scaled)"
    configs = [(name, reference, 1, args.n_reference, False, scale)]
    configs += [(f"default, {precision}, batch {b}", InputIBAConfig().with_precision(precision), b,
                 max(b, args.n_reference), True, None)
                for precision in args.precisions for b in args.batch_sizes]
    configs += [(f"published, batch {b}", published, b, b, True, None) for b in args.published_batches]

    rows = []
    for name, cfg, batch, n, copies_at_layer, scale in configs:
        cfg = replace(cfg, max_batch=batch, feature=replace(cfg.feature, copies_at_layer=copies_at_layer))
        att = InputIBA(model, layer, cfg, stats=stats)
        x = images[:n].to(device)
        seconds = {"feature": 0.0, "gan": 0.0, "input": 0.0}
        with PeakMemory(device) as peak:
            start = time.perf_counter()
            for k in range(0, n, batch):
                res = att.attribute(x[k:k + batch], seed=k, return_stages=True)
                for stage, value in res.seconds.items():
                    seconds[stage] += value
            total = time.perf_counter() - start
        if scale is not None:
            seconds = {k: v * scale[k] for k, v in seconds.items()}
            total += sum(seconds.values()) - sum(v / scale[k] for k, v in seconds.items())
        rows.append((name, batch, n, {k: v / n for k, v in seconds.items()}, total / n, peak.mib))
        print(f"{name}: {total / n:.2f} s/image", flush=True)

    ref = rows[0][4]
    print(f"\nSpeed: {what}, {device}.\n")
    print("| configuration | batch | images | feature s/img | GAN s/img | input s/img | s/image | images/s "
          "| peak MiB | speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, batch, n, per_stage, per_image, mib in rows:
        print(f"| {name} | {batch} | {n} | {per_stage['feature']:.2f} | {per_stage['gan']:.2f} | "
              f"{per_stage['input']:.2f} | {per_image:.2f} | {1 / per_image:.3f} | {mib:.0f} | "
              f"{ref / per_image:.1f}x |")


if __name__ == "__main__":
    main()
