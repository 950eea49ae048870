"""Hugging Face transformer text classifiers: the forward adapter, presets, special tokens, words, loading."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from inputiba import IBA, InputIBA, InputIBAConfig  # noqa: E402
from inputiba.datasets import synthetic_sentiment  # noqa: E402
from inputiba.evaluation import token_deletion  # noqa: E402
from inputiba.hooks import forward_hooks  # noqa: E402
from inputiba.hf import (FAMILIES, STATS_FILE, TextTransformer, encode_texts, load_text_transformer,  # noqa: E402
                         train_wordpiece)
from inputiba.models import load_text_model  # noqa: E402
from inputiba.text import aggregate_words  # noqa: E402

from conftest import assert_left_as_found, model_fingerprint  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TEXTS = ["the film was superb and moving", "dull lifeless and far too long", "an unwatchable mess",
         "a brilliant delightful story", "the plot was boring", "wonderful acting throughout"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_wordpiece([t.split() for t in TEXTS] * 4, vocab_size=120)


def tiny(kind: str, vocab_size: int, pad: int = 0, layers: int = 2):
    """A randomly initialised classifier of family ``kind`` with 2 classes."""
    torch.manual_seed(0)
    common = dict(vocab_size=vocab_size, num_labels=2, pad_token_id=pad)
    if kind == "distilbert":
        cfg = transformers.DistilBertConfig(dim=16, n_layers=layers, n_heads=2, hidden_dim=32, **common)
        model = transformers.DistilBertForSequenceClassification(cfg)
    else:
        make = {"bert": (transformers.BertConfig, transformers.BertForSequenceClassification),
                "roberta": (transformers.RobertaConfig, transformers.RobertaForSequenceClassification)}[kind]
        cfg = make[0](hidden_size=16, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=32,
                      max_position_embeddings=40, **common)
        model = make[1](cfg)
    return model.eval()


@pytest.fixture
def bert(tokenizer):
    return TextTransformer(tiny("bert", len(tokenizer), tokenizer.pad_token_id, layers=4), tokenizer=tokenizer)


def short(cfg: InputIBAConfig, steps: int = 4) -> InputIBAConfig:
    return replace(cfg, feature=replace(cfg.feature, steps=steps), input=replace(cfg.input, steps=steps))


@pytest.mark.parametrize("kind", ["bert", "distilbert", "roberta"])
def test_presets_name_the_word_embeddings_and_the_layer_halfway_up(kind):
    wrapped = TextTransformer(tiny(kind, 50, pad=1 if kind == "roberta" else 0, layers=4))
    assert isinstance(wrapped.get_submodule(wrapped.input_layer), torch.nn.Embedding)
    assert wrapped.input_layer == "model." + FAMILIES[kind].embedding
    assert wrapped.n_layers == 4
    assert wrapped.feature_layer == f"model.{FAMILIES[kind].layers}.1"  # L // 2 - 1
    assert wrapped.layer_name(-1).endswith(".3")
    with pytest.raises(ValueError, match="4 encoder layers"):
        wrapped.layer_name(4)
    assert wrapped.pad_index == (1 if kind == "roberta" else 0)


def test_unknown_family_and_missing_padding_are_refused():
    model = tiny("bert", 50)
    model.config.model_type = "mystery"
    with pytest.raises(ValueError, match="no layer preset for model type 'mystery'"):
        TextTransformer(model).feature_layer
    model.config.pad_token_id = None
    with pytest.raises(ValueError, match="pad_index"):
        TextTransformer(model)


def test_forward_adapter_passes_the_attention_mask_so_padding_changes_nothing(bert, tokenizer):
    enc = encode_texts(tokenizer, [TEXTS[2], TEXTS[0]])  # the first is padded
    n = len(enc.tokens[0])
    assert n < enc.ids.shape[1] and (enc.ids[0, n:] == tokenizer.pad_token_id).all()
    hidden = {}
    with torch.no_grad(), forward_hooks([(bert.get_submodule(bert.layer_name(-1)),
                                          lambda m, a, out: hidden.setdefault(len(hidden), out))]):
        batched = bert(enc.ids)
        alone = bert(enc.ids[:1, :n])
        mask = (enc.ids != tokenizer.pad_token_id).long()
        direct = bert.model(input_ids=enc.ids, attention_mask=mask).logits
        bert.model(input_ids=enc.ids)  # no mask: the padding is attended to
    torch.testing.assert_close(batched, direct)
    torch.testing.assert_close(batched[0], alone[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hidden[0][0, :n], hidden[1][0], atol=1e-5, rtol=1e-5)
    assert (hidden[3][0, :n] - hidden[1][0]).abs().max() > 1e-3  # 100x the tolerance: the mask matters


def test_special_tokens_are_left_alone_by_the_input_stage_and_bottlenecked_at_the_layer(bert, tokenizer):
    enc = encode_texts(tokenizer, TEXTS[:3])
    specials = torch.isin(enc.ids, torch.tensor(bert.special_token_ids))
    assert set(bert.special_token_ids) == {tokenizer.cls_token_id, tokenizer.sep_token_id,
                                           tokenizer.mask_token_id}
    att = InputIBA(bert, bert.feature_layer, short(InputIBAConfig.text()), input_layer=bert.input_layer)
    att.estimate([encode_texts(tokenizer, TEXTS).ids], n_samples=6)
    before = model_fingerprint(bert)
    res = att.attribute(enc.ids, seed=0, return_stages=True)
    assert_left_as_found(bert, before)
    real = enc.ids != tokenizer.pad_token_id
    assert (res.mask[specials | ~real] == 0).all()
    assert (res.mask[real & ~specials] > 0).all()
    assert (res.feature_map[:, 0] > 0).all()  # [CLS] carries information at the layer, and it is reported
    assert (res.feature_map[~real] == 0).all()


def test_a_texts_scores_do_not_depend_on_its_batch(bert, tokenizer):
    iba = IBA(bert, bert.feature_layer, input_layer=bert.input_layer, steps=3)
    iba.estimate([encode_texts(tokenizer, TEXTS).ids], n_samples=6)
    enc = encode_texts(tokenizer, TEXTS[:4])
    together = iba.attribute(enc.ids, seed=[11, 12, 13, 14])
    n = len(enc.tokens[2])
    alone = iba.attribute(enc.ids[2:3, :n], seed=[13])
    torch.testing.assert_close(together[2, :n], alone[0])


def test_subword_scores_become_word_scores(tokenizer):
    assert aggregate_words([0.2, 0.4, 0.6, 1.0], [None, 0, 0, 1]) == pytest.approx([0.5, 1.0])
    assert aggregate_words([0.2, 0.4, 0.6, 1.0], [None, 0, 0, 1], reduce="sum") == pytest.approx([1.0, 1.0])
    assert aggregate_words([0.2, 0.4, 0.6], [0, 0, None], 3, reduce="max") == pytest.approx([0.4, 0.0, 0.0])
    with pytest.raises(ValueError, match="reduce"):
        aggregate_words([1.0], [0], reduce="median")
    enc = encode_texts(tokenizer, ["unwatchably superb", "superb"])  # a word the vocabulary cuts up
    assert enc.words == [["unwatchably", "superb"], ["superb"]]
    pieces = [t for t, w in zip(enc.tokens[0], enc.word_ids[0]) if w == 0]
    assert len(pieces) > 1 and all(p.startswith("##") for p in pieces[1:])
    assert enc.word_ids[0][0] is None and enc.word_ids[0][-1] is None  # [CLS], [SEP]
    scores = torch.arange(enc.ids.numel(), dtype=torch.float).view(enc.ids.shape)
    words = enc.word_scores(scores, "sum")
    first = [i for i, w in enumerate(enc.word_ids[0]) if w == 0]
    assert words[0][0] == pytest.approx(float(sum(first)))
    split = encode_texts(tokenizer, [["story's", "end"]])  # pre-split words stay whole
    assert split.words == [["story's", "end"]]


def test_token_deletion_runs_through_the_adapter(bert, tokenizer):
    enc = encode_texts(tokenizer, TEXTS[:2])
    scores = torch.rand(enc.ids.shape, generator=torch.Generator().manual_seed(0))
    curve = token_deletion(bert, enc.ids, scores, 0, bert.input_layer, tokenizer.pad_token_id)
    assert curve.auc.shape == (2,) and torch.isfinite(curve.auc).all()


def test_a_model_folder_loads_offline_and_bad_folders_are_named(tmp_path, tokenizer):
    model = tiny("bert", len(tokenizer), tokenizer.pad_token_id)
    model.config.id2label = {0: "rotten", 1: "fresh"}
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    ck = load_text_model(tmp_path / "m")
    assert ck.classes == ["rotten", "fresh"] and ck.stats_path == tmp_path / "m" / STATS_FILE
    assert ck.input_layer == "model.bert.embeddings.word_embeddings" and ck.feature_layer == ck.model.feature_layer
    with torch.no_grad():
        torch.testing.assert_close(ck.model(ck.encode(TEXTS[:2]).ids),
                                   model(**tokenizer(TEXTS[:2], padding=True, return_tensors="pt")).logits)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a model folder"):
        load_text_transformer(tmp_path / "empty")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(ValueError, match="cannot load"):
        load_text_transformer(tmp_path / "m")


BUNDLED = ROOT / "pretrained" / "synthetic_sentiment_bert"


def test_bundled_synthetic_bert_finds_the_planted_words():
    ck = load_text_model(BUNDLED)
    data = synthetic_sentiment(30, seed=321)
    data = data.subset([i for i, y in enumerate(data.labels) if y != 2][:8])
    enc = ck.encode(data.tokens)
    att = InputIBA(ck.model, ck.feature_layer, input_layer=ck.input_layer)
    att.load_stats(ck.stats_path)
    words = enc.word_scores(att.attribute(enc.ids, target=torch.tensor(data.labels), seed=0))
    top = [max(range(len(w)), key=w.__getitem__) for w in words]
    assert sum(t in ev for t, ev in zip(top, data.evidence)) >= 7  # a planted word first in 7 of 8 texts


def test_explain_script_shows_words_of_a_transformer(tmp_path):
    out = tmp_path / "s.json"
    run = subprocess.run([sys.executable, str(ROOT / "nlp" / "explain.py"), "--checkpoint", str(BUNDLED),
                          "--words", "--json", str(out), "--quiet", "the film was superb"],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    item = json.loads(out.read_text())[0]
    assert item["tokens"] == ["the", "film", "was", "superb"]
    assert max(range(4), key=item["scores"].__getitem__) == 3


def test_wordpiece_vocabulary_is_learnt_deterministically():
    from inputiba.hf import learn_pieces

    # the alphabet (sorted), then the most frequent pair first; ties broken by the pieces
    assert learn_pieces({"ab": 3, "ac": 1, "b": 1}, 10) == ["##b", "##c", "a", "b", "ab", "ac"]
    assert learn_pieces({"ab": 1, "ac": 1}, 4) == ["##b", "##c", "a", "ab"]
    words = [t.split() for t in TEXTS] * 3 + [["unwatchably", "stories"], ["storyline"]]
    first, second = train_wordpiece(words, 90), train_wordpiece(list(reversed(words)), 90)
    ids = list(range(len(first)))
    assert len(first) == 90 and first.convert_ids_to_tokens(ids) == second.convert_ids_to_tokens(ids)
    assert first.convert_ids_to_tokens([0, 1, 2, 3]) == ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
