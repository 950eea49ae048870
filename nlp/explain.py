"""Explain a text classifier's decisions token by token, with InputIBA or IBA (or a baseline, to compare).

The classifier is one of this project's LSTM checkpoints or a Hugging Face
transformer folder (``save_pretrained``; loaded from disk only, with its
tokenizer): ``--checkpoint pretrained/rotten_tomatoes_bert``. A transformer's
texts are cut into subwords; ``--words`` shows one score per word instead (the
mean of its subwords' masks, the sum of their bits), and special tokens
(``[CLS]``, ``[SEP]``) score 0 in InputIBA's mask: the input stage leaves
them alone (:mod:`inputiba.hf`).

Texts come from the command line, a file (one text per line) or standard
input. Each text's token scores are shown as coloured terminal text, and can
be written as a self-contained HTML page (``--html``) and as JSON (``--json``),
each file atomically.

Examples::

    python nlp/explain.py "A moving, beautifully acted film."
    python nlp/explain.py --file reviews.txt --html out/reviews.html --json out/reviews.json
    echo "dull and far too long" | python nlp/explain.py --method iba
    python nlp/explain.py --checkpoint pretrained/synthetic_sentiment_lstm.pt "the plot was superb"
    python nlp/explain.py --checkpoint pretrained/rotten_tomatoes_bert --words "an unwatchable mess"
    python nlp/explain.py --method token_integrated_gradients "dull and far too long"   # a baseline

The bundled checkpoints ship with their statistics (``..._stats.pt`` beside
an LSTM file, ``inputiba_stats.pt`` inside a model folder), so nothing else
is needed. For another checkpoint, give ``--stats`` or ``--estimate-from`` a
dataset.

InputIBA's input mask has one value per token, and a token's information
costs the same in a short and in a long text (``InputIBAConfig.text``): the
words the model uses open, the others stay near 0. ``--beta`` is that price
per token (default 0.13; lower opens more tokens). ``--schedule published``
has the published input stage (a mask per token and embedding dimension,
beta 30 on the mean over all elements), which keeps every token of a short
review near 0.01 (``benchmarks/RESULTS.md``). Colours use one scale for all
texts, shown in a legend: InputIBA's mask on [0, 1], IBA's bits from 0 to the
largest of the run (``--per-text-scale`` scales each text by its own range,
and says so); the JSON and the HTML tooltips hold the values.

A text without a single token is reported in one line (and recorded in
``failures.jsonl`` beside ``--json``/``--html``), the others are explained,
and the exit status is 1. Mistakes in the call end it with a one-line error
and exit status 2 (``--debug`` shows the traceback). Each text's noise is
seeded from ``--seed`` and its index among the texts given, so its scores do
not depend on the other texts.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch

from inputiba import IBA, InputIBA, input_seed
from inputiba.pipeline import SCHEDULES, schedule
from inputiba.precision import PRECISIONS
from inputiba.datasets import imdb, rotten_tomatoes, synthetic_sentiment
from inputiba.io import FailureLog, UsageError, atomic_path, run_command, writable_folder
from inputiba.models import TextCheckpoint, load_text_model
from inputiba.text import (PER_TEXT, TokenScores, colour_scale, render_html, render_terminal, scores_to_json,
                           terminal_legend, tokenize)


#: The token baselines ``--method`` also takes (:mod:`inputiba.methods.text`).
BASELINES = ("token_gradient", "token_gradient_x_input", "token_integrated_gradients", "token_occlusion", "lime")


class Baseline:
    """A token baseline behind the call ``explainer.attribute(ids, target=..., seed=...)`` of the bottlenecks."""

    def __init__(self, name: str, model, input_layer: str) -> None:
        from inputiba.methods import get_method

        self.method = get_method(name, model, input_layer=input_layer)

    def attribute(self, ids, target, seed=None):
        """The method's ``(B, T)`` scores (``seed`` is not used: these methods draw nothing per text)."""
        return self.method.attribute(ids, target)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("texts", nargs="*", help="texts to explain (default: --file, else standard input)")
    p.add_argument("--file", default=None, help="a text file with one text per line")
    p.add_argument("--checkpoint", default=None,
                   help="LSTM checkpoint file or Hugging Face model folder "
                        "(default: the bundled Rotten Tomatoes LSTM)")
    p.add_argument("--method", choices=["inputiba", "iba", *BASELINES], default="inputiba",
                   help="inputiba (default), iba (the feature bottleneck's bits), or a token baseline to "
                        "compare with (lime and token_integrated_gradients need captum)")
    p.add_argument("--layer", default=None,
                   help="feature bottleneck layer (default: the LSTM below the top one; for a transformer "
                        "the encoder layer halfway up)")
    p.add_argument("--target", default="predicted", help="'predicted', a class index or a class name")
    p.add_argument("--schedule", choices=list(SCHEDULES), default="default",
                   help="InputIBA's schedule: the library's default (no GAN stage) or the paper's (published)")
    p.add_argument("--beta", type=float, default=None,
                   help="weight of the information term of the last stage (InputIBA's input stage: the "
                        "price of a token, default 0.13, published schedule 30 on the mean over elements; "
                        "IBA: 15 on the mean over elements); lower values open more tokens")
    p.add_argument("--stats", default=None, help="statistics file (default: <checkpoint stem>_stats.pt)")
    p.add_argument("--estimate-from", choices=["rotten_tomatoes", "synthetic", "imdb"], default=None,
                   help="estimate the statistics from this dataset instead")
    p.add_argument("--imdb-root", default=None, help="aclImdb folder, for --estimate-from imdb")
    p.add_argument("--max-length", type=int, default=None, help="cut texts to this many tokens")
    p.add_argument("--words", action="store_true",
                   help="one score per word (a transformer's subwords combined) instead of per token")
    p.add_argument("--html", default=None, help="write an HTML page here")
    p.add_argument("--json", default=None, help="write the scores as JSON here")
    p.add_argument("--quiet", action="store_true", help="print nothing to the terminal")
    p.add_argument("--report", action="store_true",
                   help="also write report.html beside the --json file (every JSON of that folder)")
    p.add_argument("--per-text-scale", action="store_true",
                   help="colour each text by its own lowest..highest score (labelled; not comparable across "
                        "texts) instead of one scale for all: the mask's [0, 1], or 0 .. the largest bits")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=list(PRECISIONS), default="float32",
                   help="what the network runs at during the fits (default float32)")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return p.parse_args(argv)


