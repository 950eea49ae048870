"""The evaluation harness on text: token metrics, evidence, the token baselines, configuration files."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from conftest import assert_left_as_found, model_fingerprint
from inputiba.cli import main as cli_main
from inputiba.evaluation import movable_tokens, token_deletion, token_evidence, token_insertion
from inputiba.harness import (HarnessConfig, MethodSpec, TextSamples, evaluation_from_dict, load_dataset,
                              run_harness)
from inputiba.methods import get_method

CLS, SEP = 1, 2


class BagOfEmbeddings(nn.Module):
    """Logits linear in the embeddings: ``logit_k = sum_t (A e_t + b) . w_k`` over the real tokens.

    Every first-order attribution of token ``t`` is then exactly ``A e_t . w_k``.
    ``hidden`` (``(B, T, D)``) is the feature layer; ids 1 and 2 are special
    tokens (as [CLS] and [SEP]).
    """

    special_token_ids = (CLS, SEP)
    feature_layer = "hidden"

    def __init__(self, vocab: int = 30, dim: int = 6, classes: int = 2) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embedding = nn.Embedding(vocab, dim, padding_idx=0)
        self.hidden = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, classes, bias=False)

    def forward(self, ids):
        h = self.hidden(self.embedding(ids)) * (ids != 0).unsqueeze(-1)
        return self.head(h.sum(dim=1))


def texts(*rows):
    """``(B, T)`` ids, right-padded with 0."""
    T = max(map(len, rows))
    return torch.tensor([list(r) + [0] * (T - len(r)) for r in rows])


@pytest.fixture
def bag():
    return BagOfEmbeddings().eval()


def contribution(model, ids, target):
    """``A e_t . w_target`` per token, the exact share of each token's embedding in the logit."""
    with torch.no_grad():
        mapped = model.embedding(ids) @ model.hidden.weight.T
        return (mapped * model.head.weight[target].unsqueeze(1)).sum(-1)


# ------------------------------------------------------------------ metrics
def test_movable_tokens_leave_out_padding_and_special_tokens_and_name_an_empty_text():
    ids = texts([CLS, 5, 6, SEP], [CLS, 7, SEP])
    assert movable_tokens(ids, 0, (CLS, SEP)).tolist() == [[False, True, True, False], [False, True, False, False]]
    with pytest.raises(ValueError, match="text 1 has no token"):
        movable_tokens(texts([CLS, 5, SEP], [CLS, SEP]), 0, (CLS, SEP))


def test_special_tokens_never_move_and_do_not_count_in_a_texts_length(bag):
    # 10 real tokens between [CLS] and [SEP]: 40 % is 4 tokens, 2 a step -> 3 points
    ids = texts([CLS] + list(range(5, 15)) + [SEP])
    scores = torch.zeros(ids.shape)
    scores[0, 0] = scores[0, -1] = 100.0  # the special tokens scored highest: still never moved
    target = torch.tensor([0])
    r = token_deletion(bag, ids, scores, target, pad_index=0, special_ids=(CLS, SEP), tie_seed=None)
    assert r.curve.shape == (1, 3)
    # in the order of the text (no seed, all real tokens tied): tokens 5..8 deleted, [CLS] and [SEP] kept
    from inputiba.hooks import replaced

    with torch.no_grad():
        emb = bag.embedding(ids)
        emb[0, 1:5] = 0
        with replaced(bag.embedding, "output", lambda original: emb):
            expected = torch.softmax(bag(ids), 1)[0, 0]
    assert r.curve[0, -1] == pytest.approx(float(expected), abs=1e-6)
    ins = token_insertion(bag, ids, scores, target, pad_index=0, special_ids=(CLS, SEP), tie_seed=None)
    with torch.no_grad():
        start = bag.embedding(ids) * torch.isin(ids, torch.tensor([CLS, SEP])).unsqueeze(-1)
        with replaced(bag.embedding, "output", lambda original: start):
            p0 = torch.softmax(bag(ids), 1)[0, 0]
    assert ins.curve[0, 0] == pytest.approx(float(p0), abs=1e-6)  # specials keep their embeddings


