import math

import pytest
import torch
import torchvision

from conftest import LeftHalfModel, TinyCNN, model_fingerprint
from inputiba.gan import GANConfig
from inputiba.seeding import input_seed
from inputiba.pipeline import InputIBA, InputIBAConfig, InputIBAResult, schedule


def _short(critic="clip", **gan):
    """The published stages with a short GAN schedule, for speed."""
    cfg = InputIBAConfig(gan=GANConfig(n_samples=32, epochs=3, batch_size=16, critic=critic, **gan))
    cfg.input.steps = 20
    return cfg


@pytest.fixture
def left_half():
    torch.manual_seed(0)
    model = LeftHalfModel().eval()
    data = [torch.randn(20, 1, 16, 16) for _ in range(5)]
    return model, data


def test_published_and_default_schedules():
    cfg = InputIBAConfig.published()
    assert (cfg.feature.beta, cfg.feature.sigma, cfg.feature.steps, cfg.feature.lr) == (20.0, 0.0, 10, 1.0)
    g = cfg.gan
    assert (g.n_samples, g.epochs, g.batch_size, g.critic_steps, g.critic) == (200, 20, 32, 5, "clip")
    assert (g.lr_mask, g.lr_mean, g.lr_std) == (0.003, 0.1, 0.05)
    i = cfg.input
    assert (i.beta, i.steps, i.lr, i.n_copies, i.sigma) == (20.0, 60, 1.0, 10, 1.0)
    assert cfg.mask_start == "bits_per_pixel"
    text = InputIBAConfig.published(text=True)
    assert (text.feature.beta, text.gan.lr_mask, text.input.beta, text.input.steps, text.input.lr) == \
        (15.0, 0.03, 30.0, 30, 0.5)
    default = InputIBAConfig()
    assert default.feature == cfg.feature and default.gan is None and default.mask_start == "bits"
    assert (default.input.beta, default.input.steps, default.input.n_copies, default.input.sigma) == (20.0, 20, 10, 1.0)
    assert schedule("default") == default and schedule("published", text=True) == text
    with pytest.raises(ValueError, match="mask_start"):
        InputIBAConfig(mask_start="alpha")
    with pytest.raises(ValueError, match="unknown InputIBA schedule 'fast'"):
        schedule("fast")


@pytest.mark.parametrize("critic", ["clip", "gp"])
def test_mask_concentrates_where_the_model_reads(left_half, critic):
    model, data = left_half
    att = InputIBA(model, "conv", _short(critic))
    att.estimate(data)
    res = att.attribute(torch.randn(4, 1, 16, 16), seed=0, return_stages=True)
    assert isinstance(res, InputIBAResult)
    assert res.mask.shape == (4, 16, 16) and res.feature_map.shape == (4, 16, 16)
    assert res.gan_mask.shape == (4, 1, 16, 16)
    assert res.mask.min() >= 0 and res.mask.max() <= 1
    left = res.mask[..., :8].sum((1, 2)) / res.mask.sum((1, 2))
    assert left.mean() > 0.8 and left.min() > 0.6  # 0.5: no preference


def test_rgb_end_to_end_deterministic_and_model_left_as_found(image_loader):
    torch.manual_seed(0)
    model = TinyCNN()
    model.train()
    before = model_fingerprint(model)
    att = InputIBA(model, "features.2", _short("gp", critic_width=8))
    att.estimate(image_loader, n_samples=20)
    x = torch.randn(2, 3, 16, 16)
    a = att.attribute(x, target=[1, 2], seed=5)
    assert a.shape == (2, 16, 16) and torch.isfinite(a).all()
    torch.testing.assert_close(att.attribute(x, target=[1, 2], seed=5), a, rtol=0, atol=0)
    after = model_fingerprint(model)
    assert after["training"] == before["training"] and after["requires_grad"] == before["requires_grad"]
    assert all(g is None for g in after["grads"]) and sum(after["hooks"]) == 0
    for k, v in before["state"].items():
        torch.testing.assert_close(after["state"][k], v, rtol=0, atol=0)


def _corr(a, b):
    return torch.stack([torch.corrcoef(torch.stack([u.flatten(), v.flatten()]))[0, 1] for u, v in zip(a, b)])


@pytest.mark.parametrize("critic", ["clip", None])
def test_an_inputs_masks_do_not_depend_on_its_batch(left_half, critic):
    # per-input seeds: the batch, its size and the input's position change nothing but float rounding
    model, data = left_half
    cfg = _short(critic) if critic else _short()
    if critic is None:
        cfg.gan = None
    att = InputIBA(model, "conv", cfg)
    att.estimate(data)
    x = torch.randn(3, 1, 16, 16)
    batched = att.attribute(x, seed=0, return_stages=True)
    single = [att.attribute(x[i:i + 1], seed=[input_seed(0, i)], return_stages=True) for i in range(3)]
    reordered = att.attribute(x.flip(0), seed=[input_seed(0, i) for i in (2, 1, 0)], return_stages=True)
    for name in ("mask", "gan_mask", "feature_map"):
        one = torch.cat([getattr(r, name) for r in single])
        torch.testing.assert_close(getattr(batched, name), one, rtol=0, atol=1e-5)
        torch.testing.assert_close(getattr(reordered, name).flip(0), one, rtol=0, atol=1e-5)
    att.config.max_batch = 2
    torch.testing.assert_close(att.attribute(x, seed=0), batched.mask, rtol=0, atol=1e-5)
    # and the seed does matter
    assert (att.attribute(x, seed=1) - batched.mask).abs().max() > 0.05


