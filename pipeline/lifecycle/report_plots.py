"""The report's plots (``report.py`` lays them out): PNG bytes for each ``img`` block, drawn
with matplotlib's Agg backend from the artifacts' readers and the evaluation."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

from pipeline.engine.artifacts import Artifact
from pipeline.stages.finetune.output import FinetuneOutput
from pipeline.stages.tokenizer.output import TokenizerOutput

# --- plots --------------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def _png(plt: Any, fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _loss_figure(plt: Any, curve: list[dict[str, Any]]) -> Any:
    fig, ax = plt.subplots(figsize=(7, 4))
    for field, label in (("loss", "train"), ("heldout_loss", "held-out domain"),
                         ("general_loss", "held-out general")):
        points = [(r["step"], r[field]) for r in curve if field in r]
        if points:
            ax.plot(*zip(*points, strict=True), label=label,
                    marker="o" if field != "loss" else None)
    ax.set(xlabel="step", ylabel="loss (nats/token)", title="Pretraining loss")
    ax.legend()
    return fig


def _bits_figure(plt: Any, evaluation: Mapping[str, Any]) -> Any:
    adapted, base = evaluation["per_source"], evaluation.get("base_per_source") or {}
    slices = list(adapted)
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(slices)), 4))
    width = 0.4 if base else 0.6
    xs = range(len(slices))
    if base:
        ax.bar([x - width / 2 for x in xs], [base.get(s, {}).get("bits_per_byte", 0)
                                             for s in slices], width, label="base")
    ax.bar([x + (width / 2 if base else 0) for x in xs],
           [adapted[s]["bits_per_byte"] for s in slices], width, label="adapted")
    ax.set_xticks(list(xs), slices, rotation=20, ha="right")
    ax.set(ylabel="bits per byte (lower is better)", title="Held-out bits-per-byte")
    ax.legend()
    return fig


def _finetune_figure(plt: Any, ft: FinetuneOutput) -> Any:
    bars = [(task, model, r[model]) for task, r in ft.tasks
            for model in ("base", "control", "adapted") if r.get(model)]
    fig, axes = plt.subplots(1, 2, figsize=(max(6, 1.6 * len(bars)), 4))
    for ax, metric in zip(axes, ("accuracy", "macro_f1"), strict=True):
        ax.bar(range(len(bars)), [s[metric] for _, _, s in bars],
               yerr=[s[f"{metric}_std"] for _, _, s in bars], capsize=4,
               color=[{"base": "tab:blue", "control": "tab:gray"}.get(m, "tab:orange")
                      for _, m, _ in bars])
        ax.set_xticks(range(len(bars)), [f"{t}\n{m}" for t, m, _ in bars])
        ax.set(ylim=(0, 1), title=metric.replace("macro_f1", "macro-F1"))
    fig.suptitle(f"Fine-tuning: mean +- std over {len(ft.seeds)} seeds "
                 "(blue: base, gray: control, orange: adapted)")
    return fig


def _confusion_figure(plt: Any, task: str, result: Mapping[str, Any]) -> Any:
    m, labels = result["adapted"]["confusion"], result["labels"]
    fig, ax = plt.subplots(figsize=(1.5 + 0.5 * len(labels), 1.2 + 0.45 * len(labels)))
    ax.imshow(m, cmap="Blues")
    for i, row in enumerate(m):
        for j, v in enumerate(row):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title=f"{task} (adapted, all seeds)")
    return fig


def _selection_figure(plt: Any, sel: Mapping[str, Any]) -> Any:
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [c["step"] for c in sel["candidates"]]
    ax.plot(steps, [100 * c["domain_change"] for c in sel["candidates"]], marker="o",
            label="domain dev loss")
    general = [(c["step"], 100 * c["general_change"]) for c in sel["candidates"]
               if c["general_change"] is not None]
    if general:
        ax.plot(*zip(*general, strict=True), marker="o", label="general dev loss")
        limit, label = sel["max_general_degradation"], "general limit"
        base = next(c for c in sel["candidates"] if c["step"] == 0)
        if sel.get("reference") == "control" and base["general_loss"]:
            # the limit is the control's loss + limit, drawn on the vs-base axis
            limit = (1 + limit) * sel["control_general_loss"] / base["general_loss"] - 1
            label = "general limit (control + limit)"
        ax.axhline(100 * limit, color="grey", linestyle="--", label=label)
    ax.axvline(sel["chosen_step"], color="tab:green", linestyle=":", label="chosen")
    ax.set(xlabel="step", ylabel="change vs base (%)", title="Checkpoint choice (dev)")
    ax.legend()
    return fig


def _fertility_figure(plt: Any, tok: TokenizerOutput) -> Any:
    eff = tok.efficiency
    names = list(eff)
    parts = sorted({p for v in eff.values() for p in v})
    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(names)), 4))
    width = 0.8 / max(1, len(parts))
    for k, part in enumerate(parts):
        ax.bar([i + k * width for i in range(len(names))],
               [eff[n].get(part, {}).get("fertility", 0) for n in names], width, label=part)
    ax.set_xticks([i + width * (len(parts) - 1) / 2 for i in range(len(names))], names)
    ax.set(ylabel="tokens per word (lower is better)", title="Tokenizer fertility")
    ax.legend(title="text")
    return fig


def plots(artifacts: Mapping[str, Artifact], evaluation: Mapping[str, Any],
          curve: list[dict[str, Any]]) -> dict[str, bytes]:
    """PNG bytes by file name, for every ``img`` block."""
    plt = _pyplot()
    ft = FinetuneOutput(artifacts["finetune"])
    out = {"loss_curves.png": _png(plt, _loss_figure(plt, curve)),
           "bits_per_byte.png": _png(plt, _bits_figure(plt, evaluation)),
           "finetune.png": _png(plt, _finetune_figure(plt, ft))}
    for task, result in ft.tasks:
        out[f"confusion_{task}.png"] = _png(plt, _confusion_figure(plt, task, result))
    if evaluation.get("selection"):
        out["checkpoints.png"] = _png(plt, _selection_figure(plt, evaluation["selection"]))
    tok = TokenizerOutput(artifacts["tokenizer"])
    out["fertility.png"] = _png(plt, _fertility_figure(plt, tok))
    return out
