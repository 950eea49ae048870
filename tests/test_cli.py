import subprocess
import sys

import numpy as np

from inputiba.cli import main


def test_demo_writes_every_stage_and_a_figure(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--indices", "0", "3"]) == 0
    printed = capsys.readouterr().out
    for index in (0, 3):
        npz = tmp_path / f"canvas{index:02d}.npz"
        with np.load(npz) as maps:
            bits, gan, mask = maps["feature_map"], maps["gan_mask"], maps["mask"]
            assert bits.shape == gan.shape == mask.shape == (64, 64)
            assert np.isfinite(bits).all() and (bits >= 0).all() and bits.sum() > 0
            assert (mask >= 0).all() and (mask <= 1).all() and (gan >= 0).all() and (gan <= 1).all()
            assert maps["box"].shape == (4,)
        assert (tmp_path / f"canvas{index:02d}.png").stat().st_size > 1000
        assert str(npz) in printed


def test_demo_reports_a_bad_index(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--indices", "99"]) == 2
    assert "out of range" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_python_dash_m_runs_the_cli():
    done = subprocess.run([sys.executable, "-m", "inputiba", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "demo" in done.stdout and "evaluate" in done.stdout
