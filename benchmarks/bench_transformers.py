"""What an information bottleneck sees in a transformer text classifier, next to an LSTM.

Two parts, on the bundled models (``pretrained/synthetic_sentiment_{bert,lstm}``,
``pretrained/rotten_tomatoes_bert``):

1. **Planted words.** Held-out texts of the synthetic task (seed 123, the
   sentiment classes only), explained for their label. Per method: ``exact``,
   the share of texts whose k planted words are exactly the k top-scored
   words, and ``top-1``, the share whose top word is planted. InputIBA (the
   default text schedule) with its feature bottleneck at every encoder layer
   of the BERT (the preset is layer ``L // 2 - 1``), the IBA feature map at
   each layer (bits summed over a word's subwords), the LSTM's InputIBA and
   IBA, and random scores. Word scores come from subword scores by
   :meth:`inputiba.text.Encoded.word_scores`.
2. **Where the bits are.** The IBA feature map at every encoder layer: the
   share of a text's bits at ``[CLS]``, at ``[SEP]`` and at its words (mean
   over texts), and the mean bits of a planted word against another word;
   for the LSTM (which has no such tokens) the same at ``lstm.0``. Written as
   a table and as the figure ``--figure``.

Statistics at each layer are estimated from 600 training texts of each task.

Example::

    python benchmarks/bench_transformers.py --n-texts 60 --figure benchmarks/figures/transformer_bits.png
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from common import machine_info
from inputiba import IBA, InputIBA
from inputiba.datasets import rotten_tomatoes, synthetic_sentiment
from inputiba.models import load_text_model, pretrained_path


def rates(word_scores: list[list[float]], evidence: list[list[int]]) -> tuple[float, float]:
    """``(exact, top-1)`` over the texts."""
    exact = top1 = 0
    for scores, planted in zip(word_scores, evidence):
        order = sorted(range(len(scores)), key=lambda k: -scores[k])
        exact += set(order[: len(planted)]) == set(planted)
        top1 += order[0] in planted
    return exact / len(evidence), top1 / len(evidence)


def estimate(att, ck, tokens: list[list[str]]):
    att.estimate([ck.encode(tokens[k:k + 200]).ids for k in range(0, len(tokens), 200)], len(tokens))
    return att


def bits_where(ck, enc, bits: torch.Tensor, evidence=None) -> dict[str, float]:
    """Shares of the bits at [CLS], [SEP] and words; mean bits per planted and other word."""
    cls_id, sep_id = (ck.tokenizer.cls_token_id, ck.tokenizer.sep_token_id) if hasattr(ck, "tokenizer") else (-1, -1)
    ids = enc.ids
    total = bits.sum(1).clamp_min(1e-12)
    out = {"cls": float(((bits * (ids == cls_id)).sum(1) / total).mean()),
           "sep": float(((bits * (ids == sep_id)).sum(1) / total).mean())}
    out["words"] = 1.0 - out["cls"] - out["sep"]
    if evidence is not None:
        words = enc.word_scores(bits, "sum")
        planted = [w[k] for w, ev in zip(words, evidence) for k in ev]
        other = [w[k] for w, ev in zip(words, evidence) for k in range(len(w)) if k not in ev]
        out["planted"] = sum(planted) / len(planted)
        out["other"] = sum(other) / len(other)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-texts", type=int, default=60)
    p.add_argument("--n-reviews", type=int, default=100, help="Rotten Tomatoes test reviews for part 2")
    p.add_argument("--figure", default=None, help="write the bits figure here (PNG)")
    args = p.parse_args()
    print(machine_info(torch.device("cpu")), flush=True)

    data = synthetic_sentiment(args.n_texts * 3 // 2 + 3, seed=123)
    data = data.subset([i for i, y in enumerate(data.labels) if y != 2][: args.n_texts])
    labels = torch.tensor(data.labels)
    train = synthetic_sentiment(600, seed=5).tokens

    bert = load_text_model(pretrained_path("synthetic_sentiment_bert"))
    lstm = load_text_model(pretrained_path("synthetic_sentiment_lstm.pt"))
    rows, where = [], []
    for name, ck in (("BERT", bert), ("LSTM", lstm)):
        enc = ck.encode(data.tokens)
        with torch.no_grad():
            acc = float((ck.model(enc.ids).argmax(1) == labels).float().mean())
        layers = ([ck.model.layer_name(k) for k in range(ck.model.n_layers)] if name == "BERT"
                  else [ck.feature_layer])
        for layer in layers:
            tag = " (preset)" if layer == ck.feature_layer else ""
            start = time.perf_counter()
            att = estimate(InputIBA(ck.model, layer, input_layer=ck.input_layer), ck, train)
            result = att.attribute(enc.ids, target=labels, seed=0, return_stages=True)
            seconds = (time.perf_counter() - start) / len(labels)
            rows.append((f"{name} InputIBA, feature layer `{layer}`{tag}",
                         *rates(enc.word_scores(result.mask), data.evidence), seconds, acc))
            rows.append((f"{name} IBA feature map at `{layer}`{tag}",
                         *rates(enc.word_scores(result.feature_map, "sum"), data.evidence), float("nan"), acc))
            where.append((f"synthetic {name}", layer, bits_where(ck, enc, result.feature_map, data.evidence)))
        print(f"{name}: done", flush=True)
    g = torch.Generator().manual_seed(0)
    rows.append(("random scores", *rates([torch.rand(len(t), generator=g).tolist() for t in data.tokens],
                                         data.evidence), 0.0, float("nan")))

    rt = load_text_model(pretrained_path("rotten_tomatoes_bert"))
    train_rt, test_rt = rotten_tomatoes().split(0.2, seed=0)
    reviews = test_rt.subset(range(args.n_reviews))
    enc = rt.encode(reviews.tokens)
    for k in range(rt.model.n_layers):
        layer = rt.model.layer_name(k)
        att = estimate(IBA(rt.model, layer, input_layer=rt.input_layer), rt, train_rt.tokens[:600])
        where.append(("Rotten Tomatoes BERT", layer, bits_where(rt, enc, att.attribute(enc.ids, seed=0))))
    print("Rotten Tomatoes: done", flush=True)

    print(f"\n{len(labels)} synthetic texts (1-2 planted words each), explained for their label\n")
    print("| method | exact | top-1 | s/text | model accuracy on these texts |")
    print("|---|---:|---:|---:|---:|")
    for name, exact, top1, seconds, acc in rows:
        print(f"| {name} | {exact:.3f} | {top1:.3f} | {seconds:.3f} | {acc:.3f} |")
    print("\nShare of the feature bottleneck's bits (IBA) by position; bits of a planted word against another\n")
    print("| model | layer | [CLS] | [SEP] | words | bits per planted word | bits per other word |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for model, layer, w in where:
        planted = f"{w['planted']:.3f}" if "planted" in w else "—"
        other = f"{w['other']:.3f}" if "other" in w else "—"
        print(f"| {model} | `{layer}` | {w['cls']:.3f} | {w['sep']:.3f} | {w['words']:.3f} | {planted} | {other} |")

    if args.figure:
        from matplotlib.figure import Figure

        bars = [(m, layer, w) for m, layer, w in where if "LSTM" not in m]
        fig = Figure(figsize=(8.5, 3.2))
        ax = fig.subplots()
        labels_x = [f"{'syn.' if m.startswith('synthetic') else 'RT'} {layer.rsplit('.', 1)[-1]}"
                    for m, layer, _ in bars]
        bottom = torch.zeros(len(bars))
        for key, colour in (("cls", "#d62728"), ("sep", "#ff7f0e"), ("words", "#1f77b4")):
            values = torch.tensor([w[key] for _, _, w in bars])
            ax.bar(labels_x, values, bottom=bottom, color=colour, label={"cls": "[CLS]", "sep": "[SEP]",
                                                                          "words": "words"}[key])
            bottom += values
        ax.set_ylabel("share of the bits")
        ax.set_xlabel("model and encoder layer of the feature bottleneck")
        ax.set_title("Where a transformer's feature bottleneck finds information")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)  # beside the bars, never on one
        fig.tight_layout()
        Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.figure, dpi=110)
        print(f"\nfigure: {args.figure}")


if __name__ == "__main__":
    main()
