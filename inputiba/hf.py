"""Hugging Face ``transformers`` text classifiers, explained per token (and per word).

A ``*ForSequenceClassification`` model takes ``input_ids`` with an
``attention_mask`` and returns a ``ModelOutput`` whose ``.logits`` are the
scores. Every stage of this library calls a model with one tensor and reads
logits, so the difference is handled here, once: :class:`TextTransformer` is
the forward adapter, a module of right-padded token ids ``(B, T)`` to logits
``(B, K)`` that derives the attention mask from the padding and passes it
along. With it, :class:`~inputiba.IBA`, :class:`~inputiba.InputIBA`, the token
metrics and the scripts treat a transformer as they treat an LSTM::

    from inputiba import InputIBA
    from inputiba.hf import load_text_transformer
    ck = load_text_transformer("pretrained/rotten_tomatoes_bert")   # a local folder only
    enc = ck.encode(["a moving, beautifully acted film"])
    att = InputIBA(ck.model, ck.feature_layer, input_layer=ck.input_layer)
    att.load_stats(ck.stats_path)
    scores = att.attribute(enc.ids)                  # (B, T) in [0, 1], 0 at padding and special tokens
    words = enc.word_scores(scores)                  # one value per word (the mean of its subwords)

**Presets** (:data:`FAMILIES`, by ``config.model_type``): the bottleneck of the
input stage sits at the *word* embeddings (before position and segment
embeddings are added and normalised), so noise replaces what a token is and
not where it is; the feature bottleneck sits at the output of the encoder
layer halfway up the stack (layer ``L // 2 - 1`` of ``L``; BERT-base: the 6th
of 12). That is the transformer analogue of VGG16's ``conv4_1`` and of the
LSTM below the top one: late enough to be abstract, early enough that
position ``t`` still mostly holds token ``t`` (a hidden state's share of its
own token falls with depth as attention mixes the sequence), which the input
stage's per-token prior relies on. ``benchmarks/bench_transformers.py``
measures every layer of the bundled model, so the choice can be checked.

**Special tokens** (``[CLS]``, ``[SEP]``, ``<s>``, ``</s>``) are the same in
every input, so at the input they hold no information about it: the input
stage leaves them unchanged and scores them 0, like padding, and the word
view leaves them out. At the hidden layer they are bottlenecked like every
token, and the feature map reports their bits: by then attention has gathered
information from the whole text into them, and a clean ``[CLS]`` state would
carry all of it around the bottleneck (see
:class:`inputiba.adapters.TokenAdapter`).

**Words**: subword scores are aggregated on request
(:meth:`Encoded.word_scores`): the mean of a word's subword masks (the share
of the word that is kept), the sum of their bits (information adds up).

``transformers`` is an optional dependency (``pip install 'inputiba[hf]'``);
weights load from local folders only (``local_files_only=True``).
"""
from __future__ import annotations

import heapq
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from .text import Encoded

__all__ = ["Family", "FAMILIES", "TextTransformer", "encode_texts", "TransformerCheckpoint",
           "load_text_transformer", "is_model_folder", "learn_pieces", "train_wordpiece", "STATS_FILE"]

#: The file, inside a model folder, that holds the library's feature statistics.
STATS_FILE = "inputiba_stats.pt"


@dataclass(frozen=True)
class Family:
    """Where the layers of one architecture family are, relative to the ``*ForSequenceClassification`` model.

    Attributes:
        embedding: the word-embedding layer.
        layers: the container of the encoder layers (``<layers>.<k>`` is layer ``k``).
    """

    embedding: str
    layers: str


#: Presets per ``config.model_type``.
FAMILIES: dict[str, Family] = {
    "bert": Family("bert.embeddings.word_embeddings", "bert.encoder.layer"),
    "distilbert": Family("distilbert.embeddings.word_embeddings", "distilbert.transformer.layer"),
    "roberta": Family("roberta.embeddings.word_embeddings", "roberta.encoder.layer"),
    "xlm-roberta": Family("roberta.embeddings.word_embeddings", "roberta.encoder.layer"),
    "camembert": Family("roberta.embeddings.word_embeddings", "roberta.encoder.layer"),
}

# inside TextTransformer the Hugging Face model is this attribute, so its layers are named "model.<name>"
_PREFIX = "model."