def test_a_texts_ranks_do_not_depend_on_the_padding_of_its_batch(bag):
    short = [CLS, 5, 6, 7, 8, SEP]
    scores = torch.tensor([[0, 1.0, 1.0, 1.0, 1.0, 0]])  # all tied: the tie order decides
    alone = token_deletion(bag, texts(short), scores, 0, special_ids=(CLS, SEP), tokens_per_step=1)
    padded_ids = texts(short, list(range(3, 25)))
    padded_scores = torch.zeros(padded_ids.shape)
    padded_scores[0, :6] = scores[0]
    padded_scores[1, 1:21] = 0.5
    together = token_deletion(bag, padded_ids, padded_scores, 0, special_ids=(CLS, SEP), tokens_per_step=1)
    steps = alone.curve.shape[1]
    assert torch.allclose(together.curve[0, :steps], alone.curve[0], atol=1e-6)
    assert torch.isnan(together.curve[0, steps:]).all()
    assert together.auc[0] == pytest.approx(float(alone.auc[0]), abs=1e-6)


def test_evidence_precision_by_hand():
    ids = texts([5, 6, 7, 8])
    scores = torch.tensor([[0.9, 0.1, 0.8, 0.2]])
    ev = lambda *p: torch.tensor([[k in p for k in range(4)]])  # noqa: E731
    assert float(token_evidence(scores, ids, ev(0, 2))) == 1.0
    assert float(token_evidence(scores, ids, ev(0, 1))) == 0.5
    assert float(token_evidence(torch.ones(1, 4), ids, ev(3))) == 0.25  # all tied: the evidence's share
    # a special token scored highest is never among the top
    ids2 = texts([CLS, 5, 6, SEP])
    assert float(token_evidence(torch.tensor([[5.0, 0.2, 0.1, 5.0]]), ids2, torch.tensor([[0, 1, 0, 0]]).bool(),
                                special_ids=(CLS, SEP))) == 1.0
    with pytest.raises(ValueError, match="evidence marks padding or special"):
        token_evidence(torch.zeros(1, 4), ids2, torch.tensor([[1, 0, 0, 0]]).bool(), special_ids=(CLS, SEP))


def test_evidence_is_scored_on_words_when_tokens_are_subwords():
    ids = texts([CLS, 5, 6, 7, 8, SEP])
    words = torch.tensor([[-1, 0, 0, 1, 2, -1]])  # word 0 is two subwords
    evidence = torch.tensor([[0, 1, 1, 0, 0, 0]]).bool()
    scores = torch.tensor([[0.0, 0.9, 0.3, 0.5, 0.4, 0.0]])
    where = dict(special_ids=(CLS, SEP), word_ids=words)
    assert float(token_evidence(scores, ids, evidence, **where)) == 1.0           # word 0's mean 0.6 is top
    # on tokens both subwords must be the top two: the second (0.3) is below word 1's 0.5
    assert float(token_evidence(scores, ids, evidence, special_ids=(CLS, SEP))) == 0.5
    tied = torch.tensor([[0.0, 0.75, 0.25, 0.5, 0.375, 0.0]])  # exact in binary: mean 0.5 ties word 1
    assert float(token_evidence(tied, ids, evidence, **where)) == 0.5
    assert float(token_evidence(tied, ids, evidence, **where, reduce="sum")) == 1.0
    assert float(token_evidence(tied, ids, evidence, **where, reduce="max")) == 1.0


