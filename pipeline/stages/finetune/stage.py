"""Finetune stage: sequence classification on each of the domain's labelled tasks, for the
adapted model, the base model (continue mode) and the control model (when given), over several
seeds.

Each task file (JSONL, CSV or Parquet; id, text and label fields and an optional label mapping
from the config) is split into train, validation and test by a hash of each example's id, so the
test split is fixed across runs, seeds and models: base, control and adapted are compared on the
same test set with the same hyperparameters, and the difference is the effect of pretraining.

``method: full`` or ``lora``: a classification head goes on the model's ``hf/`` export; training
is full fine-tuning or LoRA (``peft``), optionally with the embeddings and lowest N layers frozen,
with AdamW and linear decay. Every epoch is scored on the validation split and the best epoch's
weights are kept (early stopping after ``patience`` epochs without a better macro-F1). The seed
varies the head's initialisation and the shuffling; ``model/<task>/`` holds the adapted model of
the first seed (LoRA merged).

``method: probe`` (docs/finetune-probe.md): each model's frozen base transformer (no LM head)
turns every example once into the attention-masked mean of its last hidden state; a multinomial
logistic regression on the standardised features is then fitted per seed, its C chosen on the
validation split. The seed re-draws the train/validation partition of the non-test rows
(``resplit``); the test rows never change.

Each seed's test predictions give accuracy, macro-F1, per-class F1 and a confusion matrix; the
manifest holds the mean and standard deviation over seeds, and the adapted - base and adapted -
control differences with the standard deviation of their per-seed (paired) values. Writes
``predictions.parquet`` (every test prediction of every model and seed) and
``test_split.parquet`` (each task's test rows: id, text, label; evaluate's zero-shot scoring
reads them, so it scores exactly these rows) and ``validation_split.parquet`` (the validation
rows of ``prepare_task``, the same columns; zero-shot scoring chooses its rule on them).
"""

from __future__ import annotations

import gc
import hashlib
import logging
import random
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from pipeline.config import FinetuneConfig, TaskConfig
from pipeline.engine import progress
from pipeline.engine.artifacts import Artifact, Manifest
from pipeline.metrics import classification_report
from pipeline.stages.finetune.probe import extract_features, fit_probe
from pipeline.stages.models import stage as models
from pipeline.stages.pretrain.output import PretrainOutput
from pipeline.tasks import load_task, split_rows

log = logging.getLogger("dapt")

SCORES = ("accuracy", "macro_f1")
# every model scored, with its prefix in the headline metrics
MODEL_TAGS = {"adapted": "", "base": "base_", "control": "control_"}
RUN_FIELDS = ("seed", "accuracy", "macro_f1", "per_class_f1", "best_epoch", "c",
              "validation_macro_f1", "history")


@dataclass(frozen=True)
class TaskData:
    name: str
    texts: list[str]
    labels: list[int]  # index into label_names
    ids: list[str]
    label_names: list[str]
    splits: dict[str, list[int]]  # split -> row indices


def prepare_task(task: TaskConfig, config: FinetuneConfig) -> tuple[TaskData, int]:
    """The task's rows and splits (capped deterministically: in hash order, not file order)."""
    table, unmapped = load_task(task, Path(task.path))
    ids, texts, labels = (table.column(c).to_pylist() for c in ("id", "text", "label"))
    label_names = sorted(set(labels))
    if len(label_names) < 2:
        raise ValueError(f"finetune.tasks.{task.name}: {task.path} has {len(label_names)} "
                         "label value(s); a classification task needs at least 2")
    caps = {"train": config.max_train_examples, "validation": config.max_test_examples,
            "test": config.max_test_examples}
    splits = split_rows(ids, test_fraction=config.test_fraction,
                        validation_fraction=config.validation_fraction, seed=config.split_seed,
                        caps=caps)
    if not splits["train"] or not splits["test"]:
        raise ValueError(f"finetune.tasks.{task.name}: {len(ids)} rows give an empty train or "
                         "test split; add rows or change finetune.test_fraction")
    label2id = {name: i for i, name in enumerate(label_names)}
    data = TaskData(task.name, texts, [label2id[x] for x in labels], ids, label_names, splits)
    return data, unmapped


