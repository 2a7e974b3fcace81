"""Evaluate stage: held-out perplexity and bits-per-byte of the pretrained model (and, in
continue mode, of the base model, with quality gates), the fine-tune metrics and the tokenizer's
efficiency, gathered into ``metrics.json`` and the report (``report.md``, ``report.html``,
``plots/``).

Only the held-out slice's ``test`` part is scored (``IngestOutput.held_out_parts``): the
checkpoint choice and the sweep use the ``dev`` part, so no figure reported here was chosen on
the text it is measured on. Continue mode scores the base model, and with ``pretrain.control``
the control model, on the same documents; each bits-per-byte and each change (adapted vs base,
adapted vs control) has a standard error from a bootstrap over documents, paired across models.
The verdict (plain numbers and each gate's outcome) heads the report. With
``pretrain.init: promoted`` the reference in the "base" slot is the domain's promoted model, the
one the candidate would replace, so the gates (which raise ``GateFailure``) decide promotion.

Perplexity is computed from the ``hf/`` export (not the training process), so it also checks
that the export loads and predicts. Each held-out document is scored on its own, preceded by the
EOS token as context and split into windows of the training sequence length. Bits-per-byte
(total NLL in bits / UTF-8 bytes) is reported beside perplexity because it does not depend on the
tokenizer, so models with different tokenizers can be compared.
"""

from __future__ import annotations

import gc
import json
import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from pipeline import GateFailure, QualityGateError
from pipeline.config import EvaluateConfig
from pipeline.engine import progress
from pipeline.engine.artifacts import Artifact, Manifest
from pipeline.lifecycle.report import write_report
from pipeline.metrics import bits_per_byte, perplexity
from pipeline.stages.evaluate import zeroshot
from pipeline.stages.finetune.output import FinetuneOutput
from pipeline.stages.ingest.artifact import IngestOutput
from pipeline.stages.models import stage as models
from pipeline.stages.pretrain.output import PretrainOutput
from pipeline.stages.tokenizer.output import TokenizerOutput


@torch.no_grad()
def score_documents(model: torch.nn.Module, tok: PreTrainedTokenizerBase, texts: list[str],
                    window: int, batch_size: int) -> list[tuple[float, int]]:
    """(NLL in nats, scored tokens) per document; every document token is predicted once."""
    eos = tok.eos_token_id
    pieces: list[tuple[int, list[int]]] = []  # (doc index, [context] + tokens to score)
    for d, ids in enumerate(tok(texts, add_special_tokens=False)["input_ids"]):
        seq = [eos, *ids]
        for start in range(0, len(ids), window):
            pieces.append((d, seq[start:start + window + 1]))
    pieces.sort(key=lambda p: len(p[1]))  # similar lengths per batch: less padding
    out = [[0.0, 0] for _ in texts]
    device = next(model.parameters()).device
    model.eval()
    bar = progress.track("evaluate: scoring", -(-len(pieces) // batch_size), "batches")
    for i in range(0, len(pieces), batch_size):
        chunk = pieces[i:i + batch_size]
        width = max(len(p) for _, p in chunk)
        ids = torch.full((len(chunk), width), tok.pad_token_id)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (_, p) in enumerate(chunk):
            ids[row, :len(p)] = torch.tensor(p)
            mask[row, :len(p)] = 1
        ids, mask = ids.to(device), mask.to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        target = ids[:, 1:]
        nll = (torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), target, reduction="none") * mask[:, 1:]).cpu()
        for row, (d, p) in enumerate(chunk):
            out[d][0] += nll[row].sum().item()
            out[d][1] += len(p) - 1
        bar.update(loss=nll.sum().item() / max(1, mask[:, 1:].sum().item()))
    bar.close()
    return [(nll, n) for nll, n in out]


def bootstrap_indices(n_docs: int, samples: int, seed: int = 0) -> np.ndarray:
    """``samples`` x ``n_docs`` document indices drawn with replacement (fixed seed: the same
    resamples for every model, so differences are paired)."""
    return np.random.default_rng(seed).integers(0, n_docs, size=(samples, n_docs))


