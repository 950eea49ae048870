"""Vision transformers and ConvNeXt from timm: the token grid, presets, maps, loading and the script."""
from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

timm = pytest.importorskip("timm")

from inputiba import IBA, InputIBA, InputIBAConfig  # noqa: E402
from inputiba.adapters import TokenGrid  # noqa: E402
from inputiba.models import build_model, cluttered_vit, load_state  # noqa: E402
from inputiba.pipeline import preset_for  # noqa: E402

from conftest import assert_left_as_found, model_fingerprint  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("one_thread")


class _Patches(nn.Module):
    """What TokenGrid reads of a timm patch embedding: the grid size."""

    def __init__(self, size: int, patch: int, dim: int):
        super().__init__()
        self.grid_size = (size // patch, size // patch)
        self.proj = nn.Conv2d(1, dim, patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class LeftPatchesViT(nn.Module):
    """Tokens [CLS] + 4 x 4 patches; the head reads only the patches of the left half (and not [CLS])."""

    def __init__(self, dim: int = 8, n_classes: int = 3):
        super().__init__()
        self.patch_embed = _Patches(16, 4, dim)
        self.num_prefix_tokens = 1
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.block = nn.Linear(dim, dim)
        self.fc = nn.Linear(dim * 8, n_classes)
        with torch.no_grad():
            self.fc.weight.mul_(20.0)

    def forward(self, x):
        t = self.patch_embed(x)
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1)
        t = self.block(t)
        grid = t[:, 1:].reshape(t.shape[0], 4, 4, -1)
        return self.fc(grid[:, :, :2].flatten(1))


def tiny_vit(**overrides):
    torch.manual_seed(0)
    return cluttered_vit(img_size=32, embed_dim=16, depth=4, num_heads=2, num_classes=3, **overrides).eval()


def test_token_grid_views_patches_as_a_map_and_back():
    grid = TokenGrid(prefix=1, grid=(2, 3))
    x = torch.arange(2 * 7 * 4, dtype=torch.float).view(2, 7, 4)
    m = grid.to_map(x)
    assert m.shape == (2, 4, 2, 3)
    assert torch.equal(m[:, :, 0, 1], x[:, 2])  # row-major: patch (0, 1) is token 1 + 1
    assert torch.equal(grid.from_map(x[:, :1], m), x)
    assert grid.prefix_of(7) == 1 and grid.prefix_of(6) == 0 and grid.prefix_of(5) is None
    lam = torch.rand(2, 7, 4)
    smooth = grid.smooth(lam, 1.0)
    assert torch.equal(smooth[:, 0], lam[:, 0])  # the class token is not blurred into the patches
    assert not torch.allclose(smooth[:, 1:], lam[:, 1:])
    cap = torch.zeros(2, 7, 4)
    cap[:, 0] = torch.log(torch.tensor(2.0))
    torch.testing.assert_close(grid.prefix_bits(cap), torch.full((2, 1), 4.0))


def test_timm_vit_and_deit_are_recognised_with_their_presets():
    vit = tiny_vit()
    assert TokenGrid.of(vit) == TokenGrid(1, (4, 4))
    assert preset_for(vit) == {"layer": "blocks.1"}  # L // 2 - 1 of 4 blocks
    deit = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, num_classes=3, depth=2, img_size=32)
    assert TokenGrid.of(deit) == TokenGrid(2, (2, 2)) and preset_for(deit) == {"layer": "blocks.0"}
    assert preset_for(timm.create_model("convnext_atto", pretrained=False)) == {"layer": "stages.1"}
    import torchvision

    with pytest.raises(ValueError, match="no preset layer for ConvNeXt"):  # torchvision's: other layout
        preset_for(torchvision.models.convnext_tiny())


def test_iba_on_a_vit_finds_the_patches_the_head_reads():
    torch.manual_seed(0)
    model = LeftPatchesViT().eval()
    iba = IBA(model, "block", sigma=0.0)
    iba.estimate([torch.randn(40, 1, 16, 16)], n_samples=40)
    assert iba.stats.shape == (17, 8)
    before = model_fingerprint(model)
    res = iba.attribute(torch.randn(6, 1, 16, 16), seed=0, return_result=True)
    assert_left_as_found(model, before)
    assert res.saliency.shape == (6, 16, 16)
    patches = iba.adapter.feature_map(res.capacity).sum(1)  # (B, 4, 4) on the grid, before any resizing
    left = patches[..., :2].sum((1, 2)) / patches.sum((1, 2))
    assert left.mean() > 0.95 and left.min() > 0.85  # a random map: 0.5
    # the head never reads [CLS]: its bits are tiny next to the read patches'
    cls_bits = iba.adapter.grid.prefix_bits(res.capacity)[:, 0]
    assert (cls_bits < 0.05 * res.saliency.sum((1, 2))).all()
    total = res.capacity.sum((1, 2)) / torch.log(torch.tensor(2.0))
    torch.testing.assert_close(res.saliency.sum((1, 2)) + cls_bits, total, rtol=1e-4, atol=1e-4)


