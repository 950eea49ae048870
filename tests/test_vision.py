import importlib.util
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inputiba.models import bundled_samples

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "vision" / "attribute.py"
SHORT_CONFIG = """
[gan]
n_samples = 16
epochs = 2
batch_size = 8
[input]
steps = 5
"""


def _script():
    spec = importlib.util.spec_from_file_location("vision_attribute", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """An ImageFolder tree of 6 bundled FashionMNIST test images in 2 class folders."""
    root = tmp_path_factory.mktemp("tree")
    images = bundled_samples()[0]
    for i in range(6):
        folder = root / ("a" if i < 3 else "b")
        folder.mkdir(exist_ok=True)
        Image.fromarray(images[i, 0].numpy()).save(folder / f"img{i}.png")
    return root


def _fashion_args(tree, out, *extra):
    return [str(tree), "--arch", "fashion_cnn", "--weights", "bundled", "--preprocess", "fashion-mnist",
            "--out", str(out), "--device", "cpu", "--batch-size", "4", *extra]


def test_iba_on_an_image_folder_tree_then_resume(tree, tmp_path, capsys):
    script = _script()
    assert script.main(_fashion_args(tree, tmp_path, "--method", "iba", "--target", "folder")) == 0
    files = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.npz"))
    assert [str(f) for f in files] == [f"{c}/img{i}.npz" for c, i in
                                        [("a", 0), ("a", 1), ("a", 2), ("b", 3), ("b", 4), ("b", 5)]]
    data = np.load(tmp_path / "b" / "img4.npz")
    assert data["feature_map"].shape == (28, 28) and data["feature_map"].dtype == np.float32
    assert int(data["target"]) == 1  # class folder "b"
    assert (tmp_path / "a" / "img0.png").stat().st_size > 1000
    stamp = (tmp_path / "a" / "img0.npz").stat().st_mtime_ns
    capsys.readouterr()
    (tmp_path / "b" / "img5.png").unlink()  # as if interrupted between the two files
    assert script.main(_fashion_args(tree, tmp_path, "--method", "iba", "--target", "folder")) == 0
    printed = capsys.readouterr().out
    assert "5 already done" in printed and printed.count("wrote") == 1 and "wrote b/img5.png" in printed
    assert (tmp_path / "a" / "img0.npz").stat().st_mtime_ns == stamp


def test_inputiba_with_a_config_file_on_one_image(tree, tmp_path):
    config = tmp_path / "short.toml"
    config.write_text(SHORT_CONFIG)
    out = tmp_path / "out"
    assert _script().main(_fashion_args(tree / "a" / "img1.png", out, "--config", str(config),
                                        "--estimate-from", str(tree))) == 0
    data = np.load(out / "img1.npz")
    assert data["mask"].shape == data["gan_mask"].shape == data["feature_map"].shape == (28, 28)
    assert 0 <= data["mask"].min() and data["mask"].max() <= 1
    assert (out / "feature_stats.pt").is_file()


def test_errors(tree, tmp_path):
    script = _script()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no images"):
        script.main(_fashion_args(empty, tmp_path / "o"))
    with pytest.raises(ValueError, match="unknown architecture 'vgg61'.*vgg16"):
        script.main([str(tree), "--arch", "vgg61", "--out", str(tmp_path / "o")])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_shards_every_file_exactly_once(tree, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(SCRIPT),
           *_fashion_args(tree, tmp_path, "--method", "iba")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    wrote = re.findall(r"rank (\d): wrote (\S+)", done.stdout)
    names = [name for _, name in wrote]
    assert sorted(names) == sorted(f"{c}/img{i}.png" for c, i in
                                   [("a", 0), ("a", 1), ("a", 2), ("b", 3), ("b", 4), ("b", 5)])
    assert {rank for rank, _ in wrote} == {"0", "1"}
    assert len(list(tmp_path.rglob("*.npz"))) == 6


def test_maps_do_not_depend_on_batch_size_or_resume(tree, tmp_path):
    # per-image seeds keyed by the file's relative path: batch 1, batch 4 and a resumed run agree
    script = _script()
    args = ("--config", str(_short_config(tmp_path)), "--stats", str(tmp_path / "stats.pt"))
    assert script.main(_fashion_args(tree, tmp_path / "b4", *args)) == 0
    one = _fashion_args(tree, tmp_path / "b1", *args)
    one[one.index("--batch-size") + 1] = "1"
    assert script.main(one) == 0
    (tmp_path / "b4" / "a" / "img1.npz").unlink()  # as if the run had been killed before this image
    (tmp_path / "b4" / "b" / "img5.npz").unlink()
    assert script.main(_fashion_args(tree, tmp_path / "b4", *args)) == 0
    for f in sorted((tmp_path / "b1").rglob("*.npz")):
        a, b = np.load(f), np.load(tmp_path / "b4" / f.relative_to(tmp_path / "b1"))
        for key in ("feature_map", "gan_mask", "mask"):
            np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-5, err_msg=f"{f.name} {key}")


def _short_config(tmp_path):
    path = tmp_path / "short.toml"
    path.write_text("gan = false\n[input]\nsteps = 5\n")
    return path