def _layer_stack(model: torch.nn.Module) -> torch.nn.ModuleList:
    n = model.config.num_hidden_layers
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise ValueError(f"finetune.freeze_layers: found no stack of {n} layers in "
                     f"{type(model).__name__}")


def adapt(model: torch.nn.Module, config: FinetuneConfig) -> torch.nn.Module:
    """Apply ``freeze_layers`` and ``method`` (full or LoRA) to a fresh classification model."""
    n_layers = model.config.num_hidden_layers
    if config.freeze_layers > n_layers or (config.method == "lora"
                                           and config.freeze_layers == n_layers):
        raise ValueError(f"finetune.freeze_layers: {config.freeze_layers} but the model has "
                         f"{n_layers} layers")
    if config.method == "lora":
        from peft import LoraConfig, get_peft_model

        lora = config.lora
        return get_peft_model(model, LoraConfig(
            task_type="SEQ_CLS", r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules),
            layers_to_transform=list(range(config.freeze_layers, n_layers))
            if config.freeze_layers else None))
    if config.freeze_layers:
        model.get_input_embeddings().requires_grad_(False)
        for layer in _layer_stack(model)[:config.freeze_layers]:
            layer.requires_grad_(False)
    return model


def _batches(rows: list[int], size: int, rng: random.Random | None) -> list[list[int]]:
    order = list(rows)
    if rng:
        rng.shuffle(order)
    return [order[i:i + size] for i in range(0, len(order), size)]


class _Classifier:
    """A sequence classifier on ``model_dir`` over one task's encoded rows: its batches and its
    predictions (bf16 autocast on a GPU; on CPU, bf16 is ~20x slower than fp32)."""

    def __init__(self, model_dir: Path, data: TaskData, config: FinetuneConfig,
                 device: torch.device):
        tok = AutoTokenizer.from_pretrained(model_dir)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        tok.padding_side = "right"
        self.tok, self.device, self.batch_size = tok, device, config.batch_size
        self.model = adapt(AutoModelForSequenceClassification.from_pretrained(
            model_dir, num_labels=len(data.label_names),
            id2label=dict(enumerate(data.label_names)),
            label2id={n: i for i, n in enumerate(data.label_names)},
            pad_token_id=tok.pad_token_id), config).to(device)
        used = sorted(set().union(*data.splits.values()))  # not the whole file: maybe 50k rows
        self.encoded = dict(zip(used, tok([data.texts[i] for i in used], truncation=True,
                                          max_length=config.max_seq_len)["input_ids"],
                                strict=True))
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                                       enabled=device.type == "cuda")

    def batch(self, rows: list[int]) -> dict[str, torch.Tensor]:
        enc = self.tok.pad({"input_ids": [self.encoded[i] for i in rows]}, return_tensors="pt")
        return {k: v.to(self.device) for k, v in enc.items()}

    @torch.no_grad()
    def predict(self, rows: list[int]) -> list[int]:
        self.model.eval()
        out: list[int] = []
        for chunk in _batches(rows, self.batch_size, None):
            with self.autocast:
                out.extend(self.model(**self.batch(chunk)).logits.argmax(-1).tolist())
        return out

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.model.named_parameters()
                if p.requires_grad}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value)


