"""Token attribution on the generated task with known deciding tokens: quality and speed.

The bundled ``pretrained/synthetic_sentiment_lstm.pt`` (an LSTM that reads the
task perfectly) explains held-out texts of its two sentiment classes; each
text's planted cue words are the ground truth. Per method it prints:

- ``exact``: share of texts whose k planted cues are exactly the k top-scored
  tokens;
- ``top-1``: share whose top-scored token is a planted cue;
- seconds per text, texts per second and peak memory; ``ratio`` is the speed
  relative to InputIBA's published schedule one text at a time, run in the
  same process.

Example::

    python benchmarks/bench_nlp.py --n-texts 60
"""
from __future__ import annotations

import argparse
import time

import torch

from common import PeakMemory, machine_info
from inputiba import IBA, InputIBA, InputIBAConfig
from inputiba.datasets import synthetic_sentiment
from inputiba.models import TEXT_INPUT_LAYER, load_text_classifier, pretrained_path


def rates(scores: torch.Tensor, evidence: list[list[int]]) -> tuple[float, float]:
    exact = sum(set(scores[i].topk(len(ev)).indices.tolist()) == set(ev) for i, ev in enumerate(evidence))
    top1 = sum(int(scores[i].argmax()) in ev for i, ev in enumerate(evidence))
    return exact / len(evidence), top1 / len(evidence)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-texts", type=int, default=60, help="sentiment texts to explain")
    p.add_argument("--n-reference", type=int, default=6, help="texts of the one-at-a-time reference")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    print(machine_info(device))

    ck = load_text_classifier(pretrained_path("synthetic_sentiment_lstm.pt"))
    model = ck.model.to(device)
    stats_file = pretrained_path("synthetic_sentiment_lstm_stats.pt")
    data = synthetic_sentiment(args.n_texts * 3 // 2 + 3, seed=123)
    data = data.subset([i for i, y in enumerate(data.labels) if y != 2][: args.n_texts])
    ids, labels = next(iter(data.batches(ck.vocab, len(data))))
    ids, labels = ids.to(device), labels.to(device)

    def inputiba(published: bool, batch: int) -> InputIBA:
        cfg = InputIBAConfig.published(text=True) if published else InputIBAConfig.text()
        cfg.max_batch = batch
        att = InputIBA(model, model.feature_layer, cfg, input_layer=TEXT_INPUT_LAYER)
        att.load_stats(stats_file)
        return att

    def iba() -> IBA:
        att = IBA(model, model.feature_layer, input_layer=TEXT_INPUT_LAYER)
        att.load_stats(stats_file)
        return att

    def run(att, x, y):
        with PeakMemory(device) as mem:
            start = time.perf_counter()
            scores = att.attribute(x, target=y, seed=0)
            seconds = time.perf_counter() - start
        return scores, seconds, mem.mib

    ref = inputiba(True, 1)
    n_ref = min(args.n_reference, len(data))
    _, ref_seconds, _ = run(ref, ids[:n_ref], labels[:n_ref])
    ref_rate = n_ref / ref_seconds

    rows = []
    methods = [("InputIBA published, batch 1", lambda: inputiba(True, 1)),
               (f"InputIBA published, batch {args.batch}", lambda: inputiba(True, args.batch)),
               (f"InputIBA default (`InputIBAConfig.text()`), batch {args.batch}",
                lambda: inputiba(False, args.batch)),
               ("IBA feature map (lstm.0)", iba)]
    for name, make in methods:
        scores, seconds, mib = run(make(), ids, labels)
        exact, top1 = rates(scores.cpu(), data.evidence)
        rows.append((name, exact, top1, seconds / len(data), len(data) / seconds, mib))
    g = torch.Generator().manual_seed(0)
    random_scores = torch.rand(ids.shape, generator=g) * (ids.cpu() != 0)
    exact, top1 = rates(random_scores, data.evidence)
    rows.append(("random scores", exact, top1, 0.0, float("nan"), 0.0))

    print(f"\n{len(data)} texts; reference: InputIBA published schedule one text at a time, "
          f"{ref_seconds / n_ref:.3f} s/text over {n_ref} texts\n")
    print("| method | exact | top-1 | s/text | texts/s | ratio | peak MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, exact, top1, spt, tps, mib in rows:
        ratio = tps / ref_rate if tps == tps else float("nan")
        print(f"| {name} | {exact:.3f} | {top1:.3f} | {spt:.3f} | {tps:.2f} | {ratio:.1f}x | {mib:.0f} |")


if __name__ == "__main__":
    main()