def slice_scores(scores: list[tuple[float, int]], texts: list[str], sources: list[str],
                 is_general: list[bool], draws: dict[str, np.ndarray] | None = None
                 ) -> dict[str, dict[str, float]]:
    """Perplexity and bits-per-byte on the domain slice, the general slice and each source,
    from per-document (NLL, tokens); with ``draws`` (slice -> bootstrap indices into that
    slice's documents) also the bootstrap standard error of bits-per-byte."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, (source, general) in enumerate(zip(sources, is_general, strict=True)):
        groups["general" if general else "domain"].append(i)
        groups[f"source:{source}"].append(i)
    nll = np.array([s[0] for s in scores])
    toks = np.array([s[1] for s in scores])
    nbytes = np.array([len(t.encode("utf-8")) for t in texts])
    out = {}
    for key in sorted(groups):
        idx = np.array(groups[key])
        n, t, b = nll[idx].sum(), int(toks[idx].sum()), int(nbytes[idx].sum())
        row = {"perplexity": perplexity(float(n), t), "bits_per_byte": bits_per_byte(float(n), b),
               "tokens": t, "bytes": b, "docs": len(idx)}
        if draws is not None and key in draws:
            d = idx[draws[key]]
            row["bits_per_byte_se"] = float(np.std(
                nll[d].sum(1) / math.log(2) / nbytes[d].sum(1), ddof=1))
        out[key] = row
    return out


def paired_change(scores: list[tuple[float, int]], reference: list[tuple[float, int]],
                  idx: np.ndarray, draws: np.ndarray | None) -> tuple[float, float | None]:
    """Relative change of total NLL (= of bits-per-byte: same documents, same bytes) of
    ``scores`` over ``reference`` on documents ``idx``, and its bootstrap standard error."""
    a = np.array([s[0] for s in scores])[idx]
    b = np.array([s[0] for s in reference])[idx]
    change = float(a.sum() / b.sum() - 1.0)
    if draws is None:
        return change, None
    return change, float(np.std(a[draws].sum(1) / b[draws].sum(1) - 1.0, ddof=1))


def comparison(config: EvaluateConfig, adapted: dict[str, dict[str, float]],
               base: dict[str, dict[str, float]], gate: bool = True) -> dict[str, float]:
    """Base vs adapted bits-per-byte (comparable across tokenizers), and the quality gates."""
    out = {"base_heldout_bits_per_byte": base["domain"]["bits_per_byte"],
           "domain_bits_per_byte_gain": base["domain"]["bits_per_byte"]
           - adapted["domain"]["bits_per_byte"]}
    if "general" in base:
        out["base_general_bits_per_byte"] = base["general"]["bits_per_byte"]
        out["general_bits_per_byte_change"] = (adapted["general"]["bits_per_byte"]
                                               / base["general"]["bits_per_byte"] - 1.0)
    failures = []
    gain = config.min_domain_gain
    if gain is not None and out["domain_bits_per_byte_gain"] < gain:
        failures.append(
            f"domain bits-per-byte {adapted['domain']['bits_per_byte']:.4f} is not "
            f"{gain:g} below the base model's {base['domain']['bits_per_byte']:.4f} "
            "(evaluate.min_domain_gain)")
    limit = config.max_general_degradation
    if limit is not None and out.get("general_bits_per_byte_change", 0.0) > limit:
        failures.append(
            f"general bits-per-byte rose {out['general_bits_per_byte_change']:+.1%} over the "
            f"base model's ({base['general']['bits_per_byte']:.4f} -> "
            f"{adapted['general']['bits_per_byte']:.4f}); evaluate.max_general_degradation "
            f"is {limit:.1%}")
    if failures and gate:
        raise GateFailure("evaluate: the adapted model fails its quality gates: "
                               + "; ".join(failures))
    return out


def test_text(config: EvaluateConfig, ingest: IngestOutput
              ) -> tuple[list[str], list[str], list[bool]]:
    """The held-out test documents scored: the domain slice and the general slice, capped (a
    prefix is a fair sample: the file is in hash order). Dev documents are never scored here."""
    parts = ingest.held_out_parts(["source", "text"])
    general_cap = config.max_general_docs or config.max_eval_docs
    domain = parts["domain"]["test"].slice(0, config.max_eval_docs)
    general = parts["general"]["test"].slice(0, general_cap)
    if not domain.num_rows:
        raise QualityGateError("evaluate: the held-out test part has no domain documents")
    held = pa.concat_tables([domain, general])
    return (held.column("text").to_pylist(), held.column("source").to_pylist(),
            [False] * domain.num_rows + [True] * general.num_rows)


def score_model(model_dir: Path, texts: list[str], window: int, batch_size: int,
                device: torch.device) -> list[tuple[float, int]]:
    model = AutoModelForCausalLM.from_pretrained(model_dir).to(device)
    try:
        return score_documents(model, AutoTokenizer.from_pretrained(model_dir), texts, window,
                               batch_size)
    finally:
        del model
        gc.collect()


def changes(scores: dict[str, list[tuple[float, int]]], slices: dict[str, np.ndarray],
            draws: dict[str, np.ndarray] | None) -> dict[str, float]:
    """Adapted vs base and vs control, per slice (document indices), with bootstrap standard
    errors over ``draws`` (the resamples the slice scores used: the changes are paired)."""
    out: dict[str, float] = {}
    for ref in ("base", "control"):
        if ref not in scores:
            continue
        for slice_, docs in slices.items():
            if not len(docs):
                continue
            change, se = paired_change(scores["adapted"], scores[ref], docs,
                                       draws[slice_] if draws else None)
            name = {("base", "domain"): "domain_bits_per_byte_change",
                    ("base", "general"): "general_bits_per_byte_change",
                    ("control", "domain"): "domain_change_vs_control",
                    ("control", "general"): "general_change_vs_control"}[(ref, slice_)]
            out[name] = change
            if se is not None:
                out[f"{name}_se"] = se
    return out


def verdict(metrics: dict[str, float], config: EvaluateConfig, base_model: str | None,
            finetune: dict[str, Any]) -> dict[str, Any]:
    """The plain-numbers verdict at the top of the report, and each gate's outcome."""
    def pct(name: str) -> str:
        se = metrics.get(f"{name}_se")
        return f"{metrics[name]:+.1%}" + (f" +- {se:.1%}" if se is not None else "")

    parts = []
    if "domain_bits_per_byte_change" in metrics:
        parts.append(f"domain bits/byte {pct('domain_bits_per_byte_change')}")
    if "general_bits_per_byte_change" in metrics:
        parts.append(f"general {pct('general_bits_per_byte_change')}")
    if "domain_change_vs_control" in metrics:
        parts.append(f"domain vs control {pct('domain_change_vs_control')}")
    elif "domain_bits_per_byte_change" in metrics:
        parts.append("no control run")
    if finetune.get("macro_f1") is not None and "base_macro_f1" in finetune:
        seeds = finetune.get("seeds", "")

        def f1(suffix: str) -> str:
            sd = finetune.get(f"macro_f1{suffix}_std")
            return f"{finetune[f'macro_f1{suffix}']:+.3f}" + (f" +- {sd:.3f}" if sd is not None
                                                              else "")
        parts.append(f"downstream macro-F1 {f1('_gain')}"
                     + (f" (vs control {f1('_gain_vs_control')})"
                        if "macro_f1_gain_vs_control" in finetune else "")
                     + (f" over {seeds} seeds" if seeds else ""))
    gates = []
    if config.min_domain_gain is not None and "domain_bits_per_byte_gain" in metrics:
        gates.append({"gate": "evaluate.min_domain_gain", "limit": config.min_domain_gain,
                      "value": float(metrics["domain_bits_per_byte_gain"]),
                      "passed": bool(metrics["domain_bits_per_byte_gain"]
                                     >= config.min_domain_gain)})
    if (config.max_general_degradation is not None
            and "general_bits_per_byte_change" in metrics):
        gates.append({"gate": "evaluate.max_general_degradation",
                      "limit": config.max_general_degradation,
                      "value": float(metrics["general_bits_per_byte_change"]),
                      "passed": bool(metrics["general_bits_per_byte_change"]
                                     <= config.max_general_degradation)})
    who = f"adapted vs {base_model}" if base_model else "adapted"
    return {"text": f"{who}: " + ", ".join(parts) if parts else who, "gates": gates}