def _train_epoch(clf: _Classifier, data: TaskData, opt: torch.optim.Optimizer,
                 sched: Any, rng: random.Random, epoch: int, bar: Any) -> float:
    """One pass over the train rows; the mean training loss."""
    clf.model.train()
    trainable = [p for p in clf.model.parameters() if p.requires_grad]
    losses = []
    for rows in _batches(data.splits["train"], clf.batch_size, rng):
        with clf.autocast:
            loss = clf.model(**clf.batch(rows), labels=torch.tensor(
                [data.labels[i] for i in rows], device=clf.device)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(loss.item())
        bar.update(epoch=epoch, loss=losses[-1])
    return sum(losses) / len(losses)


def fit(model_dir: Path, data: TaskData, config: FinetuneConfig, seed: int, label: str
        ) -> dict[str, Any]:
    """Fine-tune ``model_dir`` on one task with one seed; the test report, the history and
    the model (best validation epoch) in ``"model"``."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    clf = _Classifier(model_dir, data, config, device)
    trainable = [p for p in clf.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    total = config.epochs * -(-len(data.splits["train"]) // config.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / total))
    val = data.splits["validation"]
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    history = []
    bar = progress.track(f"finetune {data.name} {label} seed {seed}", total, "batches")
    for epoch in range(1, config.epochs + 1):
        entry: dict[str, float] = {
            "epoch": epoch, "train_loss": _train_epoch(clf, data, opt, sched, rng, epoch, bar)}
        if val:
            entry["validation_macro_f1"] = classification_report(
                [data.labels[i] for i in val], clf.predict(val),
                len(data.label_names))["macro_f1"]
            if best is None or entry["validation_macro_f1"] > best[0]:
                best = (entry["validation_macro_f1"], epoch, clf.trainable_state())
        history.append(entry)
        log.info("finetune %s %s seed %d: epoch %d %s", data.name, label, seed, epoch,
                 ", ".join(f"{k} {v:.4f}" for k, v in entry.items() if k != "epoch"))
        if best is not None and epoch - best[1] >= config.patience:
            break
    bar.close()
    best_epoch = history[-1]["epoch"]
    if best is not None:
        _, best_epoch, state = best
        clf.load_state(state)
    test = data.splits["test"]
    preds = clf.predict(test)
    # The optimizer and its scheduler reference each other, so without this the AdamW state
    # (twice the trainable weights) would outlive the call until a full garbage collection.
    opt.state.clear()
    clf.model.cpu()
    report = classification_report([data.labels[i] for i in test], preds,
                                   len(data.label_names))
    return {**report, "seed": seed, "best_epoch": best_epoch, "history": history,
            "predictions": preds, "model": clf.model, "tokenizer": clf.tok}


def resplit(data: TaskData, seed: int, split_seed: int) -> dict[str, list[int]]:
    """The probe's splits for one seed: the non-test rows (``prepare_task``'s train and
    validation) re-partitioned by a hash of the split seed, the seed and the id, with the same
    sizes; the test rows are ``data``'s, whatever the seed."""
    pool = data.splits["train"] + data.splits["validation"]
    pool.sort(key=lambda i: hashlib.md5(f"{split_seed}:{seed}:{data.ids[i]}".encode()).digest())
    n_val = len(data.splits["validation"])
    return {"train": sorted(pool[n_val:]), "validation": sorted(pool[:n_val]),
            "test": data.splits["test"]}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample standard deviation over seeds; per-class F1 averaged, confusion summed."""
    out: dict[str, Any] = {}
    for name in SCORES:
        values = [r[name] for r in runs]
        out[name] = statistics.fmean(values)
        out[f"{name}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    out["majority_rate"] = runs[0]["majority_rate"]
    out["per_class_f1"] = [statistics.fmean(f) for f in zip(*(r["per_class_f1"] for r in runs),
                                                            strict=True)]
    out["support"] = runs[0]["support"]
    out["confusion"] = [[sum(c) for c in zip(*rows, strict=True)]
                        for rows in zip(*(r["confusion"] for r in runs), strict=True)]
    out["runs"] = [{k: r[k] for k in RUN_FIELDS if k in r} for r in runs]
    return out


def difference(adapted: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """adapted - other per seed (paired on seed): the mean, and the sample standard deviation
    of the per-seed differences."""
    by_seed = {r["seed"]: r for r in other["runs"]}
    out: dict[str, Any] = {"per_seed": []}
    for name in SCORES:
        diffs = [r[name] - by_seed[r["seed"]][name] for r in adapted["runs"]]
        out[name] = statistics.fmean(diffs)
        out[f"{name}_std"] = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    out["per_seed"] = [{"seed": r["seed"], **{n: r[n] - by_seed[r["seed"]][n] for n in SCORES}}
                       for r in adapted["runs"]]
    return out


def headline_metrics(tasks: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Flat metrics: the first task unprefixed, the others as ``<task>.<metric>``; base and
    control figures as ``base_<metric>`` and ``control_<metric>``, the adapted - base difference
    as ``<metric>_gain`` and adapted - control as ``<metric>_gain_vs_control`` (each with
    ``_std``, the spread of the per-seed differences)."""
    metrics: dict[str, float] = {}
    for i, (name, result) in enumerate(tasks.items()):
        prefix = "" if i == 0 else f"{name}."
        for model, tag in MODEL_TAGS.items():
            summary = result.get(model)
            if summary is None:
                continue
            for metric in (*SCORES, *(f"{s}_std" for s in SCORES)):
                metrics[f"{prefix}{tag}{metric}"] = summary[metric]
        metrics[f"{prefix}majority_rate"] = result["adapted"]["majority_rate"]
        for other, suffix in (("base", "_gain"), ("control", "_gain_vs_control")):
            if not result.get(other):
                continue
            diff = difference(result["adapted"], result[other])
            for metric in SCORES:
                metrics[f"{prefix}{metric}{suffix}"] = (result["adapted"][metric]
                                                        - result[other][metric])
                metrics[f"{prefix}{metric}{suffix}_std"] = diff[f"{metric}_std"]
    return metrics


