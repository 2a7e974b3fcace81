"""The linear probe (``finetune.method: probe``): frozen mean-pooled features of a model's last
hidden state, and a multinomial logistic regression on them whose C is chosen on the validation
split (docs/finetune-probe.md)."""

from __future__ import annotations

import gc
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from transformers import AutoModel, AutoTokenizer

from pipeline.config import FinetuneConfig
from pipeline.metrics import classification_report


@torch.no_grad()
def extract_features(model_dir: Path, texts: list[str], config: FinetuneConfig
                     ) -> tuple[np.ndarray, int]:
    """One float32 row per text: the mean over its tokens (padding masked out) of the last
    hidden state of the base transformer (``AutoModel``: no LM head), and the number of tokens
    read. Batches are sorted by length so little is padding; the model is freed on return."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tok = AutoTokenizer.from_pretrained(model_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    model = AutoModel.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    encoded = tok(texts, truncation=True, max_length=config.max_seq_len)["input_ids"]
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    for start in range(0, len(order), config.probe.batch_size):
        rows = order[start:start + config.probe.batch_size]
        enc = tok.pad({"input_ids": [encoded[i] for i in rows]}, return_tensors="pt")
        mask = enc["attention_mask"].to(device)
        with autocast:
            hidden = model(input_ids=enc["input_ids"].to(device),
                           attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).float()
        pooled = (hidden.float() * weights).sum(1) / weights.sum(1).clamp(min=1)
        out[rows] = pooled.cpu().numpy()
    del model
    gc.collect()
    return out, sum(len(e) for e in encoded)


# One BLAS thread: the matrices are small, and on the busy 2-core machine two spinning OpenBLAS
# threads made a fit ~60x slower (5.1 s against 0.08 s for 200 x 576 features, 23 labels).
@threadpool_limits.wrap(limits=1)
def fit_probe(features: np.ndarray, labels: np.ndarray, splits: dict[str, list[int]],
              num_labels: int, config: FinetuneConfig, seed: int) -> dict[str, Any]:
    """Fit the probe on ``splits["train"]`` (rows of ``features``) for each C of the grid, keep
    the C with the best validation macro-F1, and report that classifier on the test rows."""
    train, val, test = splits["train"], splits["validation"], splits["test"]
    if len(set(labels[train].tolist())) < 2:
        raise ValueError(f"finetune: seed {seed}'s train split has a single label; add rows or "
                         "lower finetune.validation_fraction")
    if not val and len(config.probe.c_grid) > 1:
        raise ValueError("finetune.validation_fraction: the validation split is empty, but the "
                         "probe chooses probe.c_grid's C on it; add rows or raise the fraction")
    scaler = StandardScaler().fit(features[train])  # train statistics only
    x = {name: scaler.transform(features[rows]) for name, rows in splits.items()}
    history: list[dict[str, Any]] = []
    best: tuple[Any, float, Any] | None = None
    for c in sorted(config.probe.c_grid):
        clf = LogisticRegression(C=c, max_iter=config.probe.max_iter)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            clf.fit(x["train"], labels[train])
        # no validation rows (None): a grid of one C, nothing to choose
        score = classification_report(labels[val], clf.predict(x["validation"]),
                                      num_labels)["macro_f1"] if val else None
        history.append({"c": c, "validation_macro_f1": score,
                        "iterations": int(np.max(clf.n_iter_)),
                        "converged": not any(issubclass(w.category, ConvergenceWarning)
                                             for w in caught)})
        if best is None or score > best[0]:  # ties keep the smaller C (stronger penalty)
            best = (score, c, clf)
    if best is None:  # ProbeConfig requires a non-empty c_grid
        raise ValueError("finetune.probe.c_grid is empty")
    score, c, clf = best
    preds = clf.predict(x["test"]).tolist()
    report = classification_report(labels[test].tolist(), preds, num_labels)
    return {**report, "seed": seed, "c": c, "validation_macro_f1": score, "history": history,
            "predictions": preds}