@dataclass(frozen=True)
class Inputs:
    """What the step reads: the corpus, the tokenizer, the adapted model and its fine-tunes;
    the reference in the "base" slot (continue mode: the base model's HF directory; with
    ``init: promoted``: the promoted model it would replace, ``previous``), and the control.
    ``artifacts``: every input artifact, as the report's header lists them."""

    ingest: IngestOutput
    tokenizer: TokenizerOutput
    pretrain: PretrainOutput
    finetune: FinetuneOutput
    base: Path | None
    previous: PretrainOutput | None
    control: PretrainOutput | None
    artifacts: Mapping[str, Artifact]

    @classmethod
    def of(cls, inputs: Mapping[str, Artifact]) -> Inputs:
        base, previous, control = (inputs.get(n) for n in ("models", "previous", "control"))
        return cls(IngestOutput(inputs["ingest"]), TokenizerOutput(inputs["tokenizer"]),
                   PretrainOutput(inputs["pretrain"]), FinetuneOutput(inputs["finetune"]),
                   models.hf_dir(base) if base is not None else None,
                   PretrainOutput(previous) if previous is not None else None,
                   PretrainOutput(control) if control is not None else None, inputs)

    def model_dirs(self) -> dict[str, Path]:
        """{adapted, base, control: HF directory}; "base" is the promoted model a continued
        lineage's candidate would replace, else the base model in continue mode."""
        dirs = {"adapted": self.pretrain.hf_dir}
        if self.previous is not None:  # pretrain.init: promoted: gated against its model
            dirs["base"] = self.previous.hf_dir
        elif self.base is not None:  # continue mode: the base model, same text and windows
            dirs["base"] = self.base
        if self.control is not None:
            dirs["control"] = self.control.hf_dir
        return dirs

    def reference(self) -> str | None:
        """What the verdict compares the adapted model with, in words."""
        if self.previous is not None:
            return f"promoted pretrain/{self.previous.key}"
        return self.pretrain.base_model


