import pytest

from inputiba.config import config_from_dict, load_config


def test_toml_and_json_override_the_published_defaults(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('max_batch = 4\n[gan]\nepochs = 3\ncritic = "gp"\n[input]\nsteps = 7\n')
    cfg = load_config(toml)
    assert (cfg.max_batch, cfg.gan.epochs, cfg.gan.critic, cfg.input.steps) == (4, 3, "gp", 7)
    assert cfg.gan.n_samples == 200 and cfg.input.beta == 20.0 and cfg.feature.beta == 20.0
    js = tmp_path / "c.json"
    js.write_text('{"feature": {"beta": 5}}')
    assert load_config(js).feature.beta == 5


def test_bad_configurations_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"unknown settings \['epoch'\] in \[gan\]"):
        config_from_dict({"gan": {"epoch": 3}})
    with pytest.raises(ValueError, match="unknown sections"):
        config_from_dict({"gann": {}})
    with pytest.raises(ValueError, match="critic must be"):
        config_from_dict({"gan": {"critic": "huge"}})
    bad = tmp_path / "c.yaml"
    bad.write_text("gan: {}")
    with pytest.raises(ValueError, match=".toml or .json"):
        load_config(bad)


def test_precision_applies_to_both_bottleneck_stages():
    cfg = config_from_dict({"precision": "bfloat16", "feature": {"beta": 5}})
    assert (cfg.feature.precision, cfg.input.precision, cfg.feature.beta) == ("bfloat16", "bfloat16", 5)
    assert config_from_dict({}).feature.precision == "float32"
    with pytest.raises(ValueError, match="precision must be one of"):
        config_from_dict({"precision": "half"})