def test_inputiba_on_a_timm_vit_with_the_blur_on_the_grid():
    vit = tiny_vit(in_chans=1)
    cfg = InputIBAConfig()
    att = InputIBA(vit, config=replace(cfg, feature=replace(cfg.feature, steps=3), input=replace(cfg.input, steps=3)))
    att.estimate([torch.randn(12, 1, 32, 32)], n_samples=12)
    assert att.feature_iba.layer_name == "blocks.1" and att.feature_iba.adapter.grid.prefix == 1
    res = att.attribute(torch.randn(2, 1, 32, 32), seed=0, return_stages=True)
    assert res.mask.shape == (2, 32, 32) and res.feature_map.shape == (2, 32, 32)
    assert res.feature.capacity.shape == (2, 17, 16)
    assert ((res.mask >= 0) & (res.mask <= 1)).all() and torch.isfinite(res.mask).all()
    blurred = IBA(vit, "blocks.1", stats=att.feature_iba.stats, sigma=1.0, steps=2)
    assert blurred.attribute(torch.randn(1, 1, 32, 32), seed=0).shape == (1, 32, 32)


def test_timm_models_by_name_and_safetensors_weights(tmp_path):
    model = build_model("timm:convnext_atto", num_classes=4)
    assert type(model).__module__.startswith("timm.")
    with pytest.raises(ValueError, match="close names: timm:convnext_atto"):
        build_model("timm:convnext_att")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    other = build_model("timm:convnext_atto", num_classes=4)
    load_state(other, tmp_path / "w.safetensors")
    for k, v in model.state_dict().items():
        assert torch.equal(other.state_dict()[k], v)
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_state(other, tmp_path / "bad.safetensors")


def test_attribute_script_takes_a_timm_architecture(tmp_path):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(2):
        Image.fromarray((torch.rand(32, 32, 3, generator=g) * 255).byte().numpy()).save(images / f"{i}.png")
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, str(ROOT / "vision" / "attribute.py"), str(images), "--arch",
                          "timm:convnext_atto", "--num-classes", "3", "--preprocess", "none", "--method", "iba",
                          "--estimate-samples", "2", "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in out.glob("*.npz")) == ["0.npz", "1.npz"]
    bad = subprocess.run([sys.executable, str(ROOT / "vision" / "attribute.py"), str(images), "--arch",
                          "timm:no_such_net", "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "unknown timm architecture" in bad.stderr


@pytest.mark.parametrize("arch", ["cluttered_vit", "cluttered_convnext"])
def test_bundled_transformer_and_convnext_classify_the_shipped_canvases_as_recorded(arch):
    import json

    from inputiba.cluttered import bundled_canvases
    from inputiba.models import load_model

    model = load_model(arch, "bundled")
    _, x, labels, _ = bundled_canvases()
    with torch.no_grad():
        right = int((model(x).argmax(1) == labels).sum())
    info = json.loads((ROOT / "pretrained" / f"{arch}.json").read_text())
    assert right == info["examples_correct"]
    stats = torch.load(ROOT / "pretrained" / f"{arch}_stats.pt", weights_only=True)
    assert info["layer"] == preset_for(model)["layer"] and isinstance(stats, dict)


def test_the_convnext_benchmark_can_randomise_every_layer_it_names():
    from inputiba.config import read_data_file
    from inputiba.evaluation import _resettable
    from inputiba.models import cluttered_convnext

    model = cluttered_convnext()
    layers = read_data_file(ROOT / "configs" / "benchmark_cluttered_convnext.toml")["metrics"]["sanity"]["layers"]
    found = [m for name in layers for m in _resettable(model.get_submodule(name), name)]
    covered = {id(p) for m in found for p in m.parameters(recurse=False)}
    assert covered == {id(p) for p in model.parameters()}  # the cascade reaches every parameter