def test_chunks_and_tensorboard_logging(left_half, tmp_path):
    model, data = left_half
    cfg = _short()
    cfg.max_batch = 2
    att = InputIBA(model, "conv", cfg)
    att.estimate(data)
    res = att.attribute(torch.randn(3, 1, 16, 16), seed=0, return_stages=True, log_dir=tmp_path)
    assert res.mask.shape == (3, 16, 16) and res.targets.shape == (3,)
    assert res.gan.critic_losses.shape[1] == 3 and res.input.losses.shape == (20, 3)
    assert set(res.seconds) == {"feature", "gan", "input"} and all(v > 0 for v in res.seconds.values())
    events = [p for p in tmp_path.iterdir() if p.name.startswith("events.out.tfevents")]
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = EventAccumulator(str(tmp_path), size_guidance={"images": 0}).Reload()
    images = log.Tags()["images"]
    for k in (0, 1):  # two batches of max_batch 2
        assert {f"batch{k}/feature/map_scaled", f"batch{k}/prior/lambda_G", f"batch{k}/input/mask"} <= set(images)
        assert f"batch{k}/input/loss" in log.Tags()["scalars"]


def test_presets_by_architecture():
    resnet = torchvision.models.resnet18(weights=None).eval()
    att = InputIBA(resnet)
    assert att.layer_name == "layer2" and att.feature_iba.config.relu
    with pytest.raises(ValueError, match="no preset layer for TinyCNN"):
        InputIBA(TinyCNN())

    class VGGLike(TinyCNN):
        def __init__(self):
            super().__init__()
            self.features = torch.nn.Sequential(*[torch.nn.Identity() for _ in range(18)])

    assert InputIBA(VGGLike()).layer_name == "features.17"


def test_errors(left_half):
    model, data = left_half
    att = InputIBA(model, "conv", _short())
    with pytest.raises(RuntimeError, match="call estimate"):
        att.attribute(torch.randn(1, 1, 16, 16))
    att.estimate(data)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        att.attribute(torch.randn(16, 16))
    with pytest.raises(ValueError, match="NaN"):
        att.attribute(torch.full((1, 1, 16, 16), float("nan")))
    with pytest.raises(ValueError, match="out of range"):
        att.attribute(torch.randn(1, 1, 16, 16), target=5)


def test_input_stage_on_another_model_is_the_sanity_variant(image_loader):
    """The early stages on the intact model, the input stage on a randomised copy."""
    import copy

    from inputiba.evaluation import sanity_check

    torch.manual_seed(0)
    model = TinyCNN().eval()
    cfg = InputIBAConfig()
    cfg.input.steps = 5
    att = InputIBA(model, "features.2", cfg)
    att.estimate(image_loader, n_samples=40)
    x = torch.randn(2, 3, 16, 16)
    same = att.attribute(x, target=1, seed=0, input_model=copy.deepcopy(model))
    assert torch.allclose(same, att.attribute(x, target=1, seed=0), atol=1e-6)
    before = model_fingerprint(model)
    result = sanity_check(model, lambda m, inp, t: att.attribute(inp, t, seed=0, input_model=m), x,
                          torch.tensor([1, 1]), ["head.2", "features.2"])
    assert result.ssim.shape == (2, 2) and (result.ssim < 0.999).any()
    after = model_fingerprint(model)
    assert before["training"] == after["training"] and before["hooks"] == after["hooks"]


def test_default_prior_is_the_documented_function_of_the_feature_capacity(left_half):
    model, data = left_half
    cfg = InputIBAConfig()
    cfg.input.steps = 5
    att = InputIBA(model, "conv", cfg)
    att.estimate(data)
    res = att.attribute(torch.randn(2, 1, 16, 16), seed=0, return_stages=True)
    assert res.gan is None and res.gan_mask.shape == (2, 1, 16, 16)
    # bits per feature cell (the capacity summed over channels, / ln 2), at input resolution, as logits;
    # conv keeps the 16 x 16 resolution, so no resizing here
    bits = res.feature.capacity.sum(1, keepdim=True) / math.log(2)
    torch.testing.assert_close(res.gan_mask, torch.sigmoid(bits))
    # the head reads only the left half: the right half's features pass nothing (prior 0.5, the
    # start of no information), the left half's pass bits where the decision needs them
    assert res.gan_mask[..., 9:].max() < 0.52 and (res.gan_mask[..., :7].amax((1, 2, 3)) > 0.8).all()


def test_default_schedule_concentrates_where_the_model_reads(left_half):
    model, data = left_half
    att = InputIBA(model, "conv", InputIBAConfig())
    att.estimate(data)
    res = att.attribute(torch.randn(4, 1, 16, 16), seed=0, return_stages=True)
    # the prior rises above its floor (0.5: no information) only on the left
    prior = res.gan_mask[:, 0] - res.gan_mask.amin((1, 2, 3)).view(-1, 1, 1)
    left = prior[..., :8].sum((1, 2)) / prior.sum((1, 2))
    assert left.min() > 0.9
    # the final mask follows it (half the mass would be no preference; over seeds the
    # least concentrated of these four inputs keeps 0.69 .. 0.91 on the left)
    left = res.mask[..., :8].sum((1, 2)) / res.mask.sum((1, 2))
    assert left.mean() > 0.85 and left.min() > 0.6


def test_masks_are_stable_across_seeds(left_half):
    from inputiba.evaluation import spearman

    model, data = left_half
    att = InputIBA(model, "conv", InputIBAConfig())
    att.estimate(data)
    x = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    a, b = att.attribute(x, seed=0), att.attribute(x, seed=1)
    assert not torch.equal(a, b)
    assert spearman(a, b).min() > 0.8
