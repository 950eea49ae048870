"""inputiba explainers as Captum Attribution objects, checked with Captum's own metrics and plots."""
import pytest
import torch

captum = pytest.importorskip("captum")
from captum.attr import Attribution  # noqa: E402
from captum.attr import visualization as viz  # noqa: E402
from captum.metrics import infidelity, sensitivity_max  # noqa: E402
from conftest import TinyCNN  # noqa: E402
from inputiba import IBA, InputIBA, InputIBAConfig  # noqa: E402
from inputiba.captum import CaptumAttribution  # noqa: E402
from inputiba.methods import get_method  # noqa: E402


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = TinyCNN().eval()
    data = [torch.randn(16, 3, 16, 16) for _ in range(2)]
    x = torch.randn(3, 3, 16, 16)
    return model, data, x, torch.tensor([0, 1, 2])


def test_iba_spreads_its_bits_over_the_channels(setup):
    model, data, x, y = setup
    iba = IBA(model, "features.2")
    iba.estimate(data)
    explainer = CaptumAttribution(iba, seed=0)
    assert isinstance(explainer, Attribution) and explainer.forward_func is model
    attr = explainer.attribute(x, target=y)
    assert attr.shape == x.shape and not explainer.has_convergence_delta()
    torch.testing.assert_close(attr.sum(1), iba.attribute(x, y, seed=0))  # the bits per pixel are kept
    (as_tuple,) = explainer.attribute((x,), target=y)
    torch.testing.assert_close(as_tuple, attr)
    # Captum's metrics take it as they take their own methods
    sens = sensitivity_max(explainer.attribute, x, target=y, n_perturb_samples=2, perturb_radius=0.05)
    assert sens.shape == (3,) and torch.isfinite(sens).all()

    def perturb(inputs):
        noise = torch.randn_like(inputs) * 0.1
        return noise, inputs - noise

    infid = infidelity(model, perturb, x, attr, target=y, n_perturb_samples=4)
    assert infid.shape == (3,) and torch.isfinite(infid).all()
    fig, _ = viz.visualize_image_attr(attr[0].permute(1, 2, 0).numpy(), x[0].permute(1, 2, 0).numpy(),
                                      method="blended_heat_map", sign="positive", use_pyplot=False)
    assert fig is not None


def test_inputiba_repeats_its_mask_and_methods_work_too(setup):
    model, data, x, y = setup
    cfg = InputIBAConfig()
    cfg.input.steps = 3
    att = InputIBA(model, "features.2", cfg)
    att.estimate(data)
    attr = CaptumAttribution(att, seed=0).attribute(x, target=y)
    mask = att.attribute(x, y, seed=0)
    assert torch.equal(attr[:, 0], attr[:, 2]) and torch.allclose(attr[:, 1], mask)
    grad = CaptumAttribution(get_method("gradient", model)).attribute(x, target=1)
    assert grad.shape == x.shape and (grad >= 0).all()


def test_refusals_name_the_problem(setup):
    model, data, x, y = setup
    with pytest.raises(TypeError, match="inputiba explainer"):
        CaptumAttribution(object())
    iba = IBA(model, "features.2")
    iba.estimate(data)
    explainer = CaptumAttribution(iba)
    with pytest.raises(ValueError, match="one input tensor"):
        explainer.attribute((x, x))
    with pytest.raises(TypeError, match="unsupported arguments"):
        explainer.attribute(x, baselines=0)
    with pytest.raises(ValueError, match="channels"):
        CaptumAttribution(iba, channels="mean")
