import pytest
import torch

from conftest import LeftHalfModel, ResidualModel, TinyCNN, assert_left_as_found, model_fingerprint
from inputiba import IBA, IBAConfig, IBAResult, LayerNotReached


@pytest.fixture
def iba(tiny_cnn, image_loader):
    iba = IBA(tiny_cnn, "features.2")
    iba.estimate(image_loader, n_samples=40)
    return iba


def _left_half_iba(**overrides):
    torch.manual_seed(0)
    model = LeftHalfModel().eval()
    iba = IBA(model, "conv", **overrides)
    iba.estimate([torch.randn(20, 1, 16, 16) for _ in range(5)], n_samples=100)
    return iba


def test_attribute_shape_units_and_result_fields(iba):
    x = torch.randn(3, 3, 16, 16)
    heat = iba.attribute(x, seed=0)
    assert heat.shape == (3, 16, 16) and heat.dtype == torch.float32
    assert torch.isfinite(heat).all() and (heat >= 0).all()
    res = iba.attribute(x, target=[0, 1, 2], seed=0, return_result=True)
    assert isinstance(res, IBAResult)
    assert res.capacity.shape == res.lam.shape == res.alpha.shape == (3, 6, 16, 16)
    assert res.targets.tolist() == [0, 1, 2]
    assert res.losses.shape == (10, 3)
    assert (res.losses[-1] < res.losses[0]).all()
    bits = res.capacity.sum((1, 2, 3)) / torch.log(torch.tensor(2.0))
    torch.testing.assert_close(res.saliency.sum((1, 2)), bits)
    assert ((res.lam >= 0) & (res.lam <= 1)).all()


def test_default_target_is_the_predicted_class(iba, tiny_cnn):
    x = torch.randn(4, 3, 16, 16)
    res = iba.attribute(x, return_result=True)
    assert res.targets.tolist() == tiny_cnn(x).argmax(1).tolist()


# the blur spreads some bits over the middle line (mean share 0.93-0.96, lowest 0.77-0.92 over 12 seeds)
@pytest.mark.parametrize("sigma,mean_fraction,min_fraction", [(1.0, 0.9, 0.7), (0.0, 0.97, 0.95)])
def test_attribution_concentrates_where_the_model_reads(sigma, mean_fraction, min_fraction):
    iba = _left_half_iba(sigma=sigma)
    heat = iba.attribute(torch.randn(8, 1, 16, 16), seed=0)
    left = heat[..., :8].sum((1, 2)) / heat.sum((1, 2))
    assert left.mean() > mean_fraction and left.min() > min_fraction


def test_lambda_one_leaves_the_output_unchanged():
    iba = _left_half_iba()
    model = iba.model
    x = torch.randn(5, 1, 16, 16)
    expected = model(x)
    with iba.restrict_flow(1.0):
        torch.testing.assert_close(model(x), expected)
    with iba.restrict_flow(0.0):
        assert not torch.allclose(model(x), expected)
    torch.testing.assert_close(model(x), expected)
    assert not iba.layer._forward_hooks


def test_restrict_flow_uses_the_last_masks(iba, tiny_cnn):
    with pytest.raises(RuntimeError, match="previous attribute"):
        with iba.restrict_flow():
            pass
    x = torch.randn(2, 3, 16, 16)
    iba.attribute(x, seed=0)
    with iba.restrict_flow():
        assert tiny_cnn(x).shape == (2, 5)
    with pytest.raises(ValueError, match="for 2 inputs"):
        with iba.restrict_flow():
            tiny_cnn(torch.randn(3, 3, 16, 16))
    assert not iba.layer._forward_hooks


def test_batched_results_match_one_at_a_time(iba):
    x = torch.randn(4, 3, 16, 16)
    batched = iba.attribute(x, seed=0)
    single = torch.cat([iba.attribute(x[i:i + 1], seed=100 + i) for i in range(4)])
    rel = (batched - single).abs().sum((1, 2)) / single.sum((1, 2))
    assert rel.max() < 0.03
    chunked = IBA(iba.model, iba.layer, stats=iba.stats, max_batch=3).attribute(x, seed=0)
    rel = (chunked - single).abs().sum((1, 2)) / single.sum((1, 2))
    assert rel.max() < 0.03


def test_determinism_under_a_seed(iba):
    x = torch.randn(2, 3, 16, 16)
    a = iba.attribute(x, seed=3)
    torch.testing.assert_close(iba.attribute(x, seed=3), a, rtol=0, atol=0)
    assert not torch.equal(iba.attribute(x, seed=4), a)


def test_copies_at_the_layer_give_the_same_result(iba):
    x = torch.randn(3, 3, 16, 16)
    fast = iba.attribute(x, seed=0)
    assert iba._split[1] is not None and iba._split_copies_ok == {False: True}  # only the suffix ran per step
    slow = IBA(iba.model, iba.layer, stats=iba.stats, copies_at_layer=False).attribute(x, seed=0)
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-6)


