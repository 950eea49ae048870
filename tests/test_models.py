"""The bundled FashionCNN, its shipped files, and the local FashionMNIST loader."""
from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch
from torch import nn

from inputiba import FeatureStats
from inputiba.datasets import FASHION_MNIST_MEAN, FASHION_MNIST_STD, fashion_mnist
from inputiba.models import (FASHION_CNN_LAYER, bundled_samples, FashionCNN, load_fashion_cnn, load_state,
                             pretrained_path)


def _normalized(images: torch.Tensor) -> torch.Tensor:
    """Raw ``(B, 1, 28, 28)`` uint8 pixels as the model's training inputs."""
    return (images.float() / 255 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD


def test_output_shape():
    model = FashionCNN().eval()
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)


def test_bottleneck_layer_is_a_conv_with_64x14x14_output():
    model = FashionCNN().eval()
    layer = dict(model.named_modules())[FASHION_CNN_LAYER]
    assert isinstance(layer, nn.Conv2d)
    seen = {}
    handle = layer.register_forward_hook(lambda m, args, out: seen.update(shape=out.shape))
    try:
        model(torch.randn(2, 1, 28, 28))
    finally:
        handle.remove()
    assert seen["shape"] == (2, 64, 14, 14)


def test_load_state_round_trip(tmp_path):
    torch.manual_seed(0)
    original = FashionCNN().eval()
    path = tmp_path / "cnn.pt"
    torch.save(original.state_dict(), path)
    loaded = load_state(FashionCNN(), path).eval()
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(loaded(x), original(x), rtol=0, atol=0)


def test_load_state_rejects_a_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.pt"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match="corrupt.pt"):
        load_state(FashionCNN(), path)


def test_load_state_rejects_what_is_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(ValueError, match="not a state dict"):
        load_state(FashionCNN(), path)


def test_load_state_names_keys_of_another_architecture(tmp_path):
    path = tmp_path / "linear.pt"
    torch.save(nn.Linear(3, 4).state_dict(), path)
    with pytest.raises(ValueError, match=r"features\.0\.weight") as info:
        load_state(FashionCNN(), path)
    assert "unexpected keys weight, bias" in str(info.value)


def test_load_state_names_a_shape_mismatch(tmp_path):
    path = tmp_path / "five_classes.pt"
    torch.save(FashionCNN(num_classes=5).state_dict(), path)
    with pytest.raises(ValueError, match=r"classifier\.3\.weight \(5, 128\) != \(10, 128\)"):
        load_state(FashionCNN(), path)


def test_load_state_passes_file_not_found_through(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_state(FashionCNN(), tmp_path / "absent.pt")


def test_pretrained_path_explains_a_missing_file():
    with pytest.raises(FileNotFoundError, match="train_fashion_mnist.py"):
        pretrained_path("no_such_file.pt")


def test_shipped_model_classifies_the_shipped_samples():
    model = load_fashion_cnn()
    assert not model.training
    images, x, labels = bundled_samples()
    assert images.dtype == torch.uint8 and images.shape == (16, 1, 28, 28)
    assert labels.dtype == torch.long and labels.shape == (16,)
    torch.testing.assert_close(x, _normalized(images))
    with torch.no_grad():
        predicted = model(x).argmax(1)
    assert int((predicted == labels).sum()) >= 14


def test_shipped_stats_fit_the_bottleneck_layer():
    stats = FeatureStats.load(pretrained_path("fashion_mnist_cnn_stats.pt"))
    assert stats.shape == (64, 14, 14)
    assert stats.n_samples == 1000 and not stats.relu


def _write_idx_gz(path, data: np.ndarray) -> None:
    """Write ``data`` (uint8) as a gzipped IDX file: magic, big-endian dims, bytes."""
    header = struct.pack(">HBB", 0, 0x08, data.ndim) + struct.pack(f">{data.ndim}I", *data.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + data.tobytes())


def _fake_source(folder, n: int = 3):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split in ("train", "t10k"):
        _write_idx_gz(folder / f"{split}-images-idx3-ubyte.gz",
                      rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        _write_idx_gz(folder / f"{split}-labels-idx1-ubyte.gz", np.arange(n, dtype=np.uint8))
    return folder


def test_fashion_mnist_unpacks_from_the_source(tmp_path):
    source = _fake_source(tmp_path / "source")
    root = tmp_path / "data"
    data = fashion_mnist(root, train=False, source=source)
    assert len(data) == 3
    image, label = data[2]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32 and label == 2
    raw = sorted(p.name for p in (root / "FashionMNIST" / "raw").iterdir())
    assert raw == ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
                   "train-images-idx3-ubyte", "train-labels-idx1-ubyte"]
    # Once unpacked, the source is no longer needed.
    raw_image, _ = fashion_mnist(root, train=True, normalize=False, source=tmp_path / "gone")[0]
    assert 0 <= raw_image.min() and raw_image.max() <= 1


def test_fashion_mnist_without_files_says_how_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist(tmp_path / "data", source=tmp_path / "nothing")


def test_build_and_load_models_by_name(tmp_path, monkeypatch):
    from inputiba.models import build_model, hub_weights_path, load_model

    with pytest.raises(ValueError, match="unknown architecture 'resnet05'.*resnet50"):
        build_model("resnet05")
    model = build_model("resnet18", num_classes=3)
    # checkpoints saved by training scripts: nested and DataParallel-prefixed
    nested = {"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 3}
    torch.save(nested, tmp_path / "ckpt.pth")
    loaded = load_model("resnet18", tmp_path / "ckpt.pth", num_classes=3)
    assert not loaded.training
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model.eval()(x))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(FileNotFoundError, match="not in the torch hub cache.*resnet18"):
        hub_weights_path("resnet18")
    with pytest.raises(ValueError, match=r"only for arch in \['cluttered_convnext', 'cluttered_vgg', 'cluttered_vit', 'fashion_cnn'\]"):
        load_model("resnet18", "bundled")
    assert load_model("fashion_cnn", "bundled")(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_weights_found_in_the_torch_hub_cache_load_without_download(tmp_path, monkeypatch):
    import torchvision

    from inputiba.models import hub_weights_path, load_model

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url = torchvision.models.get_model_weights("resnet18").DEFAULT.url
    cached = tmp_path / "hub" / "checkpoints" / url.rsplit("/", 1)[-1]
    cached.parent.mkdir(parents=True)
    reference = torchvision.models.resnet18(weights=None).eval()
    torch.save(reference.state_dict(), cached)
    assert hub_weights_path("resnet18") == cached
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(load_model("resnet18", "hub")(x), reference(x))
