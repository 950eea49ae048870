import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TwoClassLinear
from inputiba.cli import main
from inputiba.harness import (HarnessConfig, MethodSpec, evaluation_from_dict, load_evaluation, run_harness)
from inputiba.methods import AttributionMethod, Gradient, Random, register

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def boxed_data(tiny_cnn):
    """Six 3x16x16 images labelled with the model's prediction; boxes of every kind."""
    g = torch.Generator().manual_seed(3)
    images = torch.randn(6, 3, 16, 16, generator=g)
    with torch.no_grad():
        labels = tiny_cnn(images).argmax(1).tolist()
    boxes = [[(0, 0, 6, 6)],                       # usable: 36 of 256 pixels
             [(0, 0, 16, 16)],                     # the whole image: not usable
             None,                                 # no boxes at all
             [(2, 2, 6, 8), (10, 10, 14, 14)],     # two boxes: usable
             [],                                   # an empty list of boxes
             torch.tensor([4, 4, 12, 12])]          # one box as a (4,) tensor: usable, 64 pixels
    return [(x, y) if b is None else (x, y, b) for x, y, b in zip(images, labels, boxes)]


def small_metrics(**extra):
    return {"deletion": {"n_steps": 8}, "insertion": {"n_steps": 8, "blur_sigma": 2.0},
            "degradation": {"tiles": [4, 8], "n_steps": 8},
            "sensitivity_n": {"n_subsets": 8, "ns": [1, 8, 64]}, **extra}


@pytest.fixture
def counted(monkeypatch):
    """Record the inputs of every attribute call of the random and gradient methods."""
    calls = {"random": [], "gradient": []}

    def wrap(cls, key):
        original = cls.attribute

        def attribute(self, inputs, target=None):
            calls[key].append(inputs.clone())
            return original(self, inputs, target)

        monkeypatch.setattr(cls, "attribute", attribute)

    wrap(Random, "random")
    wrap(Gradient, "gradient")
    return calls


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_end_to_end_table_files_figures_and_a_rerun_that_computes_nothing(tiny_cnn, boxed_data, tmp_path,
                                                                         counted):
    config = HarnessConfig(out_dir=tmp_path, batch_size=4, metric_batch_size=64, metrics=small_metrics(
        bbox={}, ehr={}, sanity={"layers": ["head.2", "features.2"], "n_samples": 4}))
    methods = [MethodSpec("random"), MethodSpec("gradient")]
    result = run_harness(tiny_cnn, boxed_data, methods, config, progress=False)

    keys = ["deletion", "insertion", "degradation_4", "degradation_8", "sensitivity_n", "bbox", "ehr", "sanity"]
    assert [c.key for c in result.columns] == keys
    assert list(result.table) == ["random", "gradient"]
    assert result.computed == {"random": 6, "gradient": 6}
    for row in result.table.values():
        assert all(math.isfinite(row[k].mean) and math.isfinite(row[k].se) for k in keys)
        assert [row[k].n for k in keys] == [6, 6, 6, 6, 6, 3, 3, 4]  # boxes: samples 0, 3 and 5 only
        assert 0 <= row["deletion"].mean <= 1 and 0 <= row["bbox"].mean <= 1
    # the random map ignores the model, so randomising the model leaves it as it was
    assert result.table["random"]["sanity"].mean == pytest.approx(1.0)
    assert result.table["gradient"]["sanity"].mean < 0.9

    rows = read_csv(tmp_path / "results.csv")
    assert [r["method"] for r in rows] == ["random", "gradient"]
    assert float(rows[1]["insertion_mean"]) == result.table["gradient"]["insertion"].mean
    assert rows[0]["bbox_n"] == "3"
    markdown = (tmp_path / "results.md").read_text()
    assert "Deletion AUC ↓" in markdown and "Insertion AUC ↑" in markdown and "| gradient |" in markdown
    for name in ("insertion_deletion", "degradation", "sensitivity_n", "sanity"):
        assert result.files[name] == tmp_path / "figures" / f"{name}.png"
        assert result.files[name].stat().st_size > 5000
    sample = json.loads((tmp_path / "samples" / "gradient" / "1.json").read_text())
    assert sample["scores"]["bbox"] is None and sample["label"] == boxed_data[1][1]

    table = (tmp_path / "results.csv").read_text()
    for calls in counted.values():
        calls.clear()
    again = run_harness(tiny_cnn, boxed_data, methods, config, progress=False)
    assert again.computed == {"random": 0, "gradient": 0}
    assert counted == {"random": [], "gradient": []}  # the sanity check is not rerun either
    assert again.table == result.table and (tmp_path / "results.csv").read_text() == table


