"""Attribute images with InputIBA or IBA and write every stage's maps.

Explains one image, a folder (searched recursively) or an ImageFolder tree.
For each image it writes, atomically, ``<out>/<relative path>.npz`` with the
float maps and ``<out>/<relative path>.png`` with a figure; an image whose two
files exist is skipped, so an interrupted run resumes where it stopped.

Examples::

    # VGG16 with ImageNet weights from the torch hub cache, InputIBA
    python vision/attribute.py images/ --arch vgg16 --weights hub --out results/

    # the bundled FashionMNIST CNN, IBA, class from the ImageFolder tree
    python vision/attribute.py tree/ --arch fashion_cnn --weights bundled \
        --preprocess fashion-mnist --method iba --target folder

    # two processes, each taking every second image
    torchrun --nproc_per_node 2 vision/attribute.py images/ --arch vgg16 --weights hub

An image that cannot be read or explained (truncated, not an image, of
another size than the rest under ``--preprocess none``) is skipped with one
line saying why and recorded in ``<out>/failures.jsonl``; the rest completes,
and the exit status is 1 with a summary (``14 written, 2 failed``). A resumed
run skips recorded failures unless ``--retry-failed``. Mistakes in the call
(unknown architecture or layer, weights that do not fit, an output folder
that cannot be written, an empty folder) stop it at once with a one-line
error and exit status 2; ``--debug`` shows the traceback.

With ``--seed``, an image's maps depend on the image, its target, the
settings and the seed only: its noise is seeded from the seed and the image's
path relative to the input folder (:mod:`inputiba.seeding`), so the batch
size, the other images, ``torchrun`` ranks and resuming change nothing but
float rounding.

The ``.npz`` holds ``feature_map`` (bits per pixel) for both methods, and
``gan_mask`` (``lambda_G`` averaged over channels) and ``mask`` (InputIBA's
attribution in [0, 1]) for InputIBA, plus ``target`` and ``probability`` (the
model's probability of that class).
"""
from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections import Counter
from pathlib import Path

import torch
from PIL import Image
from torchvision import transforms

from inputiba import IBA, InputIBA, input_seed
from inputiba.config import load_config
from inputiba.datasets import fashion_mnist_transform
from inputiba.io import (FailureLog, UsageError, atomic_path, distributed_rank, run_command, save_npz, shard,
                         writable_folder)
from inputiba.models import FASHION_CNN_LAYER, load_model
from inputiba.pipeline import SCHEDULES, preset_for, schedule
from inputiba.precision import PRECISIONS
from inputiba.plotting import plot_panels

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
GRAY_MEAN, GRAY_STD = 0.449, 0.226


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", help="an image file, a folder of images, or an ImageFolder tree")
    p.add_argument("--arch", required=True,
                   help="torchvision architecture name, timm:<name> (a timm model, e.g. timm:convnext_tiny), "
                        "or a bundled model: fashion_cnn, cluttered_vgg, cluttered_vit, cluttered_convnext")
    p.add_argument("--weights", default=None,
                   help="state-dict file (.pt/.pth or .safetensors), 'hub' (weights already in the torch hub "
                        "cache, or for timm: models the Hugging Face cache; nothing is downloaded) or 'bundled'")
    p.add_argument("--num-classes", type=int, default=None, help="outputs, if not the architecture's")
    p.add_argument("--preprocess", choices=["imagenet", "fashion-mnist", "timm", "none"], default=None,
                   help="imagenet: resize, centre crop, ImageNet mean/std; fashion-mnist: 28x28 "
                        "grayscale; timm: the timm model's own evaluation transform (size, crop, mean/std); "
                        "none: the image as it is, in [0, 1] (default: timm for timm: models, else imagenet)")
    p.add_argument("--size", type=int, default=224, help="crop size for imagenet preprocessing")
    p.add_argument("--grayscale", action="store_true", help="read images as one channel")
    p.add_argument("--method", choices=["inputiba", "iba"], default="inputiba")
    p.add_argument("--layer", default=None, help="bottleneck layer (default: the architecture's preset)")
    p.add_argument("--target", default="predicted",
                   help="'predicted', 'folder' (ImageFolder class index) or a class index")
    p.add_argument("--schedule", choices=list(SCHEDULES), default="default",
                   help="InputIBA's schedule: the library's default, or the paper's (published, much slower)")
    p.add_argument("--config", default=None, help="TOML/JSON file with InputIBA settings (overrides --schedule)")
    p.add_argument("--stats", default=None, help="feature statistics file to load (or to write)")
    p.add_argument("--estimate-from", default=None,
                   help="folder of images for the statistics (default: the inputs)")
    p.add_argument("--estimate-samples", type=int, default=1000)
    p.add_argument("--out", default="outputs/vision", help="output folder")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images attributed together (default: the library's choice for the layer's size: "
                        "on a CPU one at a time for VGG16/ResNet-50 at 224 px, where batches run slower; 8 on a GPU)")
    p.add_argument("--precision", choices=list(PRECISIONS), default=None,
                   help="what the network runs at during the fits (default: the schedule's, float32); "
                        "bfloat16 is about 2x faster on CPUs with AVX-512 BF16 and on GPUs "
                        "(benchmarks/RESULTS.md)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress", action="store_true", help="progress bar over the stages")
    p.add_argument("--report", action="store_true", help="also write <out>/report.html of the whole folder")
    p.add_argument("--retry-failed", action="store_true",
                   help="retry the images an earlier run recorded in failures.jsonl (default: skip them)")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    args = p.parse_args(argv)
    if args.preprocess is None:
        args.preprocess = "timm" if args.arch.startswith("timm:") else "imagenet"
    return args


