import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import model_fingerprint
from inputiba.readout import ReadoutBottleneck, ReadoutConfig, ReadoutResult, readout_loss

ROOT = Path(__file__).resolve().parent.parent


pytestmark = pytest.mark.usefixtures("one_thread")


class ChannelModel(nn.Module):
    """1x8x8 -> 3 classes; the classifier reads only channel 0 of ``conv`` (4 channels)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(16, 3)
        with torch.no_grad():
            self.fc.weight.mul_(20.0)

    def forward(self, x):
        return self.fc(self.pool(self.conv(x))[:, 0].flatten(1))


def _data(model, n_batches=6, size=16, seed=1):
    """Random images labelled with the model's own decisions."""
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(size, 1, 8, 8, generator=g) for _ in range(n_batches)]
    with torch.no_grad():
        return [(x, model(x).argmax(1)) for x in xs]


def _readout(**overrides):
    torch.manual_seed(0)
    model = ChannelModel().eval()
    data = _data(model)
    rb = ReadoutBottleneck(model, "conv", ["conv", "pool", "fc"], sigma=0.0, **overrides)
    rb.estimate(data, n_samples=96)
    return model, data, rb


def test_attribution_shape_units_and_one_pass():
    model, data, rb = _readout()
    x = data[0][0][:5]
    res = rb.attribute(x, target=[0, 1, 2, 0, 1], return_result=True)
    assert isinstance(res, ReadoutResult)
    assert res.saliency.shape == (5, 8, 8) and res.saliency.dtype == torch.float32
    assert torch.isfinite(res.saliency).all() and (res.saliency >= 0).all()
    assert res.capacity.shape == res.lam.shape == res.alpha.shape == (5, 4, 8, 8)
    assert res.targets.tolist() == [0, 1, 2, 0, 1]
    assert res.alpha.abs().max() <= 5.0 and (res.lam > 0.99).all()  # untrained: almost open
    bits = res.capacity.sum((1, 2, 3)) / torch.log(torch.tensor(2.0))
    torch.testing.assert_close(res.saliency.sum((1, 2)), bits)
    assert rb.attribute(x).shape == (5, 8, 8)
    assert rb.attribute(x, target=None, return_result=True).targets.tolist() == model(x).argmax(1).tolist()


def test_training_learns_the_channel_the_model_reads_and_leaves_the_model_alone():
    model, data, rb = _readout(beta=3.0)
    model.train()
    before = model_fingerprint(model)
    history = rb.fit(data, epochs=12, lr=1e-2)
    after = model_fingerprint(model)
    assert all(p.grad is None for p in model.parameters())
    assert any(p.grad is not None for p in rb.net.parameters())
    assert before["training"] == after["training"] and before["requires_grad"] == after["requires_grad"]
    assert before["hooks"] == after["hooks"]
    assert all(torch.equal(before["state"][k], after["state"][k]) for k in before["state"])
    assert len(history) == 12 and history[-1] < 0.5 * history[0]
    res = rb.attribute(data[0][0], target=data[0][1], return_result=True)
    per_channel = res.capacity.mean((0, 2, 3))
    assert per_channel[0] > 100 * per_channel[1:].max()
    lam = res.lam.mean((0, 2, 3))
    assert lam[0] > 0.3 and (lam[1:] < 0.05).all()


def test_the_map_follows_the_target_only_when_the_target_is_an_input():
    x = torch.randn(2, 1, 8, 8)
    _, data, rb = _readout()
    rb.fit(data, epochs=1, lr=1e-2)
    assert not torch.equal(rb.attribute(x, target=0), rb.attribute(x, target=1))
    _, data, paper = _readout(target_input=False, train_target="predicted")
    paper.fit(data, epochs=1, lr=1e-2)
    torch.testing.assert_close(paper.attribute(x, target=0), paper.attribute(x, target=1), rtol=0, atol=0)


def test_loss_takes_one_target_per_row_not_the_notebook_matrix():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0], [1.0, 1.0, 4.0]])
    targets = torch.tensor([2, 0, 1])
    info = torch.tensor([0.5, 1.0, 0.0])
    loss = readout_loss(logits, targets, info, beta=10.0)
    expected = -F.log_softmax(logits, 1)[torch.arange(3), targets] + 10.0 * info
    torch.testing.assert_close(loss, expected)
    buggy = -F.log_softmax(logits, 1)[:, targets]  # the notebook's B x B indexing
    assert buggy.shape == (3, 3) and not torch.allclose(buggy.mean(1), expected - 10.0 * info)
    with pytest.raises(ValueError, match="one target per row"):
        readout_loss(logits, targets[:2], info, beta=1.0)