class _Untraceable(ResidualModel):
    """The skip connection of :class:`ResidualModel` behind control flow on values: fx cannot trace it."""

    def forward(self, x):
        if x.sum() > 1e9:
            x = x * 0
        return super().forward(x)


def test_skip_connection_around_the_layer():
    torch.manual_seed(0)
    model = ResidualModel().eval()
    iba = IBA(model, "inner")
    iba.estimate([torch.randn(10, 3, 8, 8)], n_samples=10)
    x = torch.randn(3, 3, 8, 8)
    heat = iba.attribute(x, seed=0)
    # the cut repeats the skipped value per copy, so the copies are made at the layer
    assert iba._split[1] is not None and iba._split_copies_ok == {False: True}
    ref = IBA(model, "inner", stats=iba.stats, copies_at_layer=False).attribute(x, seed=0)
    torch.testing.assert_close(heat, ref)
    # without a traceable graph a hook cannot copy the skipped value: the copies go back to the input
    untraceable = _Untraceable().eval()
    untraceable.load_state_dict(model.state_dict())
    iba = IBA(untraceable, "inner", stats=iba.stats)
    torch.testing.assert_close(iba.attribute(x, seed=0), ref)
    assert iba._split[1] is None and iba._expand_ok == {False: False}


def test_model_left_as_found_after_success_and_after_an_exception(image_loader):
    torch.manual_seed(0)
    model = TinyCNN()
    model.train()
    model.head.eval()
    model.features[0].bias.requires_grad_(False)
    before = model_fingerprint(model)
    x = torch.randn(2, 3, 16, 16)
    model.eval()
    expected = model(x)
    model.train()
    model.head.eval()

    iba = IBA(model, "features.2")
    iba.estimate(image_loader, n_samples=20)
    assert_left_as_found(model, before)
    iba.attribute(x)
    assert_left_as_found(model, before)

    def failing_loss(out, target):
        raise KeyError("loss failed")

    with pytest.raises(KeyError, match="loss failed"):
        iba.attribute(x, loss_fn=failing_loss)
    assert_left_as_found(model, before)
    with pytest.raises(ValueError):
        iba.attribute(x, target=99)
    assert_left_as_found(model, before)
    model.eval()
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)


def test_custom_loss_closure_for_regression(iba):
    x = torch.randn(2, 3, 16, 16)
    goal = torch.tensor([1.5, -0.5])
    seen = {}

    def loss_fn(out, target):
        seen["rows"], seen["target"] = out.shape[0], target
        return (out[:, 0] - target) ** 2

    res = iba.attribute(x, target=goal, loss_fn=loss_fn, return_result=True)
    assert seen["rows"] == 20 and seen["target"].shape == (20,)
    torch.testing.assert_close(seen["target"][:10], torch.full((10,), 1.5))
    assert res.targets is None and res.saliency.shape == (2, 16, 16)
    with pytest.raises(ValueError, match=r"one loss per noisy row, shape \(20,\)"):
        iba.attribute(x, loss_fn=lambda out, t: out.sum())


def test_overridable_published_defaults(tiny_cnn):
    cfg = IBAConfig()
    assert (cfg.beta, cfg.steps, cfg.lr, cfg.n_copies, cfg.init_alpha, cfg.min_std, cfg.sigma) == \
        (10.0, 10, 1.0, 10, 5.0, 0.01, 1.0)
    iba = IBA(tiny_cnn, "features.2", config=IBAConfig(beta=20), steps=3)
    assert iba.config.beta == 20 and iba.config.steps == 3
    with pytest.raises(TypeError, match="unknown IBA settings"):
        IBA(tiny_cnn, "features.2", betta=3)
    with pytest.raises(ValueError, match="steps"):
        IBAConfig(steps=0)


def test_relu_variant_clamps_and_estimates_zero_mean(tiny_cnn, image_loader):
    iba = IBA(tiny_cnn, "features.3", relu=True)
    stats = iba.estimate(image_loader, n_samples=40)
    assert stats.relu and (stats.mean == 0).all()
    heat = iba.attribute(torch.randn(2, 3, 16, 16), seed=0)
    assert torch.isfinite(heat).all()


def test_stats_save_and_load(iba, tmp_path, tiny_cnn):
    path = tmp_path / "s.pt"
    iba.save_stats(path)
    other = IBA(tiny_cnn, "features.2")
    other.load_stats(path)
    x = torch.randn(1, 3, 16, 16)
    torch.testing.assert_close(other.attribute(x, seed=1), iba.attribute(x, seed=1))


