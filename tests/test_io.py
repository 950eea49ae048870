import numpy as np
import pytest
import torch

from inputiba.io import atomic_path, save_npy


def test_atomic_path_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "result.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.txt"]


def test_save_npy_round_trip(tmp_path):
    t = torch.rand(3, 4)
    save_npy(tmp_path / "a" / "m.npy", t)
    np.testing.assert_array_equal(np.load(tmp_path / "a" / "m.npy"), t.numpy())