def list_images(root: Path) -> list[Path]:
    """Image files under ``root`` (or ``root`` itself), sorted, relative to ``root``."""
    if root.is_file():
        return [Path(root.name)]
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is neither an image file nor a folder")
    files = sorted(p.relative_to(root) for p in root.rglob("*")
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {root}")
    return files


def folder_classes(files: list[Path]) -> dict[str, int]:
    """ImageFolder's class indices: the sorted names of the first-level folders."""
    names = sorted({f.parts[0] for f in files if len(f.parts) > 1})
    if not names:
        raise ValueError("--target folder needs an ImageFolder tree (class/image files)")
    return {name: i for i, name in enumerate(names)}


def build_transform(args: argparse.Namespace, model=None) -> transforms.Compose:
    if args.preprocess == "timm":
        if not args.arch.startswith("timm:"):
            raise UsageError("--preprocess timm is for timm: architectures")
        from timm.data import create_transform, resolve_data_config

        return create_transform(**resolve_data_config({}, model=model))
    if args.preprocess == "fashion-mnist":
        return transforms.Compose([transforms.Grayscale(), transforms.Resize((28, 28)),
                                   *fashion_mnist_transform().transforms])
    steps = [transforms.Grayscale()] if args.grayscale else []
    if args.preprocess == "imagenet":
        steps += [transforms.Resize(round(args.size * 256 / 224)), transforms.CenterCrop(args.size),
                  transforms.ToTensor()]
        if args.grayscale:  # the luminance of ImageNet's statistics
            steps.append(transforms.Normalize((GRAY_MEAN,), (GRAY_STD,)))
        else:
            steps.append(transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD))
    else:
        steps.append(transforms.ToTensor())
    return transforms.Compose(steps)


def load_images(folder: Path, files: list[Path], transform) -> torch.Tensor:
    """The images ``folder / f`` for ``f`` in ``files``, transformed and stacked."""
    mode_l = any(isinstance(t, transforms.Grayscale) for t in transform.transforms)
    tensors = []
    for f in files:
        with Image.open(folder / f) as img:
            tensors.append(transform(img.convert("L" if mode_l else "RGB")))
    return torch.stack(tensors)


