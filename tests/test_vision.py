import importlib.util
import json
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


@pytest.fixture
def messy(tmp_path):
    """Three good PNGs, a truncated PNG and a text file named like an image."""
    folder = tmp_path / "messy"
    folder.mkdir()
    images = bundled_samples()[0]
    for i in range(3):
        Image.fromarray(images[i, 0].numpy()).save(folder / f"good{i}.png")
    data = (folder / "good0.png").read_bytes()
    (folder / "trunc.png").write_bytes(data[: len(data) // 2])
    (folder / "text.png").write_text("not an image")
    return folder


def test_bad_files_are_skipped_recorded_and_retried_on_request(messy, tmp_path, capsys):
    script = _script()
    out = tmp_path / "out"
    args = _fashion_args(messy, out, "--method", "iba")
    assert script.main(args) == 1
    err = capsys.readouterr().err
    assert "failed text.png" in err and "failed trunc.png" in err
    assert sorted(p.name for p in out.rglob("*.npz")) == ["good0.npz", "good1.npz", "good2.npz"]
    records = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert sorted(r["key"] for r in records) == ["text.png", "trunc.png"]
    # a resume skips them (and says so); --retry-failed tries again and clears what now works
    assert script.main(args) == 1
    assert "2 failed before" in capsys.readouterr().out
    images = bundled_samples()[0]
    Image.fromarray(images[5, 0].numpy()).save(messy / "trunc.png")
    (messy / "text.png").unlink()
    Image.fromarray(images[6, 0].numpy()).save(messy / "text.png")
    assert script.main(args + ["--retry-failed"]) == 0
    assert (out / "failures.jsonl").read_text() == ""
    assert len(list(out.rglob("*.npz"))) == 5


@pytest.mark.parametrize("extra, message", [
    (["--layer", "features.99"], "has no layer named 'features.99'"),
    (["--weights", "JUNK"], "not a PyTorch checkpoint"),
    (["--arch", "nonet"], "unknown architecture 'nonet'"),
    (["--out", "FILE/sub"], "cannot write to the output folder"),
])
def test_user_mistakes_are_one_line_errors(tree, tmp_path, extra, message):
    (tmp_path / "junk.pt").write_text("junk")
    (tmp_path / "file").write_text("a file, not a folder")
    extra = [e.replace("JUNK", str(tmp_path / "junk.pt")).replace("FILE", str(tmp_path / "file")) for e in extra]
    args = [sys.executable, str(SCRIPT), *_fashion_args(tree, tmp_path / "out", "--method", "iba")]
    for flag, value in zip(extra[::2], extra[1::2]):
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("attribute.py: error:")
    debug = subprocess.run(args + ["--debug"], capture_output=True, text=True, timeout=120)
    assert "Traceback" in debug.stderr


def test_killed_runs_resume_without_loss_or_change(tree, tmp_path):
    # fault injection: SIGKILL at random points, resume each time, compare with an uninterrupted run
    import random
    import signal
    import time

    config = _short_config(tmp_path)
    stats = tmp_path / "stats.pt"
    base = [sys.executable, str(SCRIPT)]

    def args(out, batch):
        a = _fashion_args(tree, out, "--config", str(config), "--stats", str(stats))
        a[a.index("--batch-size") + 1] = str(batch)
        return base + a

    reference = subprocess.run(args(tmp_path / "ref", 4), capture_output=True, text=True, timeout=300)
    assert reference.returncode == 0, reference.stderr
    rng = random.Random(0)
    out = tmp_path / "killed"
    kills = 0
    for _ in range(8):
        proc = subprocess.Popen(args(out, 1), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        # wait until this run has written something (or a random moment), then kill it
        deadline = time.time() + 60
        before = len(list(out.rglob("*.npz")))
        wait_for = rng.randint(0, 1)
        while time.time() < deadline and proc.poll() is None:
            if len(list(out.rglob("*.npz"))) > before + wait_for:
                time.sleep(rng.uniform(0, 0.3))
                break
            time.sleep(0.05)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        if proc.returncode == 0:
            break
    assert kills >= 2
    final = subprocess.run(args(out, 1), capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    expected = sorted(p.relative_to(tmp_path / "ref") for p in (tmp_path / "ref").rglob("*.npz"))
    assert sorted(p.relative_to(out) for p in out.rglob("*.npz") if not p.name.startswith(".")) == expected
    for rel in expected:
        a, b = np.load(tmp_path / "ref" / rel), np.load(out / rel)
        for key in ("feature_map", "gan_mask", "mask", "target"):
            np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-5, err_msg=f"{rel} {key}")
        assert (out / rel).with_suffix(".png").stat().st_size > 1000


def test_report_flag_writes_the_runs_page_with_its_settings(tree, tmp_path):
    script = _script()
    assert script.main(_fashion_args(tree, tmp_path, "--method", "iba", "--report")) == 0
    page = (tmp_path / "report.html").read_text()
    assert page.count("<figure>") == 6 and 'src="a/img0.png"' in page 
    assert len(re.findall(r"— target \d+, p = [01]\.\d{3}<", page)) == 6
    settings = json.loads((tmp_path / "run.json").read_text())
    assert settings["arch"] == "fashion_cnn" and settings["method"] == "iba"
    assert "the run" in page and "&quot;arch&quot;: &quot;fashion_cnn&quot;" in page


def test_precision_flag_reaches_the_bottlenecks():
    script = _script()
    for method in ("iba", "inputiba"):
        args = script.parse_args(["in", "--arch", "fashion_cnn", "--method", method, "--precision", "bfloat16"])
        attributor = script.make_attributor(args, script.load_model("fashion_cnn", "bundled", None))
        config = attributor.config if method == "iba" else attributor.config.feature
        assert config.precision == "bfloat16"
        if method == "inputiba":
            assert attributor.config.input.precision == "bfloat16"
