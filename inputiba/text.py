"""Text for the LSTM classifiers: tokens, a vocabulary, padded batches, and showing token scores.

Our own small code (torchtext is dead): a regular-expression tokenizer for
English, a frequency-cut vocabulary with ``<pad>`` = 0 and ``<unk>`` = 1,
right-padded id batches, optional GloVe vectors from a local text file, and
three renderings of per-token scores: coloured terminal text, a self-contained
HTML page (every token escaped) and JSON.
"""
from __future__ import annotations

import html
import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from torch import Tensor, nn

from .io import atomic_path

__all__ = ["PAD", "UNK", "tokenize", "Vocabulary", "encode_batch", "check_vocabulary", "load_glove",
           "TokenScores", "render_terminal", "render_html", "scores_to_json", "colour_scale", "terminal_legend",
           "PER_TEXT", "Encoded", "encode_words", "aggregate_words",
           "WORD_REDUCTIONS"]

PAD, UNK = "<pad>", "<unk>"

_TOKEN = re.compile(r"\w+(?:'\w+)?|[^\w\s]")
_TAGS = re.compile(r"<[^>]{0,20}>")


def tokenize(text: str) -> list[str]:
    """Lower-cased words, contractions kept whole (``don't``), each punctuation mark a token.

    HTML line breaks (IMDb's ``<br />``) are dropped.
    """
    return _TOKEN.findall(_TAGS.sub(" ", text.lower()))