def _readable_batches(folder: Path, files: list[Path], transform, size: int = 32):
    """Batches of the images that load, one batch in memory at a time, for the statistics.

    Unreadable images, and images whose preprocessed size is not the most
    common one (possible with ``--preprocess none``), are left out, each with
    one line on standard error; the attribution then records them.
    """
    common = _common_size(folder, files, transform)
    batch = []
    for rel in files:
        try:
            image = load_images(folder, [rel], transform)[0]
        except Exception as err:
            print(f"statistics: skipped {rel}: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
            continue
        if tuple(image.shape) != common:
            print(f"statistics: skipped {rel}: shape {tuple(image.shape)} after preprocessing, not "
                  f"{common} as most images", file=sys.stderr, flush=True)
            continue
        batch.append(image)
        if len(batch) == size:
            yield torch.stack(batch)
            batch = []
    if batch:
        yield torch.stack(batch)
    if common is None:
        raise ValueError(f"none of the {len(files)} images for the statistics could be read")


def _common_size(folder: Path, files: list[Path], transform) -> tuple[int, ...] | None:
    """The most common shape of the images after ``transform`` (``None``: none could be read).

    Shapes are predicted from the image headers on a blank image of that size,
    so nothing is decoded twice.
    """
    shapes: Counter = Counter()
    mode_l = any(isinstance(t, transforms.Grayscale) for t in transform.transforms)
    for rel in files:
        try:
            with Image.open(folder / rel) as img:
                shapes[img.size] += 1
        except Exception:
            continue
    if not shapes:
        return None
    size = shapes.most_common(1)[0][0]
    return tuple(transform(Image.new("L" if mode_l else "RGB", size)).shape)


def outputs_for(out: Path, rel: Path) -> tuple[Path, Path]:
    stem = out / rel.with_suffix("")
    return stem.with_name(stem.name + ".npz"), stem.with_name(stem.name + ".png")


def make_attributor(args, model):
    layer = args.layer or (FASHION_CNN_LAYER if args.arch == "fashion_cnn" else None)
    if args.config:
        cfg = load_config(args.config)
    else:
        cfg = schedule(args.schedule)
    if args.precision is not None:
        cfg = cfg.with_precision(args.precision)
    if args.method == "iba":
        preset = preset_for(model) if layer is None else {"layer": layer}
        return IBA(model, preset["layer"], relu=preset.get("relu", False), max_batch=args.batch_size,
                   precision=cfg.feature.precision)
    if args.batch_size is not None:
        cfg.max_batch = args.batch_size
    return InputIBA(model, layer, cfg)


def prepare_stats(args, attributor, root: Path, transform, rank: int, world: int):
    """Load the statistics, or estimate them (on rank 0 when distributed) and save them."""
    stats_path = Path(args.stats) if args.stats else Path(args.out) / "feature_stats.pt"
    if stats_path.is_file():
        attributor.load_stats(stats_path)
        return
    if rank == 0:
        source = Path(args.estimate_from) if args.estimate_from else root
        est_files = list_images(source)[: args.estimate_samples]
        base = source if source.is_dir() else source.parent
        attributor.estimate(_readable_batches(base, est_files, transform), n_samples=args.estimate_samples)
        attributor.save_stats(stats_path)
    if world > 1:
        torch.distributed.barrier()
        if rank != 0:
            attributor.load_stats(stats_path)


def main(argv=None) -> int:
    args = parse_args(argv)
    rank, world = distributed_rank()
    if world > 1:
        torch.distributed.init_process_group("gloo")
    try:
        return _run(args, rank, world)
    finally:
        if world > 1:
            torch.distributed.destroy_process_group()


def _run(args, rank: int, world: int) -> int:
    torch.manual_seed(args.seed)
    root = Path(args.inputs)
    out = Path(writable_folder(args.out))
    files = list_images(root)
    base = root if root.is_dir() else root.parent
    classes = folder_classes(files) if args.target == "folder" else None
    mine = shard(files, rank, world)
    failures = FailureLog(out, rank, world)
    failed_before = set() if args.retry_failed else failures.keys()
    todo = [f for f in mine if not all(p.is_file() for p in outputs_for(out, f))]
    skipped = [f for f in todo if f.as_posix() in failed_before]
    todo = [f for f in todo if f.as_posix() not in failed_before]
    print(f"rank {rank}/{world}: {len(mine)} images, {len(mine) - len(todo) - len(skipped)} already done"
          + (f", {len(skipped)} failed before (--retry-failed retries them)" if skipped else ""), flush=True)

    if rank == 0:  # what produced the maps, for the report and for whoever reads them later
        settings = {k: v for k, v in vars(args).items() if k not in ("debug", "progress", "report", "retry_failed")}
        with atomic_path(out / "run.json", suffix=".json") as tmp:
            Path(tmp).write_text(json.dumps(settings, indent=1, sort_keys=True), encoding="utf-8")
    model = load_model(args.arch, args.weights, args.num_classes).to(args.device)
    transform = build_transform(args, model)
    attributor = make_attributor(args, model)
    prepare_stats(args, attributor, root, transform, rank, world)

    written = failed = 0
    per_load = args.batch_size or 8  # images read per round; the attributor splits them as it runs fastest
    for k in range(0, len(todo), per_load):
        loaded = []
        for rel in todo[k:k + per_load]:
            try:
                loaded.append((rel, load_images(base, [rel], transform)[0]))
            except Exception as err:  # one unreadable file never sinks the run
                failed += _fail(failures, rel, err, rank, args.debug)
        try:
            done = _attribute_and_write(args, attributor, classes, out, loaded, rank, failures)
        except Exception:  # find the culprit: each image alone (per-image seeds: the same maps)
            done = 0
            for item in loaded:
                try:
                    done += _attribute_and_write(args, attributor, classes, out, [item], rank, failures)
                except Exception as err:
                    failed += _fail(failures, item[0], err, rank, args.debug)
        written += done
    print(f"rank {rank}: {written} written, {failed} failed"
          + (f", {len(skipped)} skipped as failed before" if skipped else "")
          + (f" (see {failures.path})" if failed or skipped else ""), flush=True)
    if args.report and rank == 0:
        from inputiba.report import write_report

        print(f"report: {write_report(out)[0]}", flush=True)
    return 1 if failed or skipped else 0


def _fail(failures: FailureLog, rel: Path, err: Exception, rank: int, debug: bool) -> int:
    """Record and report one image that could not be explained; returns 1."""
    failures.record(rel.as_posix(), err)
    print(f"rank {rank}: failed {rel}: {failures.records[rel.as_posix()]['error']}", file=sys.stderr, flush=True)
    if debug:
        traceback.print_exception(err)
    return 1


def _attribute_and_write(args, attributor, classes, out: Path, loaded: list, rank: int,
                         failures: FailureLog) -> int:
    """Explain the loaded ``(relative path, image)`` pairs together; write each one's files."""
    if not loaded:
        return 0
    batch = [rel for rel, _ in loaded]
    x = torch.stack([image for _, image in loaded]).to(args.device)
    if classes is not None:
        target = [classes[f.parts[0]] for f in batch]
    elif args.target == "predicted":
        target = None
    else:
        target = int(args.target)
    seed = [input_seed(args.seed, rel.as_posix()) for rel in batch]  # keyed by file: resumable
    if args.method == "iba":
        res = attributor.attribute(x, target, seed=seed, return_result=True)
        maps = {"feature_map": res.saliency}
    else:
        res = attributor.attribute(x, target, seed=seed, return_stages=True, progress=args.progress)
        maps = {"feature_map": res.feature_map, "gan_mask": res.gan_mask.mean(dim=1), "mask": res.mask}
    with torch.no_grad():  # the model's probability of each explained class, for the figure and the report
        probs = torch.softmax(attributor.model(x), dim=1).gather(1, res.targets.view(-1, 1).to(x.device)).squeeze(1)
    for i, rel in enumerate(batch):
        npz, png = outputs_for(out, rel)
        save_npz(npz, target=res.targets[i], probability=probs[i], **{k: v[i] for k, v in maps.items()})
        panels = {"IBA (feature stage)": (maps["feature_map"][i], "bits per pixel")}
        if args.method == "inputiba":
            panels["prior lambda_G"] = (maps["gan_mask"][i], "mask")
            panels["InputIBA"] = (maps["mask"][i], "mask")
        plot_panels(x[i], panels, png, title=f"{rel} (class {int(res.targets[i])}, p = {float(probs[i]):.2f})")
        failures.clear(rel.as_posix())
        print(f"rank {rank}: wrote {rel}", flush=True)
    return len(batch)


if __name__ == "__main__":
    sys.exit(run_command(main, None, "attribute.py"))