def test_errors_name_the_problem(tiny_cnn, iba, image_loader):
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(ValueError, match="close names: features.2"):
        IBA(tiny_cnn, "features.22")
    with pytest.raises(RuntimeError, match="call estimate"):
        IBA(tiny_cnn, "features.2").attribute(x)
    with pytest.raises(ValueError, match=r"rejected inputs of shape \(2, 1, 16, 16\)"):
        iba.attribute(torch.randn(2, 1, 16, 16))
    with pytest.raises(ValueError, match="NaN"):
        iba.attribute(torch.full((1, 3, 16, 16), float("nan")))
    with pytest.raises(ValueError, match="infinite"):
        iba.attribute(torch.full((1, 3, 16, 16), float("inf")))
    with pytest.raises(ValueError, match="target 7 is out of range for a model with 5 classes"):
        iba.attribute(x, target=7)
    with pytest.raises(ValueError, match="out of range"):
        iba.attribute(x, target=[0, -1])
    with pytest.raises(ValueError, match="got 3 targets for 2 inputs"):
        iba.attribute(x, target=[0, 1, 2])
    with pytest.raises(TypeError, match="integer class indices"):
        iba.attribute(x, target=torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match="no samples"):
        IBA(tiny_cnn, "features.2").estimate([])
    with pytest.raises(ValueError, match="batch size 0"):
        iba.attribute(torch.randn(0, 3, 16, 16))


def test_input_size_other_than_the_estimated_one_is_reported():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 2)).eval()
    iba = IBA(model, "0")
    iba.estimate([torch.randn(8, 3, 16, 16)])
    assert iba.attribute(torch.randn(1, 3, 16, 16)).shape == (1, 16, 16)
    with pytest.raises(ValueError, match=r"shape \(4, 8, 8\).*estimated for \(4, 16, 16\); estimate them"):
        iba.attribute(torch.randn(1, 3, 8, 8))


def test_layer_never_reached_is_reported(image_loader):
    torch.manual_seed(0)
    model = TinyCNN().eval()
    model.spare = torch.nn.Conv2d(3, 3, 1)
    iba = IBA(model, "spare")
    with pytest.raises(LayerNotReached, match="'spare'"):
        iba.estimate(image_loader)


def test_an_in_place_relu_after_the_layer_does_not_alter_the_features(image_loader):
    # torchvision's VGG16 follows features.17 with ReLU(inplace=True)
    def build(inplace):
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(inplace=inplace),
                                   torch.nn.Flatten(), torch.nn.Linear(4 * 16 * 16, 3)).eval()

    x = torch.randn(2, 3, 16, 16)
    heats = []
    for inplace in (False, True):
        iba = IBA(build(inplace), "0")
        iba.estimate(image_loader, n_samples=20)
        res = iba.attribute(x, seed=0, return_result=True)
        heats.append(res.saliency)
    torch.testing.assert_close(heats[1], heats[0])


def test_torchscript_models_are_refused_with_a_reason(tiny_cnn):
    scripted = torch.jit.script(tiny_cnn)
    with pytest.raises(TypeError, match="TorchScript model cannot be hooked"):
        IBA(scripted, "features.2")


def test_shared_mask_and_information_options(iba, tiny_cnn, image_loader):
    """One mask value per position shared by the channels; a bad information term or MultiIBA with
    either option is refused."""
    from inputiba.multi import MultiIBA

    x = torch.randn(2, 3, 16, 16)
    res = IBA(tiny_cnn, "features.2", stats=iba.stats, shared_mask=True).attribute(x, seed=0, return_result=True)
    assert res.alpha.shape == res.lam.shape == (2, 1, 16, 16) and res.capacity.shape == (2, 6, 16, 16)
    assert res.saliency.shape == (2, 16, 16)
    per_position = IBA(tiny_cnn, "features.2", stats=iba.stats, information="per_position")
    assert per_position.attribute(x, seed=0).shape == (2, 16, 16)
    with pytest.raises(ValueError, match="information must be one of"):
        IBAConfig(information="sum")
    with pytest.raises(ValueError, match="shared_mask"):
        MultiIBA(tiny_cnn, ["features.0", "features.2"], shared_mask=True)


def test_attribution_works_inside_a_no_grad_block(tiny_cnn, image_loader):
    # Captum's sensitivity_max calls explanations under torch.no_grad(); the fit needs gradients anyway
    from inputiba import InputIBA, InputIBAConfig

    iba = IBA(tiny_cnn, "features.2")
    iba.estimate(image_loader, n_samples=20)
    x = torch.randn(2, 3, 16, 16)
    expected = iba.attribute(x, target=[0, 1], seed=0)
    with torch.no_grad():
        torch.testing.assert_close(iba.attribute(x, target=[0, 1], seed=0), expected)
        cfg = InputIBAConfig()
        cfg.input.steps = 2
        att = InputIBA(tiny_cnn, "features.2", cfg)
        att.estimate(image_loader, n_samples=20)
        assert att.attribute(x, target=[0, 1], seed=0).shape == (2, 16, 16)
    assert torch.is_grad_enabled()
