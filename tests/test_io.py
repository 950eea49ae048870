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


def test_shards_cover_every_item_exactly_once():
    from inputiba.io import shard

    items = list(range(11))
    parts = [shard(items, r, 3) for r in range(3)]
    assert sorted(sum(parts, [])) == items
    assert parts[1] == [1, 4, 7, 10]
    with pytest.raises(ValueError, match="not in a world"):
        shard(items, 3, 3)


def test_save_npz_round_trip(tmp_path):
    from inputiba.io import save_npz

    save_npz(tmp_path / "r.npz", mask=torch.ones(2, 2), target=torch.tensor(3))
    data = np.load(tmp_path / "r.npz")
    assert data["mask"].shape == (2, 2) and int(data["target"]) == 3


def test_load_weights_only_names_the_file_and_refuses_code(tmp_path):
    import fractions

    import pytest
    import torch

    from inputiba.io import load_weights_only

    good = tmp_path / "good.pt"
    torch.save({"format": "x/1", "w": torch.ones(2)}, good)
    assert torch.equal(load_weights_only(good, "a thing", "a thing", "x/1")["w"], torch.ones(2))
    with pytest.raises(ValueError, match="is not a y file \\(format y/1\\)"):
        load_weights_only(good, "a thing", "a y", "y/1")
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="cannot read a thing from .*junk.pt"):
        load_weights_only(tmp_path / "junk.pt", "a thing")
    # an arbitrary Python object is not loaded (weights_only): it could run code
    torch.save(fractions.Fraction(1, 3), tmp_path / "code.pt")
    with pytest.raises(ValueError, match="cannot read"):
        load_weights_only(tmp_path / "code.pt", "a thing")
    with pytest.raises(FileNotFoundError):
        load_weights_only(tmp_path / "missing.pt", "a thing")