class Vocabulary:
    """Tokens to ids and back; id 0 is ``<pad>``, id 1 is ``<unk>``.

    Args:
        tokens: the tokens in id order, starting with ``<pad>`` and ``<unk>``.
    """

    def __init__(self, tokens: Sequence[str]) -> None:
        tokens = list(tokens)
        if tokens[:2] != [PAD, UNK]:
            raise ValueError(f"a vocabulary starts with {PAD!r} and {UNK!r}, got {tokens[:2]}")
        if len(set(tokens)) != len(tokens):
            raise ValueError("the vocabulary holds duplicate tokens")
        self.tokens = tokens
        self.index = {t: i for i, t in enumerate(tokens)}

    pad_index = 0
    unk_index = 1

    @classmethod
    def build(cls, texts: Iterable[Sequence[str]], max_size: int = 20000, min_freq: int = 2) -> "Vocabulary":
        """The ``max_size`` most frequent tokens seen at least ``min_freq`` times (ties by token)."""
        counts = Counter(t for tokens in texts for t in tokens)
        kept = sorted((t for t, c in counts.items() if c >= min_freq and t not in (PAD, UNK)),
                      key=lambda t: (-counts[t], t))
        return cls([PAD, UNK] + kept[: max(0, max_size - 2)])

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, tokens: Sequence[str]) -> list[int]:
        """Ids of ``tokens``; unknown tokens map to ``<unk>``."""
        return [self.index.get(t, self.unk_index) for t in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Tokens of ``ids``, padding left out."""
        return [self.tokens[i] for i in ids if i != self.pad_index]

    def save(self, path: str | os.PathLike) -> None:
        """Write the vocabulary as a JSON list, atomically."""
        with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.tokens, f, ensure_ascii=False)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Vocabulary":
        """Read a vocabulary written by :meth:`save`.

        Raises:
            ValueError: the file is not a JSON list of tokens.
        """
        try:
            with open(path, encoding="utf-8") as f:
                tokens = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not a vocabulary file (JSON): {err}") from err
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise ValueError(f"{path} is not a vocabulary file: expected a JSON list of tokens")
        return cls(tokens)


def encode_batch(texts: Sequence[str] | Sequence[Sequence[str]], vocab: Vocabulary,
                 max_length: int | None = None) -> tuple[Tensor, list[list[str]]]:
    """Token ids of several texts, right-padded with ``<pad>``.

    Args:
        texts: raw strings (tokenized with :func:`tokenize`) or token lists.
        vocab: the model's vocabulary.
        max_length: cut longer texts to their first ``max_length`` tokens.

    Returns:
        ``(ids, tokens)``: ``(B, T)`` long tensor, ``T`` the longest text,
        and the tokens of each text as used (after cutting).

    Raises:
        ValueError: no texts, or a text without any token (its index named).
    """
    if len(texts) == 0:
        raise ValueError("no texts to encode")
    token_lists = [tokenize(t) if isinstance(t, str) else list(t) for t in texts]
    if max_length is not None:
        token_lists = [tokens[:max_length] for tokens in token_lists]
    for i, tokens in enumerate(token_lists):
        if not tokens:
            raise ValueError(f"text {i} is empty: it holds no token to explain")
    ids = torch.full((len(token_lists), max(map(len, token_lists))), vocab.pad_index, dtype=torch.long)
    for i, tokens in enumerate(token_lists):
        ids[i, : len(tokens)] = torch.tensor(vocab.encode(tokens))
    return ids, token_lists


def encode_words(texts: Sequence[str] | Sequence[Sequence[str]], vocab: Vocabulary,
                 max_length: int | None = None) -> "Encoded":
    """:func:`encode_batch` as an :class:`Encoded`: every token is its own word."""
    ids, tokens = encode_batch(texts, vocab, max_length)
    return Encoded(ids, tokens, [list(range(len(t))) for t in tokens], [list(t) for t in tokens])


#: How :func:`aggregate_words` combines a word's token scores.
WORD_REDUCTIONS = ("mean", "sum", "max")


@dataclass
class Encoded:
    """Texts as a model's tokenizer cut them, with the word each token belongs to.

    Made by :func:`encode_words` (a :class:`Vocabulary`: a token is a word)
    or :func:`inputiba.hf.encode_texts` (a transformer's subwords).

    Attributes:
        ids: ``(B, T)`` token ids, right-padded.
        tokens: per text, its tokens (special tokens included, padding not).
        word_ids: per text and token, the index of the word it belongs to
            (``None`` for special tokens).
        words: per text, its words as they appear in the text.
    """

    ids: Tensor
    tokens: list[list[str]]
    word_ids: list[list[int | None]]
    words: list[list[str]]

    def word_scores(self, scores: Tensor, reduce: str = "mean") -> list[list[float]]:
        """Per text, one score per word from ``(B, T)`` token scores (:func:`aggregate_words`)."""
        return [aggregate_words(scores[i, : len(w)].tolist(), w, len(self.words[i]), reduce)
                for i, w in enumerate(self.word_ids)]


def aggregate_words(scores: Sequence[float], word_ids: Sequence[int | None], n_words: int | None = None,
                    reduce: str = "mean") -> list[float]:
    """One score per word from one text's token scores.

    Args:
        scores: one score per token.
        word_ids: per token, its word (``None``: a special token, left out).
        n_words: number of words (default: the largest word id + 1).
        reduce: ``"mean"`` (masks: the share of the word kept), ``"sum"``
            (bits: information adds up) or ``"max"``.

    Raises:
        ValueError: unknown ``reduce``, or scores and word ids differ in length.
    """
    if reduce not in WORD_REDUCTIONS:
        raise ValueError(f"reduce must be one of {', '.join(WORD_REDUCTIONS)}; got {reduce!r}")
    if len(scores) != len(word_ids):
        raise ValueError(f"{len(scores)} scores but {len(word_ids)} word ids")
    if n_words is None:
        n_words = 1 + max((w for w in word_ids if w is not None), default=-1)
    groups: list[list[float]] = [[] for _ in range(n_words)]
    for s, w in zip(scores, word_ids):
        if w is not None:
            groups[w].append(float(s))
    combine = {"mean": lambda g: sum(g) / len(g), "sum": sum, "max": max}[reduce]
    return [combine(g) if g else 0.0 for g in groups]


def check_vocabulary(model: nn.Module, vocab: Vocabulary, embedding: str = "embedding") -> None:
    """Raise ``ValueError`` unless ``model``'s embedding has one row per vocabulary token."""
    layer = dict(model.named_modules()).get(embedding)
    if not isinstance(layer, nn.Embedding):
        raise ValueError(f"model {type(model).__name__} has no nn.Embedding named {embedding!r}")
    if layer.num_embeddings != len(vocab):
        raise ValueError(f"vocabulary of {len(vocab)} tokens does not match the model's embedding of "
                         f"{layer.num_embeddings} rows: they come from different training runs")


def load_glove(path: str | os.PathLike, vocab: Vocabulary, dim: int | None = None,
               seed: int = 0) -> tuple[Tensor, int]:
    """Embedding weights for ``vocab`` from a local GloVe text file (``word v1 v2 ...`` per line).

    Tokens missing from the file get ``N(0, 0.1^2)`` vectors drawn with
    ``seed``; ``<pad>`` gets zeros.

    Returns:
        ``(weights (len(vocab), dim), found)``: the matrix and how many
        vocabulary tokens the file held.

    Raises:
        ValueError: a line has the wrong number of values, or nothing matched.
    """
    g = torch.Generator().manual_seed(seed)
    weights: Tensor | None = None
    found = 0
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            word, *values = line.rstrip().split(" ")
            if dim is None:
                dim = len(values)
            if len(values) != dim:
                raise ValueError(f"{path}:{n}: {len(values)} values, expected {dim}")
            if weights is None:
                weights = torch.randn(len(vocab), dim, generator=g) * 0.1
            i = vocab.index.get(word)
            if i is not None and i > vocab.unk_index:
                weights[i] = torch.tensor([float(v) for v in values])
                found += 1
    if weights is None or found == 0:
        raise ValueError(f"{path} holds no vector for any token of the vocabulary")
    weights[vocab.pad_index] = 0
    return weights, found


@dataclass
class TokenScores:
    """One explained text: its tokens and one score per token.

    Attributes:
        tokens: the text's tokens.
        scores: one float per token (units of the method, e.g. ``[0, 1]``).
        label: the class explained, as a name or index.
        probability: the model's probability of that class, if known.
    """

    tokens: list[str]
    scores: list[float]
    label: str | int | None = None
    probability: float | None = None

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.scores):
            raise ValueError(f"{len(self.tokens)} tokens but {len(self.scores)} scores")

    def _repr_html_(self) -> str:
        """The highlighted text, as a notebook shows it."""
        return render_html([self], fragment=True)


#: What ``scale`` of :func:`render_html` / :func:`render_terminal` takes besides a ``(low, high)`` pair.
PER_TEXT = "per-text"


def colour_scale(items: Sequence[TokenScores], scale: tuple[float, float] | str | None = None) -> tuple[float, float]:
    """The one ``(low, high)`` range a page's colours use.

    ``None``: from 0 (or the page's lowest score, if negative) to the page's
    highest score, so every text is coloured on the same scale; a pair: that
    range (``(0, 1)`` for InputIBA's masks). ``"per-text"`` has no single
    range: see :func:`render_html`.
    """
    if isinstance(scale, tuple):
        low, high = float(scale[0]), float(scale[1])
        if not high > low:
            raise ValueError(f"a colour scale needs low < high, got {scale}")
        return low, high
    if scale is not None:
        raise ValueError(f"scale must be None, a (low, high) pair or {PER_TEXT!r}, got {scale!r}")
    finite = [s for it in items for s in it.scores if math.isfinite(s)]
    low, high = min(min(finite, default=0.0), 0.0), max(finite, default=0.0)
    return (low, high) if high > low else (low, low + 1.0)


def _shades(scores: Sequence[float], scale: tuple[float, float] | str) -> list[float]:
    """Scores mapped to ``[0, 1]`` on ``scale`` (per text: the text's own min..max)."""
    if scale == PER_TEXT:
        finite = [s for s in scores if math.isfinite(s)]
        low, high = min(finite, default=0.0), max(finite, default=0.0)
        if not high > low:
            return [0.0] * len(scores)
    else:
        low, high = scale
    return [min(max((s - low) / (high - low), 0.0), 1.0) if math.isfinite(s) else 0.0 for s in scores]


def _scale_words(scale: tuple[float, float] | str, unit: str) -> str:
    if scale == PER_TEXT:
        return f"colours scaled per text (each text's lowest to highest {unit or 'score'}; not comparable across texts)"
    return f"colour scale {scale[0]:.3g} (white) to {scale[1]:.3g} (red){f', {unit}' if unit else ''}"


def render_terminal(item: TokenScores, scale: tuple[float, float] | str | None = None) -> str:
    """The text with each token on a red background as strong as its score (24-bit ANSI colour).

    ``scale`` is the ``(low, high)`` shared by every text shown (see
    :func:`colour_scale`; InputIBA's masks: ``(0, 1)``; ``None``: 0 to this
    text's highest score), or ``"per-text"`` for the text's own min..max.
    Print :func:`terminal_legend` with it.
    """
    scale = scale if scale == PER_TEXT else colour_scale([item], scale)
    parts = []
    for token, shade in zip(item.tokens, _shades(item.scores, scale)):
        g = b = int(round(255 * (1 - shade)))
        fg = "97" if shade > 0.6 else "30"
        parts.append(f"\x1b[{fg};48;2;255;{g};{b}m{token}\x1b[0m")
    head = "" if item.label is None else f"[{item.label}" + (
        "" if item.probability is None else f" p={item.probability:.3f}") + "] "
    return head + " ".join(parts)


def terminal_legend(scale: tuple[float, float] | str, unit: str = "") -> str:
    """One line saying what the terminal colours mean."""
    if scale == PER_TEXT:
        return _scale_words(scale, unit)
    steps = []
    for k in range(5):
        shade = k / 4
        g = b = int(round(255 * (1 - shade)))
        value = scale[0] + shade * (scale[1] - scale[0])
        steps.append(f"\x1b[{'97' if shade > 0.6 else '30'};48;2;255;{g};{b}m {value:.3g} \x1b[0m")
    return "".join(steps) + "  " + _scale_words(scale, unit)


def render_html(items: Sequence[TokenScores], title: str = "Token attribution",
                fragment: bool = False, scale: tuple[float, float] | str | None = None,
                unit: str = "") -> str:
    """A self-contained HTML page: one paragraph per text, tokens highlighted by score.

    Every text is coloured on one scale (``scale``, see
    :func:`colour_scale`: by default 0 to the page's highest score; pass
    ``(0, 1)`` for masks), shown in a legend with ``unit``; each token's
    value is in its tooltip. ``scale="per-text"`` colours each text by its
    own min..max instead, and the legend says so. Every token, label, unit and
    the title are HTML-escaped. ``fragment=True`` gives only the legend and the
    texts, with inline styles and no page-wide ones, to embed in a notebook or
    another page.
    """
    shared = scale if scale == PER_TEXT else colour_scale(items, scale)
    rows = [_html_legend(shared, unit)]
    for item in items:
        spans = []
        for token, score, shade in zip(item.tokens, item.scores, _shades(item.scores, shared)):
            spans.append(f'<span style="background: rgba(220, 40, 40, {shade:.3f}); padding: 1px 2px; '
                         f'border-radius: 3px" title="{score:.4g}">{html.escape(token)}</span>')
        head = ""
        if item.label is not None:
            p = "" if item.probability is None else f" (p = {item.probability:.3f})"
            head = f'<div style="font-weight: bold">{html.escape(str(item.label))}{p}</div>'
        rows.append(f'<div style="line-height: 1.9">{head}<p>{" ".join(spans)}</p></div>')
    if fragment:
        return "\n".join(rows)
    return ("<!DOCTYPE html>\n<html><head><meta charset=utf-8>"
            f"<title>{html.escape(title)}</title><style>"
            "body{font-family:sans-serif;max-width:50em;margin:2em auto;line-height:1.9}"
            "</style></head><body>"
            f"<h1>{html.escape(title)}</h1>\n" + "\n".join(rows) + "\n</body></html>\n")


def _html_legend(scale: tuple[float, float] | str, unit: str) -> str:
    words = html.escape(_scale_words(scale, unit))
    if scale == PER_TEXT:
        return f'<div class="legend" style="font-size: 90%; color: #444">{words}</div>'
    cells = "".join(f'<span style="background: rgba(220, 40, 40, {k / 4:.2f}); padding: 1px 6px">'
                    f'{scale[0] + k / 4 * (scale[1] - scale[0]):.3g}</span>' for k in range(5))
    return f'<div class="legend" style="font-size: 90%; color: #444">{cells} {words}</div>'


def scores_to_json(items: Sequence[TokenScores]) -> str:
    """The texts, tokens and scores as a JSON list of objects."""
    return json.dumps([{"tokens": it.tokens, "scores": [float(s) for s in it.scores],
                        "label": it.label, "probability": it.probability} for it in items],
                      ensure_ascii=False, indent=1)
