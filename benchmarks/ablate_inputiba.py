"""Ablation of InputIBA's schedule: where the prior starts, whether the GAN helps, the input stage.

Each variant is written as ``key=value`` pairs on top of the library's default
schedule, e.g. ``start=bits,gan=none`` or ``start=lambda,gan=lean,lr_mask=0.1``:

=========  ==============================================================
key        meaning
=========  ==============================================================
start      ``InputIBAConfig.mask_start`` (bits, bits_per_pixel, saturating,
           normalized, lambda)
gan        ``none`` (no GAN stage), ``lean`` (64 samples x 5 epochs) or
           ``published`` (200 x 20)
lr_mask    GAN generator's learning rate of the mask logits
epochs     GAN epochs; ``n_samples``, ``critic_steps``, ``critic`` likewise
steps      input-stage Adam steps; ``copies`` its noisy copies; ``beta``,
           ``lr``, ``sigma`` likewise
fbeta      feature-stage beta
precision  both bottleneck stages' precision (``InputIBAConfig.with_precision``)
=========  ==============================================================

Two named variants stand apart: ``published`` (``InputIBAConfig.published()``)
and ``iba`` (the plain IBA map, beta 10, as on the results page; ``iba,precision=bfloat16``
at another precision).

Data: ``cluttered`` explains held-out canvases of the cluttered benchmark (the
test split drawn with seed 1, not the results page's seed-0 canvases) with the
bundled ``ClutteredVGG`` for their true class: bounding box, EHR (the paper's),
insertion, deletion (64 steps). ``fashion`` explains FashionMNIST test images
with the bundled CNN for the predicted class: insertion and deletion only
(no boxes). Every variant runs with two seeds; *stability* is the Spearman
correlation between the two seeds' maps of each input. ``|dλ_G|`` is the mean
absolute change the GAN made to the prior. Maps are cached under ``--out`` so
variants can be added to a table without recomputing the others.

Run::

    python benchmarks/ablate_inputiba.py --data cluttered --n 64 \\
        --variants iba published start=lambda,gan=lean start=bits,gan=none
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import torch
from common import machine_info

from inputiba import IBA, FeatureStats, InputIBA, InputIBAConfig
from inputiba.evaluation import bbox_score, box_mask, deletion, ehr, insertion, spearman
from inputiba.gan import GANConfig
from inputiba.io import atomic_path

GAN_KEYS = {"lr_mask": float, "epochs": int, "n_samples": int, "critic_steps": int, "critic": str,
            "batch_size": int, "real_mask": str, "lr_critic": float}
INPUT_KEYS = {"steps": int, "copies": int, "beta": float, "lr": float, "sigma": float}


def parse_variant(spec: str) -> InputIBAConfig:
    """An :class:`InputIBAConfig` from ``key=value,...`` on top of the default one."""
    if spec == "published":
        return InputIBAConfig.published()
    cfg = InputIBAConfig()
    gan = cfg.gan
    for item in filter(None, spec.split(",")):
        key, _, value = item.partition("=")
        if key == "start":
            cfg = replace(cfg, mask_start=value)
        elif key == "gan":
            gan = {"none": None, "lean": GANConfig(n_samples=64, epochs=5),
                   "published": GANConfig()}[value]
        elif key in GAN_KEYS:
            if gan is None:
                raise ValueError(f"{spec}: {key} needs a GAN stage (gan=lean or gan=published first)")
            gan = replace(gan, **{key: GAN_KEYS[key](value)})
        elif key in INPUT_KEYS:
            field = "n_copies" if key == "copies" else key
            cfg = replace(cfg, input=replace(cfg.input, **{field: INPUT_KEYS[key](value)}))
        elif key == "fbeta":
            cfg = replace(cfg, feature=replace(cfg.feature, beta=float(value)))
        elif key == "precision":
            cfg = cfg.with_precision(value)
        else:
            raise ValueError(f"{spec}: unknown key {key!r}")
    return replace(cfg, gan=gan)


def load_data(name: str, n: int, root: str):
    """``(model, layer, stats, x, target, boxes or None)``."""
    from inputiba import models

    if name == "cluttered":
        from inputiba.cluttered import ClutteredFashionMNIST

        model = models.load_cluttered_vgg()
        stats = FeatureStats.load(models.cluttered_file("cluttered_vgg_stats.pt"))
        data = ClutteredFashionMNIST(root, "test", n=n, seed=1)
        items = [data[i] for i in range(n)]
        x = torch.stack([i[0] for i in items])
        target = torch.tensor([i[1] for i in items])
        boxes = box_mask(torch.stack([i[2] for i in items]), tuple(x.shape[-2:]))
        return model, models.CLUTTERED_LAYER, stats, x, target, boxes
    if name == "fashion":
        from inputiba.datasets import fashion_mnist

        model = models.load_fashion_cnn()
        stats = FeatureStats.load(models.pretrained_path("fashion_mnist_cnn_stats.pt"))
        data = fashion_mnist(root, train=False)
        x = torch.stack([data[i][0] for i in range(n)])
        with torch.no_grad():
            target = model(x).argmax(1)
        return model, models.FASHION_CNN_LAYER, stats, x, target, None
    raise ValueError(f"unknown data {name!r}")


def explain(spec: str, model, layer, stats, x, target, seed: int, batch: int) -> dict:
    """Maps (and GAN movement, seconds) of one variant and seed."""
    start = time.perf_counter()
    if spec.split(",")[0] == "iba":
        settings = dict(item.partition("=")[::2] for item in spec.split(",")[1:])
        if set(settings) - {"precision"}:
            raise ValueError(f"{spec}: the iba variant takes only precision=")
        iba = IBA(model, layer, stats=stats, max_batch=batch, **settings)
        maps = iba.attribute(x, target, seed=seed)
        return {"maps": maps, "moved": None, "seconds": time.perf_counter() - start}
    att = InputIBA(model, layer, replace(parse_variant(spec), max_batch=batch), stats=stats)
    maps, moved = [], []
    for k in range(0, len(x), batch):
        res = att.attribute(x[k:k + batch], target[k:k + batch], seed=seed, return_stages=True)
        maps.append(res.mask)
        if res.gan is not None:
            moved.append((res.gan.mask - res.gan.initial).abs().flatten(1).mean(1))
    return {"maps": torch.cat(maps), "moved": torch.cat(moved) if moved else None,
            "seconds": time.perf_counter() - start}


def cached(path: Path, compute) -> dict:
    if path.exists():
        return torch.load(path, weights_only=True)
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(value, tmp)
    return value


def mean_se(v: torch.Tensor) -> str:
    v = v[~torch.isnan(v)].double()
    if len(v) == 0:
        return "—"
    return f"{v.mean():.3f} ± {v.std() / len(v) ** 0.5:.3f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", choices=["cluttered", "fashion"], default="cluttered")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--variants", nargs="+", required=True)
    p.add_argument("--seeds", type=int, nargs=2, default=[0, 1])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--root", default="data")
    p.add_argument("--out", default="outputs/ablation")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, layer, stats, x, target, boxes = load_data(args.data, args.n, args.root)
    print(machine_info(torch.device("cpu")), flush=True)
    rows = []
    for spec in args.variants:
        runs = [cached(Path(args.out) / args.data / f"n{args.n}" / f"{spec}__seed{seed}.pt",
                       lambda seed=seed: explain(spec, model, layer, stats, x, target, seed, args.batch))
                for seed in args.seeds]
        maps = runs[0]["maps"]
        scores = {
            "insertion": insertion(model, x, maps, target, n_steps=64, batch_size=512).auc,
            "deletion": deletion(model, x, maps, target, n_steps=64, batch_size=512).auc,
        }
        scores["ins-del"] = scores["insertion"] - scores["deletion"]
        if boxes is not None:
            scores["bbox"] = bbox_score(maps, boxes)
            scores["ehr"] = ehr(maps, boxes)
        scores["stability"] = spearman(runs[0]["maps"], runs[1]["maps"])
        moved = runs[0]["moved"]
        rows.append((spec, scores, moved, runs[0]["seconds"] / len(x)))
        print(f"{spec}: done", flush=True)

    cols = (["bbox", "ehr"] if boxes is not None else []) + ["insertion", "deletion", "ins-del", "stability"]
    print(f"\n{args.data}, {args.n} inputs, seeds {args.seeds}\n")
    print("| variant | " + " | ".join(cols) + " | mean abs dλ_G | s/image |")
    print("|---|" + "---:|" * (len(cols) + 2))
    for spec, scores, moved, sec in rows:
        cells = [mean_se(scores[c]) for c in cols]
        print(f"| `{spec}` | " + " | ".join(cells) + f" | {'—' if moved is None else f'{moved.mean():.4f}'} "
              f"| {sec:.2f} |")


if __name__ == "__main__":
    main()
