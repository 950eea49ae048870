"""Per-input seeds: an input's maps depend on the input, its target, the settings and the seed only."""
import pytest
import torch
from conftest import TinyCNN
from inputiba import IBA, InputIBA, InputIBAConfig, input_seed
from inputiba.evaluation import sensitivity_n
from inputiba.gan import BatchedCritic
from inputiba.harness import HarnessConfig, MethodSpec, run_harness
from inputiba.models import TEXT_INPUT_LAYER, load_text_classifier, pretrained_path
from inputiba.multi import MultiIBA
from inputiba.seeding import InputStreams, input_seeds
from inputiba.text import encode_batch


def test_input_seed_is_a_fixed_function_of_seed_and_key():
    # pinned: a change here changes every published map
    assert input_seed(0, 0) == 7814622100648562678
    assert input_seed(0, "cat/1.png") == 602526883318815560
    assert input_seed(0, 1) != input_seed(0, 0) != input_seed(1, 0)
    assert input_seeds(0, 3) == [input_seed(0, i) for i in range(3)]
    assert input_seeds([5, 6], 2) == [5, 6]
    with pytest.raises(ValueError, match="2 seeds for 3 inputs"):
        input_seeds([1, 2], 3)
    with pytest.raises(TypeError):
        input_seeds("0", 1)
    torch.manual_seed(0)
    drawn = input_seeds(None, 2)
    torch.manual_seed(0)
    assert input_seeds(None, 2) == drawn  # None follows the global generator


def test_streams_are_per_input_normal_and_prefix_stable():
    a = InputStreams([1, 2], "cpu").randn(3, 10, 4, first=1)
    b = InputStreams([2], "cpu").randn(3, 6, 4, first=1)
    assert a.shape == (2, 3, 10, 4)
    assert torch.equal(a[1:, :, :6], b)  # the other input and the longer sequence change nothing
    z = InputStreams([7], "cpu").randn(200_000)
    assert abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1) < 0.01
    assert not torch.equal(InputStreams([1], "cpu", "a").rand(5), InputStreams([1], "cpu", "b").rand(5))


def test_seeded_critics_depend_on_their_own_seed_only():
    state = torch.random.get_rng_state()
    two = BatchedCritic.seeded([3, 4], 4, "gp", 8).state_dict()
    one = BatchedCritic.seeded([4], 4, "gp", 8).state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)
    for name, value in one.items():
        if value.dim() > 0:
            assert torch.equal(two[name][value.shape[0]:], value), name


@pytest.fixture(scope="module")
def cnn_and_data():
    torch.manual_seed(0)
    return TinyCNN().eval(), [torch.randn(16, 3, 16, 16) for _ in range(3)]


def test_iba_and_multi_iba_maps_do_not_depend_on_the_batch(cnn_and_data):
    model, data = cnn_and_data
    x = torch.randn(4, 3, 16, 16)
    for make in (lambda: IBA(model, "features.2"), lambda: MultiIBA(model, ["features.0", "features.2"])):
        att = make()
        att.estimate(data)
        batched = att.attribute(x, seed=0)
        single = torch.cat([att.attribute(x[i:i + 1], seed=[input_seed(0, i)]) for i in range(4)])
        torch.testing.assert_close(batched, single, rtol=0, atol=1e-5)
        att.config.max_batch = 3
        torch.testing.assert_close(att.attribute(x, seed=0), batched, rtol=0, atol=1e-5)
        rounding = (batched - single).abs().max()
        assert (att.attribute(x, seed=1) - batched).abs().max() > max(100 * rounding, 1e-6)  # the seed matters


def test_a_texts_scores_do_not_depend_on_the_padding_of_its_batch():
    checkpoint = load_text_classifier(None)
    model = checkpoint.model
    long, _ = encode_batch(["dull , lifeless and far too long",
                            "a moving film that never once loses its nerve or its heart"], checkpoint.vocab, None)
    alone, _ = encode_batch(["dull , lifeless and far too long"], checkpoint.vocab, None)
    n = alone.shape[1]
    assert long.shape[1] > n
    cfg = InputIBAConfig.text()
    cfg.input.steps = 10
    att = InputIBA(model, model.feature_layer, cfg, input_layer=TEXT_INPUT_LAYER)
    att.load_stats(pretrained_path("rotten_tomatoes_lstm_stats.pt"))
    a = att.attribute(long, seed=0, return_stages=True)
    b = att.attribute(alone, seed=[input_seed(0, 0)], return_stages=True)
    torch.testing.assert_close(a.mask[0, :n], b.mask[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(a.feature_map[0, :n], b.feature_map[0], rtol=0, atol=1e-6)
    assert (a.mask[0, n:] == 0).all() and a.gan_mask.shape == (2, long.shape[1], a.gan_mask.shape[2])


def test_sensitivity_n_subsets_are_per_input(cnn_and_data):
    model, _ = cnn_and_data
    x = torch.randn(3, 3, 16, 16)
    attr = torch.rand(3, 16, 16)
    target = torch.tensor([0, 1, 2])
    seeds = input_seeds(0, 3)
    full = sensitivity_n(model, x, attr, target, ns=[4, 32], n_subsets=6, tile=2, seed=seeds, batch_size=5)
    last = sensitivity_n(model, x[2:], attr[2:], target[2:], ns=[4, 32], n_subsets=6, tile=2, seed=seeds[2:])
    torch.testing.assert_close(full.correlation[2:], last.correlation, rtol=0, atol=1e-5)


def test_harness_maps_and_scores_do_not_depend_on_the_batch_size(cnn_and_data, tmp_path):
    model, data = cnn_and_data
    images = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        labels = model(images).argmax(1).tolist()
    dataset = list(zip(images, labels))
    methods = [MethodSpec("random"), MethodSpec("iba", {"layer": "features.2", "steps": 4})]
    metrics = {"deletion": {"n_steps": 8}, "sensitivity_n": {"n_subsets": 6, "ns": [4, 32]}}
    tables = []
    for size in (1, 4):
        config = HarnessConfig(out_dir=str(tmp_path / f"b{size}"), batch_size=size, prepare_samples=5,
                               metrics=metrics)
        tables.append(run_harness(model, dataset, methods, config, progress=False))
    for row in ("random", "iba"):
        for key, value in tables[0].scores[row].items():
            other = tables[1].scores[row][key]
            assert value.shape == other.shape == (5,)
            assert torch.allclose(torch.as_tensor(value), torch.as_tensor(other), atol=1e-4, equal_nan=True), key