@register("test_harness_linear_contribution")
class LinearContribution(AttributionMethod):
    """The exact contribution of each pixel to the target's log-odds, on :class:`TwoClassLinear`."""

    unit = "log-odds contribution"

    def _attribute(self, x, targets):
        sign = torch.where(targets == 1, 1.0, -1.0).view(-1, 1, 1)
        return (x * self.model.weight).sum(1) * sign


def test_the_exact_contribution_beats_random_in_the_table(tmp_path):
    g = torch.Generator().manual_seed(0)
    model = TwoClassLinear(torch.randn(1, 1, 8, 8, generator=g) * 0.5).eval()
    images = torch.randn(8, 1, 8, 8, generator=g)
    with torch.no_grad():
        labels = model(images).argmax(1).tolist()
    config = HarnessConfig(out_dir=tmp_path, batch_size=8, metrics={"deletion": {"n_steps": 16},
                                                                   "insertion": {"n_steps": 16}})
    result = run_harness(model, list(zip(images, labels)),
                         [MethodSpec("random"), MethodSpec("test_harness_linear_contribution", label="exact")],
                         config, progress=False)
    exact, random = result.table["exact"], result.table["random"]
    assert exact["deletion"].mean < random["deletion"].mean - 0.1
    assert exact["insertion"].mean > random["insertion"].mean + 0.1


def test_an_interrupted_run_resumes_and_gives_the_uninterrupted_table(tiny_cnn, boxed_data, tmp_path, counted,
                                                                      monkeypatch):
    methods = [MethodSpec("random"), MethodSpec("gradient")]

    def config(out):
        return HarnessConfig(out_dir=tmp_path / out, batch_size=2, seed=5, metrics={
            "deletion": {"n_steps": 8}, "insertion": {"n_steps": 8}, "sensitivity_n": {"n_subsets": 8, "ns": [1, 8]}})

    reference = run_harness(tiny_cnn, boxed_data, methods, config("reference"), progress=False)
    expected = (tmp_path / "reference" / "results.csv").read_text()

    # interrupt the gradient method at its second batch
    counting = Gradient.attribute

    def fails_second(self, inputs, target=None):
        if len(counted["gradient"]) == 4:  # reference run: 3 batches; this run: 1 done
            raise KeyboardInterrupt
        return counting(self, inputs, target)

    monkeypatch.setattr(Gradient, "attribute", fails_second)
    with pytest.raises(KeyboardInterrupt):
        run_harness(tiny_cnn, boxed_data, methods, config("run"), progress=False)
    out = tmp_path / "run"
    assert not (out / "results.csv").exists()
    assert sorted(p.name for p in (out / "samples" / "gradient").glob("[0-9]*.json")) == ["0.json", "1.json"]

    monkeypatch.setattr(Gradient, "attribute", counting)
    for calls in counted.values():
        calls.clear()
    resumed = run_harness(tiny_cnn, boxed_data, methods, config("run"), progress=False)
    assert resumed.computed == {"random": 0, "gradient": 4}
    assert counted["random"] == [] and len(counted["gradient"]) == 2
    assert (out / "results.csv").read_text() == expected
    assert resumed.table == reference.table

    # lose the table and one sample: only that sample's batch (samples 2 and 3) is recomputed
    kept = out / "samples" / "gradient" / "2.json"
    stamp = kept.stat().st_mtime_ns
    for name in ("results.csv", "results.md", "samples/gradient/3.json"):
        (out / name).unlink()
    counted["gradient"].clear()
    again = run_harness(tiny_cnn, boxed_data, methods, config("run"), progress=False)
    assert again.computed == {"random": 0, "gradient": 2}
    assert counted["random"] == [] and len(counted["gradient"]) == 1
    assert torch.equal(counted["gradient"][0], torch.stack([boxed_data[2][0], boxed_data[3][0]]))
    assert (out / "samples" / "gradient" / "3.json").is_file() and kept.stat().st_mtime_ns == stamp
    assert (out / "results.csv").read_text() == expected