# ------------------------------------------------------------------ token baselines
@pytest.mark.parametrize("name", ["token_gradient_x_input", "token_integrated_gradients", "token_occlusion"])
def test_first_order_baselines_are_exact_on_a_model_linear_in_the_embeddings(bag, name):
    ids = texts([CLS, 5, 9, 13, SEP], [CLS, 7, 8, SEP])
    target = torch.tensor([1, 0])
    before = model_fingerprint(bag)
    scores = get_method(name, bag).attribute(ids, target)
    assert_left_as_found(bag, before)
    expected = contribution(bag, ids, target) * movable_tokens(ids, 0, (CLS, SEP))
    assert torch.allclose(scores, expected, atol=1e-5)
    assert (scores[ids == 0] == 0).all() and (scores[ids == CLS] == 0).all()


def test_token_gradient_is_the_norm_of_the_target_weights_on_a_linear_model(bag):
    ids = texts([CLS, 5, 9, SEP])
    scores = get_method("token_gradient", bag).attribute(ids, 1)
    norm = float((bag.hidden.weight.T @ bag.head.weight[1]).norm().detach())
    assert torch.allclose(scores[0, 1:3], torch.full((2,), norm), atol=1e-6)
    assert scores[0, 0] == 0 and scores[0, 3] == 0


def test_occlusion_on_an_lstm_equals_deleting_each_token_by_hand():
    from inputiba.hooks import replaced
    from inputiba.models import LSTMClassifier

    torch.manual_seed(0)
    lstm = LSTMClassifier(vocab_size=20, embedding_dim=8, hidden_size=8, num_layers=1).eval()
    ids = texts([3, 4, 5, 6], [7, 8])
    scores = get_method("token_occlusion", lstm, batch_size=3).attribute(ids, 1)
    with torch.no_grad():
        clean = lstm(ids)[:, 1]
        for b, n in ((0, 4), (1, 2)):
            for t in range(n):
                emb = lstm.embedding(ids).clone()
                emb[b, t] = 0
                with replaced(lstm.embedding, "output", lambda original, emb=emb: emb):
                    dropped = lstm(ids)[b, 1]
                assert float(scores[b, t]) == pytest.approx(float(clean[b] - dropped), abs=1e-5)
    assert scores[1, 2:].abs().sum() == 0


def test_random_token_scores_do_not_depend_on_padding_and_skip_special_tokens(bag):
    method = get_method("random", bag, input_layer="embedding", seed=3)
    alone = method.attribute(texts([CLS, 5, 6, SEP]))
    padded = method.attribute(texts([CLS, 5, 6, SEP, 0, 0, 0]))
    assert torch.equal(padded[:, :4], alone) and (padded[:, 4:] == 0).all()
    assert alone[0, 0] == 0 and alone[0, 3] == 0 and (alone[0, 1:3] > 0).all()


