"""The cluttered FashionMNIST benchmark, the ClutteredVGG and their shipped files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from inputiba import FeatureStats
from inputiba.cluttered import (CLUTTERED_MEAN, CLUTTERED_STD, ClutteredConfig, ClutteredFashionMNIST,
                                bundled_canvases, make_canvas, measure_pixel_stats, normalize_canvases,
                                save_examples)
from inputiba.datasets import DEBIAN_FASHION_MNIST
from inputiba.models import CLUTTERED_LAYER, ClutteredVGG, cluttered_file, load_cluttered_vgg, pretrained_path

_REPO_DATA = Path(__file__).resolve().parent.parent / "data"
_RAW = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A data folder with FashionMNIST: the repo's ``data/``, else unpacked from the Debian package."""
    if all((_REPO_DATA / "FashionMNIST" / "raw" / name).is_file() for name in _RAW):
        return _REPO_DATA
    if not all((Path(DEBIAN_FASHION_MNIST) / f"{name}.gz").is_file() for name in _RAW):
        pytest.skip(f"FashionMNIST is neither in {_REPO_DATA} nor in {DEBIAN_FASHION_MNIST} "
                    f"(apt-get install dataset-fashion-mnist)")
    return tmp_path_factory.mktemp("data")


def _intersects(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _extent(layer: torch.Tensor):
    rows, cols = layer.any(1).nonzero().flatten(), layer.any(0).nonzero().flatten()
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


# ---------------------------------------------------------------- the generator alone

def _marked_pool(n: int = 20):
    """Items whose inner square has brightness ``100 + k``: a pixel names its source."""
    images = torch.zeros(n, 28, 28, dtype=torch.uint8)
    for k in range(n):
        images[k, 4:24, 4:24] = 100 + k
    return images, torch.arange(n) % 10


def test_make_canvas_draws_the_target_and_distractors_from_the_pool():
    images, labels = _marked_pool()
    cfg = ClutteredConfig()
    for seed in range(20):
        c = make_canvas(images, labels, np.random.default_rng(seed), cfg)
        assert c.image.shape == (64, 64) and c.image.dtype == torch.uint8
        x0, y0, x1, y1 = c.box
        inside = c.image[y0:y1, x0:x1]
        assert int(inside.max()) == 100 + c.source_index and c.label == int(labels[c.source_index])
        for d_label, d_box, d_source in zip(c.distractor_labels, c.distractor_boxes, c.distractor_sources):
            assert d_label == int(labels[d_source]) != c.label
            assert not _intersects(d_box, c.box)
        # dimmer: distractors are drawn at contrast 0.65 at most, so darker than any target here
        outside = c.image.clone()
        outside[y0:y1, x0:x1] = 0
        assert int(outside.max()) <= round(0.65 * (100 + len(images) - 1)) < 100


def test_config_rejects_distractors_as_large_as_targets():
    with pytest.raises(ValueError, match="below the smallest target scale"):
        ClutteredConfig(target_scale=(16, 30), distractor_scale=(10, 16))
    with pytest.raises(ValueError, match="target_scale"):
        ClutteredConfig(size=32, target_scale=(20, 36))


def test_make_canvas_needs_items_of_another_class():
    images, _ = _marked_pool()
    with pytest.raises(ValueError, match="another class"):
        make_canvas(images, torch.zeros(len(images), dtype=torch.int64), np.random.default_rng(0))


# ---------------------------------------------------------------- on real FashionMNIST items

def test_same_seed_same_canvas_and_any_index_alone(root):
    long = ClutteredFashionMNIST(root, "test", n=500, seed=3)
    short = ClutteredFashionMNIST(root, "test", n=10, seed=3)
    late = long.canvas(499)
    for i in (9, 0, 5):
        a, b = long[i], short[i]
        torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
        assert a[1] == b[1] and torch.equal(a[2], b[2])
    assert torch.equal(long.canvas(499).image, late.image)
    other = ClutteredFashionMNIST(root, "test", n=10, seed=4)
    assert not torch.equal(other.canvas(0).image, short.canvas(0).image)
    with pytest.raises(IndexError):
        short.canvas(10)
    with pytest.raises(ValueError, match="split"):
        ClutteredFashionMNIST(root, "val")


def test_box_is_the_tight_extent_of_the_target_inside_the_canvas(root):
    data = ClutteredFashionMNIST(root, "train", n=30, seed=0)
    for i in range(len(data)):
        c = data.canvas(i)
        x0, y0, x1, y1 = c.box
        assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
        assert c.box == _extent(c.target)
        assert not c.target[:, :x0].any() and not c.target[:, x1:].any()
        # no distractor reaches into the box: there the canvas is the target alone
        assert torch.equal(c.image[y0:y1, x0:x1], c.target[y0:y1, x0:x1])
        # at most a third of the canvas, as the box metrics want (inputiba.evaluation.usable_boxes)
        assert (y1 - y0) * (x1 - x0) <= (64 * 64) / 3
        image, label, box = data[i]
        assert image.shape == (1, 64, 64) and image.dtype == torch.float32
        torch.testing.assert_close(image[0], normalize_canvases(c.image))
        assert label == c.label and box.tolist() == list(c.box) and box.dtype == torch.int64


def test_distractors_follow_the_rule(root):
    cfg = ClutteredConfig()
    data = ClutteredFashionMNIST(root, "train", n=100, seed=1, config=cfg)
    counts = []
    for i in range(len(data)):
        c = data.canvas(i)
        counts.append(len(c.distractor_boxes))
        for d_label, d_box in zip(c.distractor_labels, c.distractor_boxes):
            assert d_label != c.label
            assert 0 <= d_box[0] < d_box[2] <= 64 and 0 <= d_box[1] < d_box[3] <= 64
            assert not _intersects(d_box, c.box)
            # smaller than any target, even where the canvas edge does not cut it
            assert max(d_box[2] - d_box[0], d_box[3] - d_box[1]) <= cfg.distractor_scale[1]
        outside = c.image.clone()
        x0, y0, x1, y1 = c.box
        outside[y0:y1, x0:x1] = 0
        assert int(outside.max()) <= round(255 * cfg.distractor_contrast[1])
    assert min(counts) >= 1 and max(counts) <= cfg.n_distractors[1]
    assert np.mean(counts) > 2.5


def test_train_and_test_canvases_draw_from_their_own_fashion_mnist_split(root):
    train = ClutteredFashionMNIST(root, "train", n=60, seed=0)
    test = ClutteredFashionMNIST(root, "test", n=60, seed=0)
    assert len(train.images) == 60_000 and len(test.images) == 10_000
    for data in (train, test):
        for i in range(0, 60, 3):
            c = data.canvas(i)
            assert c.source_index == data.source_index(i) < len(data.images)
            assert c.label == int(data.labels[c.source_index])
            assert all(d < len(data.images) for d in c.distractor_sources)
    # the streams differ too, so index i is not the same draw in both splits
    train_sources = [train.source_index(i) for i in range(60)]
    assert max(train_sources) >= 10_000
    assert not torch.equal(train.canvas(0).target > 0, test.canvas(0).target > 0)


def test_pixel_constants_match_the_generated_canvases(root):
    mean, std = measure_pixel_stats(root, n=100, seed=0)
    assert abs(mean - CLUTTERED_MEAN) < 0.01 and abs(std - CLUTTERED_STD) < 0.01


def test_save_examples_round_trip(root, tmp_path):
    data = ClutteredFashionMNIST(root, "test", n=5, seed=2)
    save_examples(tmp_path / "ex.pt", data, n=3)
    images, x, labels, boxes = bundled_canvases(tmp_path / "ex.pt")
    assert images.shape == (3, 1, 64, 64) and images.dtype == torch.uint8
    for i in range(3):
        c = data.canvas(i)
        assert torch.equal(images[i, 0], c.image) and labels[i] == c.label and tuple(boxes[i].tolist()) == c.box
    torch.testing.assert_close(x, normalize_canvases(images))


def test_shipped_examples_are_the_first_test_canvases(root):
    """The generator still makes what was shipped (seed 0, as the training script drew them)."""
    examples = torch.load(pretrained_path("cluttered_examples.pt"), weights_only=True)
    data = ClutteredFashionMNIST(root, "test", n=8, seed=0)
    for i in range(8):
        c = data.canvas(i)
        assert int(examples["sources"][i]) == c.source_index and int(examples["labels"][i]) == c.label
        assert tuple(examples["boxes"][i].tolist()) == c.box
        # one grey level of slack for interpolation rounding in other torch versions
        assert (examples["images"][i, 0].int() - c.image.int()).abs().max() <= 1


# ---------------------------------------------------------------- the model and its shipped files

def test_cluttered_vgg_output_shape_and_bottleneck_layer():
    model = ClutteredVGG().eval()
    layer = dict(model.named_modules())[CLUTTERED_LAYER]
    assert isinstance(layer, nn.Conv2d)
    seen = {}
    handle = layer.register_forward_hook(lambda m, args, out: seen.update(shape=out.shape))
    try:
        out = model(torch.randn(2, 1, 64, 64))
    finally:
        handle.remove()
    assert out.shape == (2, 10)
    assert seen["shape"] == (2, 128, 8, 8)


def test_shipped_examples_load_and_the_shipped_model_classifies_them():
    examples = torch.load(pretrained_path("cluttered_examples.pt"), weights_only=True)
    assert set(examples) == {"images", "labels", "boxes", "sources"}
    images, x, labels, boxes = bundled_canvases()
    assert images.dtype == torch.uint8 and images.shape == (8, 1, 64, 64)
    assert labels.dtype == torch.int64 and labels.shape == (8,) and boxes.shape == (8, 4)
    assert ((boxes[:, :2] >= 0) & (boxes[:, 2:] <= 64) & (boxes[:, :2] < boxes[:, 2:])).all()
    torch.testing.assert_close(x, normalize_canvases(images))
    model = load_cluttered_vgg()
    assert not model.training
    with torch.no_grad():
        predicted = model(x).argmax(1)
    assert int((predicted == labels).sum()) >= 6


def test_a_missing_file_names_the_training_script():
    with pytest.raises(FileNotFoundError, match="train_cluttered.py"):
        cluttered_file("no_such_file.pt")


def test_shipped_stats_fit_the_bottleneck_layer():
    stats = FeatureStats.load(pretrained_path("cluttered_vgg_stats.pt"))
    assert stats.shape == (128, 8, 8)
    assert stats.n_samples == 1000 and not stats.relu


def test_the_harness_reads_the_benchmark_and_the_bundled_model(root):
    from inputiba.harness import load_dataset
    from inputiba.models import load_model

    data = load_dataset("cluttered", root=str(root), split="test", n_samples=3)
    image, label, box = data[2]
    assert len(data) == 3 and image.shape == (1, 64, 64) and box.shape == (4,)
    model = load_model("cluttered_vgg", "bundled")
    assert torch.equal(model.state_dict()["features.13.weight"],
                       load_cluttered_vgg().state_dict()["features.13.weight"])