def _predictions(task: str, model: str, seed: int, data: TaskData, preds: list[int]
                 ) -> pa.Table:
    test = data.splits["test"]
    return pa.table({
        "task": [task] * len(test), "model": [model] * len(test), "seed": [seed] * len(test),
        "id": [data.ids[i] for i in test],
        "label": [data.label_names[data.labels[i]] for i in test],
        "pred": [data.label_names[p] for p in preds]})


def _split_rows(data: TaskData, split: str = "test") -> pa.Table:
    """The task's rows of ``split`` (id, text, label name), for zero-shot scoring downstream."""
    rows = data.splits[split]
    return pa.table({"task": pa.array([data.name] * len(rows), pa.string()),
                     "id": pa.array([data.ids[i] for i in rows], pa.string()),
                     "text": pa.array([data.texts[i] for i in rows], pa.string()),
                     "label": pa.array([data.label_names[data.labels[i]] for i in rows],
                                       pa.string())})


def _fine_tune_runs(model_name: str, model_dir: Path, data: TaskData, config: FinetuneConfig,
                    out_dir: Path) -> list[dict[str, Any]]:
    """full / lora: one fine-tune per seed; the adapted model of the first seed is saved, and
    no model outlives its seed."""
    runs = []
    for seed in config.seeds:
        fitted = fit(model_dir, data, config, seed, model_name)
        model, tok = fitted.pop("model"), fitted.pop("tokenizer")
        if model_name == "adapted" and seed == config.seeds[0]:
            if config.method == "lora":
                model = model.merge_and_unload()
            model.save_pretrained(out_dir / "model" / data.name, safe_serialization=True)
            tok.save_pretrained(out_dir / "model" / data.name)
        del model, tok
        gc.collect()
        runs.append(fitted)
    return runs