def test_results_of_other_settings_are_refused(tiny_cnn, boxed_data, tmp_path):
    run_harness(tiny_cnn, boxed_data[:2], [MethodSpec("random")],
                HarnessConfig(out_dir=tmp_path, metrics={"deletion": {"n_steps": 4}}), progress=False)
    with pytest.raises(ValueError, match="other settings.*metrics"):
        run_harness(tiny_cnn, boxed_data[:2], [MethodSpec("random")],
                    HarnessConfig(out_dir=tmp_path, metrics={"deletion": {"n_steps": 5}}), progress=False)


def evaluation_dict(out_dir):
    return {
        "model": {"arch": "fashion_cnn", "weights": "bundled"},
        "data": {"kind": "bundled", "n_samples": 3},
        "run": {"out_dir": str(out_dir), "batch_size": 3, "seed": 1, "progress": False},
        "methods": [{"name": "random"}, {"name": "gradient", "label": "grad"}],
        "metrics": {"deletion": {"n_steps": 4}, "insertion": {"n_steps": 4},
                    "degradation": {"tiles": [14], "n_steps": 4},
                    "sensitivity_n": {"n_subsets": 4, "ns": [1, 10], "tile": 4},
                    "sanity": {"layers": ["classifier.3"], "n_samples": 2}},
    }


def toml_text(out_dir):
    return f"""
[model]
arch = "fashion_cnn"
weights = "bundled"

[data]
kind = "bundled"
n_samples = 3

[run]
out_dir = "{out_dir.as_posix()}"
batch_size = 3
seed = 1
progress = false

[[methods]]
name = "random"

[[methods]]
name = "gradient"
label = "grad"

[metrics.deletion]
n_steps = 4
[metrics.insertion]
n_steps = 4
[metrics.degradation]
tiles = [14]
n_steps = 4
[metrics.sensitivity_n]
n_subsets = 4
ns = [1, 10]
tile = 4
[metrics.sanity]
layers = ["classifier.3"]
n_samples = 2
"""


