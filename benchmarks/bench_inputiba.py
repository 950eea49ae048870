"""Speed and quality of InputIBA schedules: the published one against leaner ones.

Quality (``--part quality``): the bundled FashionMNIST CNN (90.97 % test
accuracy) explains the first ``--n-quality`` test images with each schedule;
insertion (blurred start, sigma 5) and deletion (zeros) AUCs of the target's
probability, mean ± standard error. IBA's feature map and a random map are
listed for scale. A leaner schedule counts only if it is no worse here.

Speed (``--part speed``): a randomly initialised torchvision VGG16 at
``features.17``, random images of ``--size`` pixels. The reference is the
published schedule one image per call with the feature stage's copies made
at the input (the original's cost shape); the others run in the same process.
Per-stage seconds per image, images per second, peak memory, speed-up.

Run::

    python benchmarks/bench_inputiba.py --part quality --n-quality 32
    python benchmarks/bench_inputiba.py --part speed --size 64 --n-reference 2
    python benchmarks/bench_inputiba.py --part speed --size 224 --device cuda
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch
import torchvision
from common import PeakMemory, machine_info, random_images

from inputiba import FeatureStats, InputIBA, InputIBAConfig
from inputiba.evaluation import deletion, insertion
from inputiba.gan import GANConfig
from inputiba.iba import IBA


def published() -> InputIBAConfig:
    """The published schedule, with the original critic (weight clipping)."""
    cfg = InputIBAConfig()
    return replace(cfg, gan=replace(cfg.gan, critic="clip"))


def published_gp() -> InputIBAConfig:
    """The published schedule with the small WGAN-GP critic (the library's defaults)."""
    return InputIBAConfig()


def lean_gan() -> InputIBAConfig:
    """Only the GAN stage made lean: the small critic, 64 samples x 5 epochs."""
    return replace(InputIBAConfig(), gan=GANConfig(n_samples=64, epochs=5, critic="gp"))


def lean_copies() -> InputIBAConfig:
    """The lean GAN stage and 60 input steps of 5 copies."""
    cfg = lean_gan()
    return replace(cfg, input=replace(cfg.input, n_copies=5))


def lean_steps() -> InputIBAConfig:
    """The lean GAN stage and 30 input steps of 10 copies: ``InputIBAConfig.fast()``."""
    return InputIBAConfig.fast()


def lean_steps_copies() -> InputIBAConfig:
    """The lean GAN stage and 30 input steps of 5 copies."""
    cfg = lean_gan()
    return replace(cfg, input=replace(cfg.input, steps=30, n_copies=5))


SCHEDULES = {"published": published, "published, gp critic": published_gp, "lean GAN": lean_gan,
             "lean GAN, 5 input copies": lean_copies, "lean GAN, 30 input steps": lean_steps,
             "lean GAN, 30 input steps, 5 copies": lean_steps_copies}


def fashion_images(n: int) -> tuple[torch.Tensor, str]:
    """The first ``n`` FashionMNIST test images, normalised (bundled 16 if no dataset)."""
    from inputiba.datasets import fashion_mnist
    from inputiba.models import bundled_samples

    try:
        data = fashion_mnist("data/", train=False)
        images = torch.stack([data[i][0] for i in range(n)])
        return images, f"first {n} FashionMNIST test images"
    except FileNotFoundError:
        x = bundled_samples()[1][:n]
        return x, f"the {len(x)} bundled FashionMNIST test images (dataset not installed)"


def mean_se(values: torch.Tensor) -> str:
    return f"{values.mean():.3f} ± {values.std() / len(values) ** 0.5:.3f}"


def quality(args) -> None:
    from inputiba.models import FASHION_CNN_LAYER, load_fashion_cnn, pretrained_path

    model = load_fashion_cnn()
    stats = FeatureStats.load(pretrained_path("fashion_mnist_cnn_stats.pt"))
    x, what = fashion_images(args.n_quality)
    with torch.no_grad():
        target = model(x).argmax(1)
    maps = {}
    for name in args.schedules:
        att = InputIBA(model, FASHION_CNN_LAYER, replace(SCHEDULES[name](), max_batch=args.batch),
                       stats=stats)
        start = time.perf_counter()
        maps[name] = att.attribute(x, target, seed=0)
        print(f"{name}: {(time.perf_counter() - start) / len(x):.2f} s/image", flush=True)
    iba = IBA(model, FASHION_CNN_LAYER, stats=stats, max_batch=args.batch)
    maps["IBA feature map (for scale)"] = iba.attribute(x, target, seed=0)
    maps["random (for scale)"] = torch.rand(x.shape[0], *x.shape[2:], generator=torch.Generator().manual_seed(0))
    print(f"\nQuality: bundled FashionMNIST CNN, {what}, predicted class as target; "
          "AUC of the target probability over 100 steps.\n")
    scores = {name: (insertion(model, x, heat, target).auc, deletion(model, x, heat, target).auc)
              for name, heat in maps.items()}
    first = next(iter(scores))
    print(f"Differences are paired, per image, against {first!r}.\n")
    print("| attribution | insertion AUC (higher is better) | deletion AUC (lower is better) "
          "| insertion difference | deletion difference |")
    print("|---|---:|---:|---:|---:|")
    for name, (ins, dele) in scores.items():
        print(f"| {name} | {mean_se(ins)} | {mean_se(dele)} | {mean_se(ins - scores[first][0])} "
              f"| {mean_se(dele - scores[first][1])} |")


def speed(args) -> None:
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = torchvision.models.vgg16(weights=None).eval().to(device)
    feature = IBA(model, "features.17")
    feature.estimate([random_images(16, args.size, 1).to(device)], n_samples=16)
    stats = feature.stats
    print(machine_info(device), flush=True)

    configs = [("reference: published, one at a time", published(), 1, args.n_reference, False)]
    for b in args.batch_sizes:
        configs.append((f"{args.speed_schedule}, batch {b}", SCHEDULES[args.speed_schedule](), b,
                        max(b, args.n_reference), True))
    configs += [(f"published, batch {b}", published(), b, b, True) for b in args.published_batches]

    rows = []
    for name, cfg, batch, n, copies_at_layer in configs:
        cfg = replace(cfg, max_batch=batch, feature=replace(cfg.feature, copies_at_layer=copies_at_layer))
        att = InputIBA(model, "features.17", cfg, stats=stats)
        images = random_images(n, args.size, 2).to(device)
        seconds = {"feature": 0.0, "gan": 0.0, "input": 0.0}
        with PeakMemory(device) as peak:
            start = time.perf_counter()
            for k in range(0, n, batch):
                res = att.attribute(images[k:k + batch], seed=k, return_stages=True)
                for stage, value in res.seconds.items():
                    seconds[stage] += value
            total = time.perf_counter() - start
        rows.append((name, batch, n, {k: v / n for k, v in seconds.items()}, total / n, peak.mib))
        print(f"{name}: {total / n:.1f} s/image", flush=True)

    ref = rows[0][4]
    print(f"\nSpeed: VGG16 (random weights), features.17, {args.size}x{args.size} random images, {device}.\n")
    print("| configuration | batch | images | feature s/img | GAN s/img | input s/img | s/image | images/s "
          "| peak MiB | speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, batch, n, per_stage, per_image, mib in rows:
        print(f"| {name} | {batch} | {n} | {per_stage['feature']:.2f} | {per_stage['gan']:.2f} | "
              f"{per_stage['input']:.2f} | {per_image:.2f} | {1 / per_image:.3f} | {mib:.0f} | "
              f"{ref / per_image:.1f}x |")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=["quality", "speed", "both"], default="both")
    p.add_argument("--n-quality", type=int, default=32, help="FashionMNIST images for the quality part")
    p.add_argument("--schedules", nargs="+", default=list(SCHEDULES), choices=list(SCHEDULES))
    p.add_argument("--batch", type=int, default=8, help="batch of the quality part")
    p.add_argument("--size", type=int, default=64, help="VGG16 input size of the speed part")
    p.add_argument("--n-reference", type=int, default=2, help="images of the one-at-a-time reference")
    p.add_argument("--speed-schedule", default="lean GAN, 30 input steps", choices=list(SCHEDULES),
                   help="schedule timed against the reference")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8], help="batches of that schedule")
    p.add_argument("--published-batches", type=int, nargs="*", default=[], help="batches of the published one")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.part in ("quality", "both"):
        quality(args)
    if args.part in ("speed", "both"):
        speed(args)


if __name__ == "__main__":
    main()