class TextTransformer(nn.Module):
    """A Hugging Face sequence classifier as a module of token ids to logits (the forward adapter).

    ``forward(ids)`` calls the wrapped model with ``input_ids=ids`` and
    ``attention_mask = (ids != pad_index)``, and returns the ``.logits``:
    padding is never attended to, and every part of this library that runs a
    model, hooks a layer or perturbs embeddings works on it unchanged. The
    wrapped model's layers are named ``model.<its name>``
    (``model.bert.encoder.layer.1``); :attr:`input_layer` and
    :attr:`feature_layer` give the presets of its family (:data:`FAMILIES`).

    Args:
        model: a ``transformers`` ``*ForSequenceClassification`` model.
        pad_index: the padding id; default ``model.config.pad_token_id``.
        special_ids: ids of the special tokens (``[CLS]``, ``[SEP]``, ...)
            that the input stage neither masks nor scores; default: the
            tokenizer's special ids when ``tokenizer`` is given, else the
            config's ``bos``/``eos``/``cls``/``sep`` token ids.
        tokenizer: the model's tokenizer, kept for :meth:`encode`.

    Raises:
        ValueError: no padding id is known.
    """

    def __init__(self, model: nn.Module, pad_index: int | None = None, special_ids: Sequence[int] | None = None,
                 tokenizer: Any = None) -> None:
        super().__init__()
        self.model = model
        config = getattr(model, "config", None)
        if pad_index is None:
            pad_index = getattr(config, "pad_token_id", None)
        if pad_index is None and tokenizer is not None:
            pad_index = tokenizer.pad_token_id
        if pad_index is None:
            raise ValueError(f"{type(model).__name__} names no padding token (config.pad_token_id is None): "
                             "pass pad_index=")
        self.pad_index = int(pad_index)
        if special_ids is None:
            if tokenizer is not None:
                special_ids = tokenizer.all_special_ids
                unk = getattr(tokenizer, "unk_token_id", None)
                special_ids = [i for i in special_ids if i != unk]  # an unknown word is a word
            else:
                special_ids = [getattr(config, f"{name}_token_id", None) for name in ("bos", "eos", "cls", "sep")]
        self.special_token_ids = tuple(sorted({int(i) for i in special_ids if i is not None} - {self.pad_index}))
        self.tokenizer = tokenizer

    @property
    def family(self) -> Family:
        """The :data:`FAMILIES` entry of the wrapped model's ``config.model_type``.

        Raises:
            ValueError: the family has no preset (the layers must then be named).
        """
        model_type = getattr(getattr(self.model, "config", None), "model_type", None)
        if model_type not in FAMILIES:
            raise ValueError(f"no layer preset for model type {model_type!r} (known: {', '.join(FAMILIES)}); "
                             "name the embedding and the hidden layer, e.g. input_layer='model.<...>.word_embeddings'")
        return FAMILIES[model_type]

    @property
    def n_layers(self) -> int:
        """Number of encoder layers."""
        return len(self.get_submodule(_PREFIX + self.family.layers))

    @property
    def input_layer(self) -> str:
        """Name of the word-embedding layer (the input point of InputIBA's input stage)."""
        return _PREFIX + self.family.embedding

    def layer_name(self, index: int) -> str:
        """Name of encoder layer ``index`` (negative counts from the top)."""
        n = self.n_layers
        if not -n <= index < n:
            raise ValueError(f"the model has {n} encoder layers; layer {index} does not exist")
        return f"{_PREFIX}{self.family.layers}.{index % n}"

    @property
    def feature_layer(self) -> str:
        """Name of the preset feature layer: the output of encoder layer ``L // 2 - 1`` (halfway up)."""
        return self.layer_name(max(0, self.n_layers // 2 - 1))

    def forward(self, ids: Tensor) -> Tensor:
        """Logits ``(B, K)`` of right-padded token ids ``(B, T)``."""
        out = self.model(input_ids=ids, attention_mask=(ids != self.pad_index).long())
        return out.logits if hasattr(out, "logits") else out[0]

    def encode(self, texts: Sequence[str] | Sequence[Sequence[str]], max_length: int | None = None) -> "Encoded":
        """:func:`encode_texts` with this model's tokenizer."""
        if self.tokenizer is None:
            raise ValueError("this TextTransformer was made without its tokenizer: pass tokenizer=")
        return encode_texts(self.tokenizer, texts, max_length)


def encode_texts(tokenizer: Any, texts: Sequence[str] | Sequence[Sequence[str]],
                 max_length: int | None = None) -> Encoded:
    """Tokenize texts with a Hugging Face *fast* tokenizer, right-padded, and keep the word of each token.

    Args:
        tokenizer: a ``PreTrainedTokenizerFast`` (it maps tokens to words).
        texts: raw strings (the tokenizer finds the words), or texts already
            split into words (e.g. a :class:`~inputiba.datasets.TextDataset`'s
            tokens: word ``k`` is then exactly ``texts[i][k]``).
        max_length: cut longer texts to this many tokens (special tokens included).

    Raises:
        ValueError: no texts, an empty text, or a slow tokenizer.
    """
    if len(texts) == 0:
        raise ValueError("no texts to encode")
    split = not isinstance(texts[0], str)
    for i, text in enumerate(texts):
        if (not any(w.strip() for w in text)) if split else not text.strip():
            raise ValueError(f"text {i} is empty: it holds no token to explain")
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("word scores need a fast tokenizer (one that maps tokens to words): use_fast=True")
    side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    try:
        enc = tokenizer([list(t) for t in texts] if split else list(texts), is_split_into_words=split,
                        padding=True, truncation=max_length is not None, max_length=max_length,
                        return_tensors="pt", return_attention_mask=True)
    finally:
        tokenizer.padding_side = side
    ids = enc["input_ids"]
    tokens, word_ids, words = [], [], []
    for i, text in enumerate(texts):
        n = int(enc["attention_mask"][i].sum())
        tokens.append(tokenizer.convert_ids_to_tokens(ids[i, :n].tolist()))
        wid = enc.word_ids(i)[:n]
        seen = sorted({w for w in wid if w is not None})  # a cut text keeps its first words
        if split:
            words.append([text[w] for w in seen])
        else:
            words.append([text[enc.word_to_chars(i, w).start:enc.word_to_chars(i, w).end] for w in seen])
        order = {w: k for k, w in enumerate(seen)}
        word_ids.append([None if w is None else order[w] for w in wid])
    return Encoded(ids, tokens, word_ids, words)


def learn_pieces(word_counts: Mapping[str, int], size: int) -> list[str]:
    """A WordPiece vocabulary of at most ``size`` pieces learnt by frequency merges, deterministically.

    Every character of the words is a piece (as a word's first character, and
    as ``##c`` inside a word); then, as in the trainer of the ``tokenizers``
    package, the most frequent pair of adjacent pieces is merged into a new
    piece, again and again. Ties are broken by the pieces themselves, so the
    same words always give the same vocabulary in the same order (that
    trainer breaks them in hash-map order, different in every process).

    Args:
        word_counts: each word and how often it occurs.
        size: pieces wanted (the alphabet always comes whole).

    Returns:
        The alphabet, sorted, then the merged pieces in the order they were made.
    """
    words = [[w[0]] + ["##" + c for c in w[1:]] for w in sorted(word_counts) if w]
    counts = [word_counts[w] for w in sorted(word_counts) if w]
    pieces = sorted({p for w in words for p in w})
    known = set(pieces)
    pairs: dict[tuple[str, str], int] = defaultdict(int)
    holders: dict[tuple[str, str], set[int]] = defaultdict(set)
    for i, w in enumerate(words):
        for pair in zip(w, w[1:]):
            pairs[pair] += counts[i]
            holders[pair].add(i)
    heap = [(-c, pair) for pair, c in pairs.items()]
    heapq.heapify(heap)
    while len(pieces) < size and heap:
        negative, pair = heapq.heappop(heap)
        if pairs.get(pair, 0) != -negative:
            continue  # a stale entry: the pair's count changed since it was pushed
        merged = pair[0] + pair[1][2:]
        touched: set[tuple[str, str]] = set()
        for i in sorted(holders.pop(pair)):
            old = words[i]
            new, k = [], 0
            while k < len(old):
                if k + 1 < len(old) and (old[k], old[k + 1]) == pair:
                    new.append(merged)
                    k += 2
                else:
                    new.append(old[k])
                    k += 1
            for p in zip(old, old[1:]):
                pairs[p] -= counts[i]
                holders[p].discard(i)
                touched.add(p)
            for p in zip(new, new[1:]):
                pairs[p] += counts[i]
                holders[p].add(i)
                touched.add(p)
            words[i] = new
        for p in sorted(touched):
            if pairs[p] > 0:
                heapq.heappush(heap, (-pairs[p], p))
            else:
                pairs.pop(p, None)
        if merged not in known:
            known.add(merged)
            pieces.append(merged)
    return pieces


def train_wordpiece(texts: Sequence[Sequence[str]] | Sequence[str], vocab_size: int = 4000) -> Any:
    """A BERT-style WordPiece tokenizer learnt from ``texts``, offline and deterministic.

    Lower case, BERT's splitting of words and punctuation (the ``tokenizers``
    package's normaliser and pre-tokeniser), special tokens ``[PAD]`` (id 0),
    ``[UNK]``, ``[CLS]``, ``[SEP]``, ``[MASK]``, ``[CLS] text [SEP]`` around
    each text, and the pieces of :func:`learn_pieces`: the same texts give the
    same vocabulary with the same ids in any process.

    Args:
        texts: raw strings or texts split into words.
        vocab_size: size of the vocabulary, special tokens included.

    Returns:
        A ``transformers.PreTrainedTokenizerFast``.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    counts: Counter = Counter()
    for text in texts:
        text = text if isinstance(text, str) else " ".join(text)
        counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    pieces = learn_pieces(counts, vocab_size - len(special))
    tok = Tokenizer(models.WordPiece({p: i for i, p in enumerate(special + pieces)}, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = normalizer, pre_tokenizer, decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=512)


@dataclass
class TransformerCheckpoint:
    """A transformer text classifier loaded from a local folder, with what it needs.

    Attributes:
        model: the :class:`TextTransformer` (eval mode), tokenizer included.
        classes: class names in output order (``config.id2label``).
        path: the folder.
        info: facts about training (``inputiba_info.json`` in the folder), if any.
    """

    model: TextTransformer
    classes: list[str]
    path: Path
    info: dict = field(default_factory=dict)

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer."""
        return self.model.tokenizer

    @property
    def stats_path(self) -> Path:
        """Where the folder keeps the library's statistics (:data:`STATS_FILE`)."""
        return self.path / STATS_FILE

    @property
    def feature_layer(self) -> str:
        """The feature bottleneck's preset layer (:attr:`TextTransformer.feature_layer`)."""
        return self.model.feature_layer

    @property
    def input_layer(self) -> str:
        """The word-embedding layer, where InputIBA's input stage acts."""
        return self.model.input_layer

    def encode(self, texts: Sequence[str] | Sequence[Sequence[str]], max_length: int | None = None) -> Encoded:
        """:func:`encode_texts` with the model's tokenizer."""
        return self.model.encode(texts, max_length)


def is_model_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder saved by ``save_pretrained`` (it holds ``config.json``)."""
    return Path(path).is_dir() and (Path(path) / "config.json").is_file()


def load_text_transformer(path: str | os.PathLike, device: str | torch.device = "cpu") -> TransformerCheckpoint:
    """A sequence classifier and its tokenizer from a local folder (nothing is downloaded).

    The folder is what ``model.save_pretrained(dir)`` and
    ``tokenizer.save_pretrained(dir)`` write; weights in ``safetensors``
    format load without running code.

    Raises:
        ImportError: ``transformers`` is not installed.
        ValueError: ``path`` is not such a folder, or its files cannot be read.
    """
    try:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging
    except ImportError as err:
        raise ImportError("transformer models need the optional dependency: pip install 'inputiba[hf]'") from err
    import json

    hf_logging.disable_progress_bar()

    path = Path(path)
    if not is_model_folder(path):
        raise ValueError(f"{path} is not a model folder (save_pretrained writes config.json into one)")
    try:
        # float32 whatever the stored precision: the fits' gradients need it
        model = AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True).float()
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, use_fast=True)
    except Exception as err:  # corrupt files raise many kinds (safetensors' own among them): name the folder
        raise ValueError(f"{path}: cannot load the model or its tokenizer: {err}") from err
    labels = model.config.id2label
    classes = [str(labels[i]) for i in range(len(labels))]
    info_file = path / "inputiba_info.json"
    info = json.loads(info_file.read_text(encoding="utf-8")) if info_file.is_file() else {}
    wrapped = TextTransformer(model, tokenizer=tokenizer).to(device).eval()
    return TransformerCheckpoint(wrapped, classes, path, info)
