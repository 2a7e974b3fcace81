"""Finetune stage: sequence classification on the domain's labelled task.

Loads the task file (JSONL, CSV or Parquet; text, label and id fields from the config), splits it
into train and test by a hash of each example's id (fixed across runs and models, so any two
checkpoints are compared on the same test set), puts a classification head on the pretrained
model's ``hf/`` export and trains it with AdamW. Records accuracy, macro-F1, the majority-class
rate (the baseline to beat), per-class F1 and the confusion matrix; writes ``predictions.parquet``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from pipeline.artifacts import Artifact, Manifest
from pipeline.config import FinetuneConfig, TaskConfig
from pipeline.ingest import infer_format
from pipeline.metrics import classification_report

log = logging.getLogger("dapt")


def load_task(task: TaskConfig, path: Path) -> pa.Table:
    """Rows (id, text, label) of a task file; rows missing text or label are an error."""
    fmt = infer_format(path, None)
    reader = {"jsonl": "read_json", "jsonl.gz": "read_json", "csv": "read_csv",
              "parquet": "read_parquet"}.get(fmt)
    if reader is None:
        raise ValueError(f"finetune.task.path: {path} must be JSONL, CSV or Parquet, not {fmt}")
    con = duckdb.connect()
    try:
        quoted = str(path).replace("'", "''")
        table = con.sql(
            f'SELECT "{task.id_field}"::VARCHAR AS id, "{task.text_field}"::VARCHAR AS text, '
            f'"{task.label_field}"::VARCHAR AS label FROM {reader}(\'{quoted}\')'
        ).to_arrow_table()
    except duckdb.BinderException as exc:
        raise ValueError(
            f"finetune.task: {path} lacks a configured field (id_field={task.id_field!r}, "
            f"text_field={task.text_field!r}, label_field={task.label_field!r}): {exc}"
        ) from None
    bad = table.num_rows - table.drop_null().num_rows
    if bad:
        raise ValueError(f"finetune.task: {bad} rows of {path} have no id, text or label")
    return table


def is_test(example_id: str, fraction: float, seed: int) -> bool:
    digest = hashlib.md5(f"{seed}:{example_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def _batches(n: int, size: int, rng: random.Random | None) -> list[list[int]]:
    order = list(range(n))
    if rng:
        rng.shuffle(order)
    return [order[i:i + size] for i in range(0, n, size)]


def run(config: FinetuneConfig, inputs: dict[str, Artifact], out_dir: Path) -> Manifest:
    """``config.task.path`` must already be resolved to an absolute path."""
    torch.manual_seed(config.seed)
    table = load_task(config.task, Path(config.task.path))
    ids, texts, labels = (table.column(c).to_pylist() for c in ("id", "text", "label"))
    label_names = sorted(set(labels))
    label2id = {name: i for i, name in enumerate(label_names)}
    test = [i for i, x in enumerate(ids) if is_test(x, config.test_fraction, config.seed)]
    test_set = set(test)
    train = [i for i in range(len(ids)) if i not in test_set]
    # Deterministic caps: ordering by the same hash keeps a fixed subset, not the file's head.
    key = lambda i: hashlib.md5(f"{config.seed}:{ids[i]}".encode()).digest()  # noqa: E731
    train = sorted(train, key=key)[: config.max_train_examples]
    test = sorted(test, key=key)[: config.max_test_examples]

    hf_dir = inputs["pretrain"].path / "hf"
    tok = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForSequenceClassification.from_pretrained(
        hf_dir, num_labels=len(label_names), id2label=dict(enumerate(label_names)),
        label2id=label2id, pad_token_id=tok.pad_token_id)

    def encode(rows: list[int]) -> dict[str, torch.Tensor]:
        enc = tok([texts[i] for i in rows], truncation=True, max_length=config.max_seq_len,
                  padding=True, return_tensors="pt")
        enc["labels"] = torch.tensor([label2id[labels[i]] for i in rows])
        return enc

    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    total = config.epochs * -(-len(train) // config.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / total))
    rng = random.Random(config.seed)
    model.train()
    history = []
    for epoch in range(config.epochs):
        losses = []
        for batch in _batches(len(train), config.batch_size, rng):
            loss = model(**encode([train[i] for i in batch])).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
            losses.append(loss.item())
        history.append({"epoch": epoch + 1, "train_loss": sum(losses) / len(losses)})
        log.info("finetune: epoch %d train loss %.4f", epoch + 1, history[-1]["train_loss"])

    model.eval()
    preds: list[int] = []
    with torch.no_grad():
        for batch in _batches(len(test), config.batch_size, None):
            logits = model(**{k: v for k, v in encode([test[i] for i in batch]).items()
                              if k != "labels"}).logits
            preds.extend(logits.argmax(-1).tolist())
    y_true = [label2id[labels[i]] for i in test]
    report = classification_report(y_true, preds, len(label_names))
    pq.write_table(pa.table({"id": [ids[i] for i in test], "label": [labels[i] for i in test],
                             "pred": [label_names[p] for p in preds]}),
                   out_dir / "predictions.parquet")
    (out_dir / "history.json").write_text(json.dumps(history, indent=2))
    model.save_pretrained(out_dir / "model", safe_serialization=True)
    return Manifest(
        stage="finetune",
        counts={"train_examples": len(train), "test_examples": len(test),
                "num_labels": len(label_names), "task_rows": len(ids)},
        metrics={k: report[k] for k in ("accuracy", "macro_f1", "majority_rate")},
        extra={"task": config.task.name, "task_file": config.task.path, "labels": label_names,
               "per_class_f1": report["per_class_f1"], "support": report["support"],
               "confusion": report["confusion"], "history": history},
    )