def _probe_runs(model_name: str, model_dir: Path, data: TaskData, config: FinetuneConfig
                ) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """probe: features of every train, validation and test row once, then one fit per seed."""
    rows = sorted(set().union(*data.splits.values()))
    start, cpu = time.perf_counter(), time.process_time()
    features, n_tokens = extract_features(model_dir, [data.texts[i] for i in rows], config)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    log.info("finetune %s %s: features of %d examples (%d tokens) in %.1f s", data.name,
             model_name, len(rows), n_tokens, seconds)
    position = {row: k for k, row in enumerate(rows)}
    labels = np.asarray([data.labels[i] for i in rows])
    runs = []
    for seed in config.seeds:
        splits = {name: [position[i] for i in r]
                  for name, r in resplit(data, seed, config.split_seed).items()}
        runs.append(fit_probe(features, labels, splits, len(data.label_names), config, seed))
        log.info("finetune %s %s seed %d: C %g, validation macro-F1 %s, test macro-F1 %.4f",
                 data.name, model_name, seed, runs[-1]["c"], runs[-1]["validation_macro_f1"],
                 runs[-1]["macro_f1"])
    # cpu_seconds: every thread of this process, so it reads apart from other jobs' load
    return runs, {"examples": len(rows), "tokens": n_tokens, "seconds": seconds,
                  "cpu_seconds": cpu, "tokens_per_s": n_tokens / seconds if seconds else 0.0}


@dataclass(frozen=True)
class Inputs:
    """What the step reads: the adapted model, the base model's HF directory (continue mode
    with ``compare_base``) and the control model (same base and budget, general text only)."""

    pretrain: PretrainOutput
    base: Path | None
    control: PretrainOutput | None

    @classmethod
    def of(cls, inputs: Mapping[str, Any]) -> Inputs:
        base, control = inputs.get("models"), inputs.get("control")
        return cls(PretrainOutput(inputs["pretrain"]),
                   models.hf_dir(base) if base is not None else None,
                   PretrainOutput(control) if control is not None else None)

    def checkpoints(self) -> dict[str, Path]:
        """{model: its HF directory}, the adapted model first."""
        found = {"adapted": self.pretrain.hf_dir, "base": self.base,
                 "control": self.control.hf_dir if self.control else None}
        return {name: path for name, path in found.items() if path is not None}


def run(config: FinetuneConfig, inputs: Mapping[str, Artifact], out_dir: Path) -> Manifest:
    """Every ``config.tasks[*].path`` must already be resolved to an absolute path."""
    checkpoints = Inputs.of(inputs).checkpoints()
    tasks: dict[str, dict[str, Any]] = {}
    predictions, tests, validations = [], [], []
    for task in config.tasks:
        data, unmapped = prepare_task(task, config)
        tests.append(_split_rows(data, "test"))
        validations.append(_split_rows(data, "validation"))
        result: dict[str, Any] = {
            "task_file": task.path, "labels": data.label_names,
            "counts": {"task_rows": len(data.ids), "unmapped_rows": unmapped,
                       **{f"{s}_examples": len(r) for s, r in data.splits.items()}}}
        for model_name, model_dir in checkpoints.items():
            if config.method == "probe":
                runs, features = _probe_runs(model_name, model_dir, data, config)
                result.setdefault("features", {})[model_name] = features
            else:
                runs = _fine_tune_runs(model_name, model_dir, data, config, out_dir)
            predictions += [_predictions(task.name, model_name, r["seed"], data,
                                         r["predictions"]) for r in runs]
            result[model_name] = summarize(runs)
        for other in ("base", "control"):
            if other in result:
                result[f"adapted_vs_{other}"] = difference(result["adapted"], result[other])
        tasks[task.name] = result
    pq.write_table(pa.concat_tables(predictions), out_dir / "predictions.parquet")
    pq.write_table(pa.concat_tables(tests), out_dir / "test_split.parquet")
    pq.write_table(pa.concat_tables(validations), out_dir / "validation_split.parquet")
    first = next(iter(tasks.values()))
    return Manifest(
        stage="finetune",
        counts={"tasks": len(tasks), "seeds": len(config.seeds),
                "fine_tunes": len(tasks) * len(config.seeds) * len(checkpoints),
                "num_labels": len(first["labels"]), **first["counts"]},
        metrics=headline_metrics(tasks),
        extra={"method": config.method, "seeds": config.seeds, "models": list(checkpoints),
               "task_names": list(tasks), "tasks": tasks},  # (manifest keys are sorted)
    )