def test_the_toml_and_json_forms_read_the_same(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(toml_text(tmp_path / "out"))
    from_toml = load_evaluation(path)
    from_dict = evaluation_from_dict(evaluation_dict(tmp_path / "out"))
    assert from_toml == from_dict
    assert [m.row for m in from_toml.methods] == ["random", "grad"]
    assert from_toml.harness.metrics["degradation"].tiles == (14,)


def test_cli_evaluate_writes_the_table_and_figures(tmp_path, capsys):
    out = tmp_path / "out"
    path = tmp_path / "config.toml"
    path.write_text(toml_text(out))
    assert main(["evaluate", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "| grad |" in printed and str(out / "results.md") in printed
    rows = read_csv(out / "results.csv")
    assert [r["method"] for r in rows] == ["random", "grad"]
    assert all(r["deletion_n"] == "3" and r["sanity_n"] == "2" for r in rows)
    for name in ("insertion_deletion", "degradation", "sensitivity_n", "sanity"):
        assert (out / "figures" / f"{name}.png").is_file()


@pytest.mark.parametrize("change, named", [
    (lambda d: d.update(modle={}), "modle"),
    (lambda d: d["run"].update(batchsize=2), "batchsize"),
    (lambda d: d["data"].update(roots="x"), "roots"),
    (lambda d: d["metrics"]["deletion"].update(steps=3), "steps"),
    (lambda d: d["metrics"].update(delition={}), "delition"),
    (lambda d: d["methods"][0].update(setings={}), "setings"),
    (lambda d: d["model"].update(weight="x"), "weight"),
])
def test_unknown_keys_are_named(tmp_path, change, named):
    data = evaluation_dict(tmp_path)
    change(data)
    with pytest.raises(ValueError, match=named):
        evaluation_from_dict(data)


def test_cli_reports_an_unknown_key_and_a_bad_method_setting(tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text(toml_text(tmp_path / "out").replace("seed = 1", "sead = 1"))
    assert main(["evaluate", str(path)]) == 2
    assert "sead" in capsys.readouterr().err
    data = evaluation_dict(tmp_path / "out")
    data["methods"][1]["settings"] = {"windw": 3}
    path = tmp_path / "c.json"
    path.write_text(json.dumps(data))
    assert main(["evaluate", str(path)]) == 2
    assert "windw" in capsys.readouterr().err


def test_the_shipped_example_config_reads():
    config = load_evaluation(REPO / "configs" / "evaluate_fashion_mnist.toml")
    assert [m.name for m in config.methods] == ["random", "gradient", "grad_cam", "occlusion", "iba"]
    assert config.data["kind"] == "bundled" and config.harness.metrics["sanity"].layers


def test_an_inputiba_config_is_read_from_a_preset_name_or_a_table(tiny_cnn):
    published = MethodSpec("inputiba", {"layer": "features.2", "config": "published"}).build(tiny_cnn)
    assert published.inputiba.config.gan.epochs == 20 and published.inputiba.config.mask_start == "bits_per_pixel"
    default = MethodSpec("inputiba", {"layer": "features.2", "config": "default"}).build(tiny_cnn)
    assert default.inputiba.config.gan is None and default.inputiba.config.mask_start == "bits"
    table = {"layer": "features.2", "config": {"gan": {"epochs": 1}, "input": {"steps": 3}}}
    built = MethodSpec("inputiba", table, label="inputiba_short").build(tiny_cnn)
    assert (built.inputiba.config.gan.epochs, built.inputiba.config.input.steps) == (1, 3)
    no_gan = {"config": {"schedule": "published", "gan": False, "mask_start": "lambda"}}
    built = MethodSpec("inputiba", {"layer": "features.2", **no_gan}).build(tiny_cnn)
    assert (built.inputiba.config.gan, built.inputiba.config.input.steps, built.inputiba.config.mask_start) == \
        (None, 60, "lambda")
    with pytest.raises(ValueError, match="'quick'"):
        MethodSpec("inputiba", {"config": "quick"}).build(tiny_cnn)
    with pytest.raises(ValueError, match="label"):
        MethodSpec("random", label="../escape")


def test_prepare_data_can_be_read_twice():
    """A histogram prior reads its data twice (range, then counts): the harness's batches allow it."""
    from inputiba.harness import _Batches

    data = [(torch.full((1, 4, 4), float(i)), i % 2) for i in range(5)]
    batches = _Batches(data, 5, 2, torch.device("cpu"))
    first = [x.clone() for x, _ in batches]
    second = [x for x, _ in batches]
    assert len(first) == 3 and all(torch.equal(a, b) for a, b in zip(first, second))


class _Flaky:
    """A dataset whose sample ``bad`` cannot be read (until ``bad`` is None)."""

    def __init__(self, samples, bad):
        self.samples, self.bad, self.reads = samples, bad, []

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        self.reads.append(i)
        if i == self.bad:
            raise ValueError(f"sample {i} is corrupt")
        return self.samples[i]


def test_a_failing_sample_is_recorded_left_out_and_retried_on_request(tiny_cnn, boxed_data, tmp_path):
    data = _Flaky(boxed_data[:5], bad=2)
    config = HarnessConfig(out_dir=str(tmp_path), batch_size=4, metrics={"deletion": {"n_steps": 8}})
    with pytest.warns(UserWarning, match="sample 2 failed"):
        result = run_harness(tiny_cnn, data, [MethodSpec("random")], config, progress=False)
    assert result.failed == {"random": [2]}
    scores = result.scores["random"]["deletion"]
    assert np.isnan(scores[2]) and np.isfinite(np.delete(scores, 2)).all()
    assert result.table["random"]["deletion"].n == 4
    record = json.loads((tmp_path / "failures.jsonl").read_text())
    assert record["key"] == "random/2" and "corrupt" in record["error"]
    # a resume does not touch it again; --retry-failed does, and it now works
    data.reads.clear()
    assert run_harness(tiny_cnn, data, [MethodSpec("random")], config, progress=False).failed == {"random": [2]}
    assert 2 not in data.reads
    data.bad = None
    config.retry_failed = True
    again = run_harness(tiny_cnn, data, [MethodSpec("random")], config, progress=False)
    assert again.failed == {} and np.isfinite(again.scores["random"]["deletion"]).all()
    assert (tmp_path / "failures.jsonl").read_text() == ""


def test_a_method_that_fails_everywhere_stops_the_run(tiny_cnn, boxed_data, tmp_path):
    @register("test_always_fails")
    class AlwaysFails(AttributionMethod):
        def _attribute(self, x, targets):
            raise RuntimeError("broken method")

    config = HarnessConfig(out_dir=str(tmp_path), batch_size=2, metrics={"deletion": {"n_steps": 8}})
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match="broken method"):
        run_harness(tiny_cnn, boxed_data[:4], [MethodSpec("test_always_fails")], config, progress=False)