# ------------------------------------------------------------------ the harness
def samples(n=6, seed=0):
    """Texts of the bag model: token 5 is the evidence of class 0, token 6 of class 1."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = 3 + i % 4
        ids = torch.randint(10, 30, (length,), generator=g)
        cue = int(torch.randint(0, length, (1,), generator=g))
        ids[cue] = 5 + i % 2
        out.append((torch.cat([torch.tensor([CLS]), ids, torch.tensor([SEP])]), i % 2, [cue + 1]))
    return out


TEXT_METHODS = [MethodSpec("random"), MethodSpec("token_gradient_x_input"), MethodSpec("token_occlusion"),
                MethodSpec("iba", {"steps": 3})]


def test_the_text_harness_writes_the_text_table_and_resumes(bag, tmp_path):
    data = samples()
    config = HarnessConfig(out_dir=tmp_path, batch_size=4, prepare_samples=6)
    before = model_fingerprint(bag)
    result = run_harness(bag, data, TEXT_METHODS, config, progress=False, input_layer="embedding")
    assert_left_as_found(bag, before)
    assert [c.key for c in result.columns] == ["token_deletion", "token_insertion", "evidence", "evidence_exact"]
    assert result.computed == {"random": 6, "token_gradient_x_input": 6, "token_occlusion": 6, "iba": 6}
    assert (tmp_path / "figures" / "token_insertion_deletion.png").is_file()
    record = json.loads((tmp_path / "samples" / "token_occlusion" / "0.json").read_text())
    assert set(record["scores"]) == {"token_deletion", "token_insertion", "evidence", "evidence_exact"}
    # the exact contribution beats random on both curves
    table = result.table
    assert table["token_occlusion"]["token_deletion"].mean < table["random"]["token_deletion"].mean
    assert table["token_occlusion"]["token_insertion"].mean > table["random"]["token_insertion"].mean
    again = run_harness(bag, data, TEXT_METHODS, config, progress=False, input_layer="embedding")
    assert set(again.computed.values()) == {0}
    assert again.markdown() == result.markdown()


def test_a_texts_scores_do_not_depend_on_its_batch(bag, tmp_path):
    data = samples(7)
    runs = [run_harness(bag, data, TEXT_METHODS, HarnessConfig(out_dir=tmp_path / str(size), batch_size=size,
                                                                prepare_samples=7),
                        progress=False, input_layer="embedding") for size in (1, 3)]
    for row in runs[0].scores:
        for key, values in runs[0].scores[row].items():
            np.testing.assert_allclose(runs[1].scores[row][key], values, atol=1e-5, err_msg=f"{row} {key}")


def test_text_harness_refuses_image_methods_and_metrics_by_name(bag, tmp_path):
    with pytest.raises(ValueError, match="grad_cam.*explains images only"):
        run_harness(bag, samples(), [MethodSpec("grad_cam")], HarnessConfig(out_dir=tmp_path), progress=False,
                    input_layer="embedding")
    with pytest.raises(ValueError, match=r"metrics \['deletion'\] do not score token ids"):
        run_harness(bag, samples(), TEXT_METHODS, HarnessConfig(out_dir=tmp_path, metrics={"deletion": {}}),
                    progress=False, input_layer="embedding")
    with pytest.raises(ValueError, match="evidence positions"):
        run_harness(bag, [(torch.tensor([CLS, 5, SEP]), 0, [7])], TEXT_METHODS[:1], HarnessConfig(out_dir=tmp_path),
                    progress=False, input_layer="embedding")


# ------------------------------------------------------------------ datasets and configuration files
def test_text_samples_mark_every_subword_of_a_planted_word():
    from inputiba.models import load_text_model, pretrained_path

    ck = load_text_model(pretrained_path("synthetic_sentiment_bert"))
    data = load_dataset("synthetic_sentiment", n_samples=4, classes=["negative", "positive"])
    assert len(data) == 4 and set(data.labels) <= {0, 1}
    s = TextSamples(data, ck)
    for i in range(4):
        ids, label, evidence, words = s[i]
        tokens = ck.tokenizer.convert_ids_to_tokens(ids.tolist())
        assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and words[0] == words[-1] == -1
        planted = "".join(tokens[t].removeprefix("##") for t in evidence)
        assert planted == "".join(data.tokens[i][w] for w in data.evidence[i])
        assert sorted({words[t] for t in evidence}) == data.evidence[i]


def test_a_text_file_is_read_with_class_names_or_indices(tmp_path):
    csv_file = tmp_path / "texts.csv"
    csv_file.write_text('text,label\n"a fine, fine film",fresh\nawful,0\n', encoding="utf-8")
    data = load_dataset("text_file", path=str(csv_file), classes=["rotten", "fresh"])
    assert data.tokens[0] == ["a", "fine", ",", "fine", "film"] and data.labels == [1, 0]
    jsonl = tmp_path / "texts.jsonl"
    jsonl.write_text('{"review": "great", "y": 1}\n\n{"review": "bad", "y": 0}\n', encoding="utf-8")
    assert load_dataset("text_file", path=str(jsonl), text="review", label="y").labels == [1, 0]
    with pytest.raises(ValueError, match="label 'meh' is neither"):
        csv_file.write_text("text,label\nok,meh\n", encoding="utf-8")
        load_dataset("text_file", path=str(csv_file), classes=["rotten", "fresh"])
    with pytest.raises(ValueError, match="no column 'label'"):
        jsonl.write_text('{"text": "x"}\n', encoding="utf-8")
        load_dataset("text_file", path=str(jsonl))
    with pytest.raises(ValueError, match="line 1: not JSON"):
        jsonl.write_text('{"text": \n', encoding="utf-8")
        load_dataset("text_file", path=str(jsonl))


def text_config(tmp_path, **model):
    return {"model": {"kind": "text", "checkpoint": "pretrained/synthetic_sentiment_lstm.pt", **model},
            "data": {"kind": "synthetic_sentiment", "n_samples": 4, "classes": ["negative", "positive"]},
            "run": {"out_dir": str(tmp_path / "out"), "batch_size": 4, "progress": False},
            "methods": [{"name": "random"}, {"name": "token_gradient_x_input"},
                        {"name": "inputiba", "settings": {
                            "stats": "pretrained/synthetic_sentiment_lstm_stats.pt", "config": "default"}}]}


def test_cli_evaluates_a_text_model_from_a_config_file(tmp_path, capsys):
    path = tmp_path / "text.json"
    path.write_text(json.dumps(text_config(tmp_path)), encoding="utf-8")
    assert cli_main(["evaluate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "Token deletion AUC" in out and "Evidence exact" in out
    rows = {r.split("|")[1].strip(): r for r in out.splitlines() if r.startswith("| ")}
    exact = lambda row: float(rows[row].split("|")[5].split("±")[0])  # noqa: E731
    assert exact("inputiba") >= 0.75 > exact("random")  # the planted words, on 4 texts


def test_your_own_text_file_is_evaluated_without_evidence_columns(tmp_path):
    from inputiba.harness import run_evaluation

    texts = tmp_path / "mine.csv"
    texts.write_text("text,label\nan excellent film with a superb cast,positive\nthe plot is awful,negative\n",
                     encoding="utf-8")
    config = text_config(tmp_path)
    config["data"] = {"kind": "text_file", "path": str(texts)}
    result = run_evaluation(evaluation_from_dict(config))
    assert [c.key for c in result.columns] == ["token_deletion", "token_insertion"]
    assert result.table["inputiba"]["token_deletion"].n == 2


@pytest.mark.parametrize("change, named", [
    (lambda c: c["data"].update(kind="cluttered"), "does not suit a text model"),
    (lambda c: c["model"].pop("checkpoint"), "needs checkpoint"),
    (lambda c: c["model"].update(arch="vgg16"), "unknown keys \\['arch'\\] in \\[model\\]"),
    (lambda c: c["model"].update(kind="audio"), "kind must be 'image' or 'text'"),
])
def test_text_config_mistakes_are_named(tmp_path, change, named):
    config = text_config(tmp_path)
    change(config)
    with pytest.raises(ValueError, match=named):
        evaluation_from_dict(config)


def test_an_image_model_refuses_text_data():
    with pytest.raises(ValueError, match="does not suit an image model"):
        evaluation_from_dict({"model": {"arch": "fashion_cnn", "weights": "bundled"},
                              "data": {"kind": "synthetic_sentiment"}, "methods": [{"name": "random"}]})


def test_nan_free_table_cells_for_texts_without_evidence(bag, tmp_path):
    data = [(ids, label) for ids, label, _ in samples(4)]  # no evidence known
    result = run_harness(bag, data, TEXT_METHODS[:2], HarnessConfig(out_dir=tmp_path), progress=False,
                         input_layer="embedding")
    assert result.table["random"]["evidence"].n == 0 and math.isnan(result.table["random"]["evidence"].mean)
    assert result.table["random"]["token_deletion"].n == 4
