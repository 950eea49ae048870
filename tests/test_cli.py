import subprocess
import sys

import numpy as np

from inputiba.cli import main


def test_demo_writes_float_maps_and_figures(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--indices", "0", "3"]) == 0
    printed = capsys.readouterr().out
    for index in (0, 3):
        npy = tmp_path / f"sample{index:02d}_iba.npy"
        heat = np.load(npy)
        assert heat.shape == (28, 28) and heat.dtype == np.float32
        assert np.isfinite(heat).all() and (heat >= 0).all() and heat.sum() > 0
        assert (tmp_path / f"sample{index:02d}_iba.png").stat().st_size > 1000
        assert str(npy) in printed


def test_demo_reports_a_bad_index(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--indices", "99"]) == 2
    assert "out of range" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_python_dash_m_runs_the_cli():
    done = subprocess.run([sys.executable, "-m", "inputiba", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "demo" in done.stdout