def test_fit_is_deterministic_and_resumes_from_its_checkpoint(tmp_path):
    _, data, straight = _readout()
    history = straight.fit(data, epochs=2, lr=1e-2)
    _, data, first = _readout()
    ckpt = tmp_path / "readout.pt"
    assert len(first.fit(data, epochs=1, lr=1e-2, checkpoint=ckpt, log_dir=tmp_path / "tb")) == 1
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())
    model, data, resumed = _readout()
    assert resumed.fit(data, epochs=2, lr=1e-2, checkpoint=ckpt) == history
    for a, b in zip(straight.net.state_dict().values(), resumed.net.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert torch.load(ckpt, weights_only=True)["training"]["epoch"] == 2
    loaded = ReadoutBottleneck.load(model, ckpt)
    x = data[1][0]
    torch.testing.assert_close(loaded.attribute(x), straight.attribute(x), rtol=0, atol=0)
    saved = tmp_path / "final.pt"
    straight.save(saved)
    assert "training" not in torch.load(saved, weights_only=True)
    torch.testing.assert_close(ReadoutBottleneck.load(model, saved).attribute(x), straight.attribute(x))
    with pytest.raises(ValueError, match="no training state"):
        ReadoutBottleneck.load(model, saved).fit(data, epochs=3, checkpoint=saved)


def test_errors_name_the_problem(tmp_path):
    model = ChannelModel()
    with pytest.raises(ValueError, match="no layer named 'conv2'"):
        ReadoutBottleneck(model, "conv", ["conv2"])
    with pytest.raises(ValueError, match="train_target"):
        ReadoutConfig(train_target="truth")
    with pytest.raises(TypeError, match="unknown readout settings"):
        ReadoutBottleneck(model, "conv", ["conv"], betta=1.0)
    rb = ReadoutBottleneck(model, "conv", ["conv"])
    with pytest.raises(RuntimeError, match="estimate"):
        rb.attribute(torch.randn(1, 1, 8, 8))
    with pytest.raises(RuntimeError, match="estimate"):
        rb.fit([torch.randn(2, 1, 8, 8)], epochs=1)
    rb.estimate([torch.randn(8, 1, 8, 8)])
    with pytest.raises(ValueError, match="needs \\(inputs, labels\\) batches"):
        rb.fit([torch.randn(2, 1, 8, 8)], epochs=1)
    x = torch.randn(1, 1, 8, 8)
    x[..., 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        rb.attribute(x)
    with pytest.raises(ValueError, match=r"the readout bottleneck explains float image batches .*\(1, 8, 8\)"):
        rb.attribute(torch.randn(1, 8, 8))
    with pytest.raises(ValueError, match="batch size 0"):
        rb.attribute(torch.randn(0, 1, 8, 8))
    with pytest.raises(ValueError, match="rejected inputs of shape \\(1, 1, 10, 10\\)"):
        rb.attribute(torch.randn(1, 1, 10, 10))
    bad = tmp_path / "bad.pt"
    torch.save({"x": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="not a readout-bottleneck file"):
        ReadoutBottleneck.load(model, bad)


# ---------------------------------------------------------------------- the training script
def _fashion_root(tmp_path_factory) -> Path:
    from inputiba.datasets import DEBIAN_FASHION_MNIST

    local = ROOT / "data"
    if (local / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        return local
    if not Path(DEBIAN_FASHION_MNIST, "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("FashionMNIST is not installed (apt-get install dataset-fashion-mnist)")
    return tmp_path_factory.mktemp("data")


def test_train_readout_script_on_a_tiny_subset_then_resume(tmp_path, tmp_path_factory, capsys):
    spec = importlib.util.spec_from_file_location("train_readout", ROOT / "vision" / "train_readout.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    root = _fashion_root(tmp_path_factory)
    out = tmp_path / "readout.pt"
    args = ["--root", str(root), "--limit", "64", "--batch-size", "32", "--estimate-samples", "64",
            "--out", str(out), "--log-dir", str(tmp_path / "tb"), "--device", "cpu", "--lr", "1e-3"]
    assert script.main(args + ["--epochs", "1"]) == 0
    assert torch.load(out, weights_only=True)["training"]["epoch"] == 1
    with pytest.raises(Exception, match="exists: pass --resume"):
        script.main(args + ["--epochs", "2"])  # exists, and no --resume (a one-line error from the command)
    assert script.main(args + ["--epochs", "2", "--resume"]) == 0
    assert "epoch 2/2" in capsys.readouterr().out
    from inputiba.models import bundled_samples, load_fashion_cnn

    rb = ReadoutBottleneck.load(load_fashion_cnn(), out)
    heat = rb.attribute(bundled_samples()[1][:4])
    assert heat.shape == (4, 28, 28) and torch.isfinite(heat).all()
