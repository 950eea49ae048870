"""Is bfloat16 as good as float32? Paired scores of IBA and InputIBA at both precisions.

Each input is explained at float32 and at a lower precision with the same seed
(``IBAConfig.precision``; for InputIBA both bottleneck stages), and scored with
the results page's metrics: bounding box and EHR against the target's box (the
cluttered benchmark only), insertion and deletion (64 steps). The table gives
each precision's mean and the paired difference (lower minus float32, mean ±
standard error over the inputs), and the Spearman correlation between the two
precisions' maps of each input next to that between float32 maps of two seeds:
a precision that changes the maps less than the seed does changes nothing a
user could rely on. Speed is not measured here (the maps are cached and may come
from runs under other loads): ``bench_iba.py`` and ``bench_inputiba.py`` time it.

Data and model as in ``ablate_inputiba.py`` (whose cached maps this reuses):
``cluttered`` is held-out canvases (test split, seed 1) with the bundled
``ClutteredVGG``; ``fashion`` the FashionMNIST test images with the bundled CNN.

Run::

    python benchmarks/compare_precision.py --data cluttered --n 64
    python benchmarks/compare_precision.py --data fashion --n 64 --precision bfloat16
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from ablate_inputiba import cached, explain, load_data
from common import machine_info

from inputiba.evaluation import bbox_score, deletion, ehr, insertion, spearman


def scores(model, x, maps, target, boxes) -> dict[str, torch.Tensor]:
    """Per-input scores of the results page's metrics."""
    out = {"insertion": insertion(model, x, maps, target, n_steps=64, batch_size=512).auc,
           "deletion": deletion(model, x, maps, target, n_steps=64, batch_size=512).auc}
    out["ins-del"] = out["insertion"] - out["deletion"]
    if boxes is not None:
        out["bbox"] = bbox_score(maps, boxes)
        out["ehr"] = ehr(maps, boxes)
    return out


def paired(a: torch.Tensor, b: torch.Tensor) -> str:
    d = (b - a).double()
    return f"{d.mean():+.4f} ± {d.std() / len(d) ** 0.5:.4f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", choices=["cluttered", "fashion"], default="cluttered")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--precision", default="bfloat16", help="the lower precision to compare with float32")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--root", default="data")
    p.add_argument("--out", default="outputs/ablation")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, layer, stats, x, target, boxes = load_data(args.data, args.n, args.root)
    print(machine_info(torch.device("cpu")), flush=True)
    folder = Path(args.out) / args.data / f"n{args.n}"

    def run(spec: str, seed: int) -> dict:
        return cached(folder / f"{spec}__seed{seed}.pt",
                      lambda: explain(spec, model, layer, stats, x, target, seed, args.batch))

    lines = []
    for method, base in (("IBA", "iba"), ("InputIBA", "start=bits")):
        full, other_seed = run(base, 0), run(base, 1)
        low = run(f"{base},precision={args.precision}", 0)
        a, b = scores(model, x, full["maps"], target, boxes), scores(model, x, low["maps"], target, boxes)
        for metric in a:
            lines.append(f"| {method} | {metric} | {a[metric].mean():.4f} | {b[metric].mean():.4f} | "
                         f"{paired(a[metric], b[metric])} |")
        lines.append(f"| {method} | Spearman of the maps | — | "
                     f"{spearman(full['maps'], low['maps']).mean():.3f} (seed 0 vs 1 at float32: "
                     f"{spearman(full['maps'], other_seed['maps']).mean():.3f}) | — |")
        print(f"{method}: done", flush=True)
    print(f"\n{args.data}, {args.n} inputs, seed 0, float32 vs {args.precision}\n")
    print(f"| method | metric | float32 | {args.precision} | paired difference |")
    print("|---|---|---:|---:|---:|")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