def read_texts(args) -> list[str]:
    if args.texts:
        return args.texts
    if args.file:
        lines = Path(args.file).read_text(encoding="utf-8").splitlines()
    else:
        lines = sys.stdin.read().splitlines()
    texts = [line for line in lines if line.strip()]
    if not texts:
        raise UsageError("no text to explain: give texts as arguments, --file, or on standard input")
    return texts


def resolve_target(target: str, classes: list[str], n: int):
    if target == "predicted":
        return None
    if target in classes:
        return classes.index(target)
    try:
        return int(target)
    except ValueError:
        raise UsageError(f"--target {target!r} is neither 'predicted', a class index nor one of {classes}")


def build_explainer(args, checkpoint):
    model = checkpoint.model.to(args.device)
    if args.method in BASELINES:
        return Baseline(args.method, model, checkpoint.input_layer)
    layer = args.layer or checkpoint.feature_layer
    if args.method == "iba":
        overrides = {} if args.beta is None else {"beta": args.beta}
        explainer = IBA(model, layer, input_layer=checkpoint.input_layer, precision=args.precision, **overrides)
    else:
        config = schedule(args.schedule, text=True).with_precision(args.precision)
        if args.beta is not None:
            config = replace(config, input=replace(config.input, beta=args.beta))
        explainer = InputIBA(model, layer, config, input_layer=checkpoint.input_layer)
    if args.estimate_from:
        data = {"rotten_tomatoes": rotten_tomatoes, "synthetic": synthetic_sentiment}.get(args.estimate_from)
        data = imdb(args.imdb_root, "train") if args.estimate_from == "imdb" else data()
        n = min(len(data), 1000)
        explainer.estimate([checkpoint.encode(data.tokens[k:min(k + 256, n)], args.max_length).ids.to(args.device)
                            for k in range(0, n, 256)], n)
        return explainer
    stats = Path(args.stats) if args.stats else checkpoint.stats_path
    if stats is None or not stats.is_file():
        raise UsageError(f"no statistics at {stats}: give --stats or --estimate-from")
    explainer.load_stats(stats)
    return explainer


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.report and not args.json:
        raise UsageError("--report reads the scores of --json: give --json FILE as well")
    for path in (args.html, args.json):
        if path:
            writable_folder(Path(path).resolve().parent, f"folder of {path}")
    checkpoint = load_text_model(args.checkpoint)
    texts = read_texts(args)
    report = args.json or args.html
    failures = FailureLog(Path(report).resolve().parent) if report else None
    kept = []
    for i, text in enumerate(texts):  # a text without a single token is reported, the rest explained
        if tokenize(text) if isinstance(checkpoint, TextCheckpoint) else text.strip():  # LSTM: its own tokens
            kept.append(i)
            if failures is not None:
                failures.clear(f"text:{i}")
        else:
            print(f"failed text {i} ({text[:40]!r}): it holds no token to explain", file=sys.stderr)
            if failures is not None:
                failures.record(f"text:{i}", "it holds no token to explain")
    n_failed = len(texts) - len(kept)
    if not kept:
        raise UsageError(f"none of the {len(texts)} texts holds a token to explain")
    encoded = checkpoint.encode([texts[i] for i in kept], args.max_length)
    ids = encoded.ids
    explainer = build_explainer(args, checkpoint)
    target = resolve_target(args.target, checkpoint.classes, len(kept))
    ids = ids.to(args.device)
    with torch.no_grad():
        probs = torch.softmax(checkpoint.model(ids), dim=1)
    targets = probs.argmax(1) if target is None else torch.full((len(kept),), target, device=ids.device)
    if int(targets.max()) >= probs.shape[1] or int(targets.min()) < 0:
        raise UsageError(f"--target {args.target} is out of range for {probs.shape[1]} classes")
    # each text's seed from its index among the texts given: dropping a failed one changes no other
    scores = explainer.attribute(ids, target=targets, seed=[input_seed(args.seed, i) for i in kept])
    if args.words:  # masks: the share of each word kept; bits and the baselines' contributions add up
        units, values = encoded.words, encoded.word_scores(scores, "mean" if args.method == "inputiba" else "sum")
    else:
        units, values = encoded.tokens, [scores[i, : len(tok)].tolist() for i, tok in enumerate(encoded.tokens)]
    items = [TokenScores(list(unit), value, checkpoint.classes[int(targets[i])], float(probs[i, targets[i]]))
             for i, (unit, value) in enumerate(zip(units, values))]
    # one colour scale for every text: the mask's [0, 1], or 0 .. the largest bits of the run
    unit = {"inputiba": "InputIBA mask in [0, 1]", "iba": "IBA, bits per token"}.get(
        args.method, getattr(explainer, "method", None) and f"{args.method}: {explainer.method.unit}")
    scale = PER_TEXT if args.per_text_scale else (0.0, 1.0) if args.method == "inputiba" else colour_scale(items)
    if not args.quiet:
        print(terminal_legend(scale, unit))
        for item in items:
            print(render_terminal(item, scale))
    if args.html:
        with atomic_path(args.html) as tmp:
            Path(tmp).write_text(render_html(items, f"Token attribution ({unit})", scale=scale, unit=unit),
                                 encoding="utf-8")
    if args.json:
        with atomic_path(args.json) as tmp:
            Path(tmp).write_text(scores_to_json(items), encoding="utf-8")
    if args.report:
        from inputiba.report import write_report

        print(f"report: {write_report(Path(args.json).resolve().parent)[0]}", file=sys.stderr)
    if n_failed:
        where = f" (see {failures.path})" if failures is not None else ""
        print(f"{len(kept)} explained, {n_failed} failed{where}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main, None, "explain.py"))
