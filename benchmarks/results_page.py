"""Reproduce the comparison of every method on the cluttered benchmark and publish it.

Runs the evaluation harness on ``configs/benchmark_cluttered.toml`` (every
image method, every metric), then writes the table, the machine, the command
and the curves into ``benchmarks/RESULTS.md`` (between the
``results-page`` markers) and the headline rows into ``README.md`` (between
the ``headline`` markers). The figures are copied to ``benchmarks/figures/``.
The harness keeps every sample's scores, so an interrupted run resumes.

Example::

    python benchmarks/results_page.py
    python benchmarks/results_page.py --config configs/benchmark_cluttered_vit.toml --no-readme

Another configuration than the default writes its own section of RESULTS.md
(markers ``results-page:<config stem>``) and figures (``<config stem>_*.png``).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import time
from pathlib import Path

import torch

from common import machine_info
from inputiba.harness import load_evaluation, run_evaluation
from inputiba.io import atomic_path

ROOT = Path(__file__).resolve().parent.parent
HEADLINE = ("random", "gradient", "integrated_gradients", "grad_cam", "occlusion", "rise",
            "extremal_perturbation", "iba", "inputiba")


def replace_between(path: Path, marker: str, body: str) -> None:
    """Put ``body`` between ``<!-- marker:start -->`` and ``<!-- marker:end -->`` (appended if absent)."""
    text = path.read_text(encoding="utf-8")
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text and end in text:
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "benchmark_cluttered.toml"))
    p.add_argument("--no-readme", action="store_true", help="leave README.md alone")
    args = p.parse_args()
    os.chdir(ROOT)  # the configuration's relative paths (data/, pretrained/) are from the repository root

    config = load_evaluation(args.config)
    stem = Path(args.config).stem
    default = stem == "benchmark_cluttered"
    marker, prefix = ("results-page", "cluttered") if default else (f"results-page:{stem}", stem)
    started = time.time()
    result = run_evaluation(config)
    minutes = (time.time() - started) / 60
    figures = ROOT / "benchmarks" / "figures"
    figures.mkdir(exist_ok=True)
    links = []
    for name, path in result.files.items():
        if str(path).endswith(".png"):
            target = figures / f"{prefix}_{Path(path).name}"
            shutil.copyfile(path, target)
            links.append(f"![{name}](figures/{target.name})")
    table = result.markdown()
    config_path = Path(args.config).resolve()
    shown = config_path.relative_to(ROOT) if config_path.is_relative_to(ROOT) else config_path
    page = (f"Made by `python benchmarks/results_page.py` from `{shown}` "
            f"({minutes:.0f} minutes this run; finished samples are reused, so a resumed run is shorter).\n"
            f"{machine_info(torch.device(config.device))}\n\n"
            f"Each cell: mean ± standard error (number of samples with a defined score). Arrows say which "
            f"direction is better.\n\n{table}\n\n" + "\n".join(links) + "\n")
    replace_between(ROOT / "benchmarks" / "RESULTS.md", marker, page)
    if not args.no_readme:
        lines = table.strip().splitlines()
        rows = [line for line in lines[2:] if line.split("|")[1].strip() in HEADLINE]
        readme = "\n".join(lines[:2] + rows) + (
            f"\n\nCluttered Fashion-MNIST benchmark (`{shown}`), {machine_info(torch.device(config.device))}; "
            "every method and the curves: [`benchmarks/RESULTS.md`](benchmarks/RESULTS.md).\n")
        replace_between(ROOT / "README.md", "headline", readme)
    print(table)


if __name__ == "__main__":
    main()