def lm_metrics(per: dict[str, dict[str, Any]]) -> dict[str, float]:
    """The adapted model's held-out figures, and the control's bits-per-byte."""
    domain, control = per["adapted"]["domain"], per.get("control")
    general = per["adapted"].get("general")
    return {
        "heldout_perplexity": domain["perplexity"],
        "heldout_bits_per_byte": domain["bits_per_byte"],
        "heldout_tokens": float(domain["tokens"]),
        **({"heldout_bits_per_byte_se": domain["bits_per_byte_se"]}
           if "bits_per_byte_se" in domain else {}),
        **({"general_perplexity": general["perplexity"],
            "general_bits_per_byte": general["bits_per_byte"]} if general else {}),
        **({"control_heldout_bits_per_byte": control["domain"]["bits_per_byte"],
            **({"control_general_bits_per_byte": control["general"]["bits_per_byte"]}
               if "general" in control else {})} if control else {}),
    }


def score_all(config: EvaluateConfig, given: Inputs, texts: list[str], sources: list[str],
              is_general: list[bool]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each model's per-document scores, and its per-slice and per-source figures."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    scores = {name: score_model(d, texts, given.pretrain.seq_len, config.batch_size, device)
              for name, d in given.model_dirs().items()}
    slices = {"domain": np.flatnonzero(~np.array(is_general)),
              "general": np.flatnonzero(np.array(is_general))}
    draws = ({k: bootstrap_indices(len(v), config.bootstrap_samples) for k, v in slices.items()
              if len(v)} if config.bootstrap_samples else None)
    per = {name: slice_scores(s, texts, sources, is_general, draws)
           for name, s in scores.items()}
    return per, changes(scores, slices, draws)


def run(config: EvaluateConfig, inputs: Mapping[str, Artifact], out_dir: Path) -> Manifest:
    given = Inputs.of(inputs)
    tok = AutoTokenizer.from_pretrained(given.pretrain.hf_dir)
    texts, sources, is_general = test_text(config, given.ingest)
    per, changed = score_all(config, given, texts, sources, is_general)
    per_source, base_scores = per["adapted"], per.get("base")
    ft = given.finetune
    # zero-shot multiple choice on finetune's test splits, and their lm-eval export
    zs_metrics, zs = (zeroshot.evaluate(config, ft, given.model_dirs(), out_dir)
                      if config.zeroshot else ({}, None))
    metrics = {
        **(comparison(config, per_source, base_scores, gate=False) if base_scores else {}),
        **changed,
        **lm_metrics(per),
        # finetune_accuracy, finetune_macro_f1(_std), finetune_base_macro_f1, ..._gain
        **{f"finetune_{k}": v for k, v in ft.metrics.items()},
        # the tokenizer training used: domain (from scratch), base or extended (continue)
        "tokenizer_fertility": given.tokenizer.fertility(given.pretrain.tokenizer),
        "vocab_size": float(len(tok)),
        **zs_metrics,
    }
    result = verdict(metrics, config, given.reference(),
                     {**ft.metrics, "seeds": len(ft.seeds)})
    if zs_metrics:
        result["text"] += ", " + zeroshot.verdict_text(zs_metrics)
    selection = given.pretrain.selection
    evaluation = {"metrics": metrics, "per_source": per_source, "base_per_source": base_scores,
                  "control_per_source": per.get("control"), "verdict": result,
                  "selection": selection.model_dump() if selection else None, "zeroshot": zs}
    (out_dir / "metrics.json").write_text(json.dumps(evaluation, indent=2))
    write_report(out_dir, "Evaluation report", [], given.artifacts, evaluation)
    failed = [g for g in result["gates"] if not g["passed"]]
    if failed and base_scores:
        comparison(config, per_source, base_scores)  # raises, naming each failed gate
    return Manifest(
        stage="evaluate",
        counts={"eval_docs": len(texts), "eval_tokens": int(per_source["domain"]["tokens"])},
        metrics=metrics,
        extra={"per_source": per_source, "base_per_source": base_scores,
               "control_per_source": per.get("control"), "verdict": result},
    )
