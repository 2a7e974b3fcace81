"""Evaluate stage: held-out perplexity and bits-per-byte of the pretrained model (and, in
continue mode, of the base model, with quality gates), the fine-tune metrics and the tokenizer's
efficiency, gathered into ``metrics.json`` and the report (``report.md``, ``report.html``,
``plots/``).

Only the held-out slice's ``test`` part is scored (``IngestOutput.held_out_parts``): the
checkpoint choice and the sweep use the ``dev`` part, so no figure reported here was chosen on
the text it is measured on. Continue mode scores the base model, and with ``pretrain.control``
the control model, on the same documents; each bits-per-byte and each change (adapted vs base,
adapted vs control) has a standard error from a bootstrap over the held-out clusters (ingest's
``group``, else each document), paired across models.
The verdict (plain numbers and each gate's outcome) heads the report. With
``pretrain.init: promoted`` the reference in the "base" slot is the domain's promoted model, the
one the candidate would replace, so the gates (which raise ``GateFailure``) decide promotion.

Perplexity is computed from the ``hf/`` export (not the training process), so it also checks
that the export loads and predicts. Each held-out document is scored on its own, preceded by a
context token chosen on the dev part, and split into windows of the training sequence length;
each figure also comes masked (placeholders and URLs out: ``scoring.py``), and the verdict's
headline uses the masked ones (``verdict.py``). Bits-per-byte (total NLL in bits / UTF-8 bytes)
is reported beside perplexity because it does not depend on the tokenizer, so models with
different tokenizers can be compared.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from transformers import AutoTokenizer

from pipeline import GateFailure, QualityGateError
from pipeline.config import EvaluateConfig
from pipeline.engine.artifacts import Artifact, Manifest
from pipeline.lifecycle.report import write_report
from pipeline.stages.evaluate import seeds, zeroshot, zeroshot_rules, zeroshot_seeds
from pipeline.stages.evaluate.intervals import bootstrap_weights, paired_change, slice_scores
from pipeline.stages.evaluate.memo import Memo
from pipeline.stages.evaluate.scoring import (  # score_documents: re-exported for callers
    score_documents,  # noqa: F401
    score_models,
)
from pipeline.stages.evaluate.verdict import (
    base_label,
    headline,
    masked_changes,
    masked_metrics,
    scoring_note,
)
from pipeline.stages.finetune.output import FinetuneOutput
from pipeline.stages.ingest import twins
from pipeline.stages.ingest.artifact import IngestOutput
from pipeline.stages.models import stage as models
from pipeline.stages.pretrain.output import PretrainOutput
from pipeline.stages.tokenizer.output import TokenizerOutput


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


def _domain_gate_message(config: EvaluateConfig, adapted: dict[str, dict[str, float]],
                         base: dict[str, dict[str, float]]) -> str:
    return (f"domain bits-per-byte {adapted['domain']['bits_per_byte']:.4f} is not "
            f"{config.min_domain_gain:g} below the base model's "
            f"{base['domain']['bits_per_byte']:.4f} (evaluate.min_domain_gain)")


@dataclass(frozen=True)
class ScoredText:
    """The held-out test documents evaluate scores, in order: the domain slice, then the
    general slice. ``clusters``: each document's held-out group as integer codes (ingest's
    ``group`` column, else its ``doc_id``: ``cluster_column``), which every bootstrap draws
    whole (one run's and the one over seeds)."""
    texts: list[str]
    sources: list[str]
    is_general: list[bool]
    clusters: np.ndarray
    cluster_column: str


def test_text(config: EvaluateConfig, ingest: IngestOutput) -> ScoredText:
    """The held-out test documents scored: the domain slice and the general slice, capped (a
    prefix is a fair sample: the file is in hash order). Dev documents are never scored here."""
    column = "group" if "group" in pq.read_schema(ingest.eval_file).names else "doc_id"
    parts = ingest.held_out_parts(["source", "text", column])
    general_cap = config.max_general_docs or config.max_eval_docs
    domain = parts["domain"]["test"].slice(0, config.max_eval_docs)
    general = parts["general"]["test"].slice(0, general_cap)
    if not domain.num_rows:
        raise QualityGateError("evaluate: the held-out test part has no domain documents")
    held = pa.concat_tables([domain, general])
    _, codes = np.unique(np.array([str(i) for i in held.column(column).to_pylist()]),
                         return_inverse=True)
    return ScoredText(held.column("text").to_pylist(), held.column("source").to_pylist(),
                      [False] * domain.num_rows + [True] * general.num_rows, codes, column)


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
            finetune: dict[str, Any], promoted: bool = False) -> dict[str, Any]:
    """The plain-numbers verdict at the top of the report (its headline: ``verdict.py``), and
    each gate's outcome."""
    who, parts, tail = headline(metrics, base_model, promoted)
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
    gates += forgetting_gate(metrics, config)
    text = f"{who}: " + ", ".join(parts) if parts else who
    return {"text": text + "".join(f"; {t}" for t in tail), "gates": gates}


def forgetting_gate(metrics: dict[str, float], config: EvaluateConfig) -> list[dict[str, Any]]:
    """``evaluate.max_general_degradation`` on the general text: vs the control where there is
    one (masked: the forgetting that counts, as the headline reads it), else vs the base."""
    limit = config.max_general_degradation
    for name, who in (("general_change_vs_control_masked", "the control's (masked)"),
                      ("general_bits_per_byte_change", "the base model's")):
        if limit is not None and name in metrics:
            value = float(metrics[name])
            return [{"gate": "evaluate.max_general_degradation", "limit": limit, "value": value,
                     "vs": "control" if "control" in name else "base",
                     "passed": bool(value <= limit),
                     "message": f"general bits-per-byte rose {value:+.1%} over {who}; "
                                f"evaluate.max_general_degradation is {limit:.1%}"}]
    return []


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


def heldout_twins(ingest: IngestOutput) -> dict[str, dict[str, float]]:
    """``rates`` of the held-out slice's test part against the training text, per source, and
    over the domain sources as ``domain`` (the verdict's domain slice)."""
    import pyarrow.parquet as pq

    parts = ingest.held_out_parts(["source", "text"])
    test = pa.concat_tables([parts["domain"]["test"], parts["general"]["test"]])
    train = (pq.read_table(p, columns=["text"]).column("text") for p in ingest.train_shards)
    return twins.with_domain(twins.rates(test.column("text"),
                                         test.column("source").to_pylist(), train),
                             ingest.general_sources)


def twin_metrics(split: dict[str, dict[str, float]]) -> dict[str, float]:
    """``heldout_twin_rate`` and ``heldout_covered_rate`` over the domain test text, and per
    source (``..._<source>``)."""
    out = {}
    for name, row in split.items():
        suffix = "" if name == "domain" else f"_{name}"
        out[f"heldout_twin_rate{suffix}"] = row["twin_rate"]
        out[f"heldout_covered_rate{suffix}"] = row["covered_rate"]
    return out


def score_all(config: EvaluateConfig, given: Inputs, held: ScoredText, memo: Memo | None = None
              ) -> tuple[dict[str, Any], dict[str, float], dict[str, Any], dict[str, Any]]:
    """Each model's per-slice and per-source figures; the changes between models (unmasked and
    masked) with the masked figures; the context token chosen on the dev part; and each
    model's per-document scores. Standard errors: a bootstrap over the held-out groups."""
    texts, sources, is_general = held.texts, held.sources, held.is_general
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = given.ingest.held_out_parts(["source", "text"])["domain"]["dev"]
    scores, context = score_models(
        given.model_dirs(), texts, dev.slice(0, config.context_dev_docs).column("text").to_pylist(),
        given.pretrain.seq_len, config.batch_size, device, memo=memo,
        precision=config.precision)
    slices = {"domain": np.flatnonzero(~np.array(is_general)),
              "general": np.flatnonzero(np.array(is_general))}
    draws = ({k: bootstrap_weights(held.clusters[v], config.bootstrap_samples)
              for k, v in slices.items() if len(v)} if config.bootstrap_samples else None)
    per = {name: slice_scores(s, texts, sources, is_general, draws)
           for name, s in scores.items()}
    return per, {**changes(scores, slices, draws), **masked_changes(scores, slices, draws),
                 **masked_metrics(per, scores["adapted"], slices["domain"])}, context, scores


def zero_shot(config: EvaluateConfig, given: Inputs, out_dir: Path, memo: Memo
              ) -> tuple[dict[str, float], dict[str, Any]]:
    """Zero-shot multiple choice on finetune's test splits (and their lm-eval export) for the
    first seed's models; with several training seeds, every seed's adapted model and control
    on the same rows (``zeroshot_seeds.py``, the report's ``seeds``)."""
    metrics, details = zeroshot.evaluate(config, given.finetune, given.model_dirs(), out_dir,
                                         memo)
    by_seed = seeds.seed_models(given.artifacts)
    more, table = zeroshot_seeds.over_seeds(
        config, given.finetune, {arm: [m.hf_dir for m in ms] for arm, ms in by_seed.items()},
        zeroshot_rules.rule_of(metrics), [m.spec.config.seed for m in by_seed["adapted"]],
        out_dir, memo)
    return {**metrics, **more}, {**details, "seeds": table}


def full_verdict(metrics: dict[str, float], config: EvaluateConfig, given: Inputs,
                 zero_shot: bool) -> dict[str, Any]:
    """The verdict with the words over seeds and zero-shot, and the twin-rate warning."""
    ft = given.finetune
    result = verdict(metrics, config, given.reference(),
                     {**ft.metrics, "seeds": len(ft.seeds)}, promoted=given.previous is not None)
    result["text"] += seeds.verdict_text(metrics)
    if zero_shot:
        result["text"] += ", " + zeroshot_seeds.verdict_text(metrics)
    twin_rate = metrics.get("heldout_twin_rate")
    if config.max_twin_rate is not None and twin_rate is not None \
            and twin_rate > config.max_twin_rate:
        result["warnings"] = [f"{twin_rate:.1%} of the domain's test documents have a near-twin "
                              f"(one-word edit) in the training text, over "
                              f"evaluate.max_twin_rate {config.max_twin_rate:.0%}: set "
                              "ingest.held_out.group_by"]
    return result


def run(config: EvaluateConfig, inputs: Mapping[str, Artifact], out_dir: Path) -> Manifest:
    given = Inputs.of(inputs)
    tok = AutoTokenizer.from_pretrained(given.pretrain.hf_dir)
    held = test_text(config, given.ingest)
    split = heldout_twins(given.ingest)  # near-twins of the test text in training
    memo = Memo(out_dir)  # each model's scores, reused where the same model scored the same
    per, changed, context, scores = score_all(config, given, held, memo)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # pretrain.seeds > 1: the other seeds' models on the same documents, after the same
    # context token (seeds.py); their interval replaces the one-run interval of the changes
    spread, seed_table = seeds.over_seeds(
        config, given.artifacts, scores, held,
        lambda d: score_models({memo.label(d): d}, held.texts, [], given.pretrain.seq_len,
                               config.batch_size, device, context, memo,
                               config.precision)[0][memo.label(d)])
    per_source, base_scores = per["adapted"], per.get("base")
    ft = given.finetune
    # zero-shot multiple choice on finetune's test splits (every seed's models with several)
    zs_metrics, zs = zero_shot(config, given, out_dir, memo) if config.zeroshot else ({}, None)
    metrics = {
        **(comparison(config, per_source, base_scores, gate=False) if base_scores else {}),
        **changed,
        **lm_metrics(per),
        **spread,  # train_seeds; with several: the spread over seeds and the interval
        # finetune_accuracy, finetune_macro_f1(_std), finetune_base_macro_f1, ..._gain
        **{f"finetune_{k}": v for k, v in ft.metrics.items()},
        # the tokenizer training used: domain (from scratch), base or extended (continue)
        "tokenizer_fertility": given.tokenizer.fertility(given.pretrain.tokenizer),
        "vocab_size": float(len(tok)),
        **twin_metrics(split),
        **zs_metrics,
    }
    result = full_verdict(metrics, config, given, bool(zs_metrics))
    selection = given.pretrain.selection
    evaluation = {"metrics": metrics, "per_source": per_source, "base_per_source": base_scores,
                  "twins": split,
                  "control_per_source": per.get("control"), "verdict": result,
                  "selection": selection.model_dump() if selection else None,
                  "context": context, "scoring": scoring_note(metrics, context, config.precision)
                  + memo.note(),
                  "base_label": None if given.previous is not None
                  else base_label(given.pretrain.base_model), "seeds": seed_table,
                  "zeroshot": zs, "reused_scores": memo.reused}
    (out_dir / "metrics.json").write_text(json.dumps(evaluation, indent=2))
    write_report(out_dir, "Evaluation report", [], given.artifacts, evaluation)
    failed = [g for g in result["gates"] if not g["passed"]]
    if failed and base_scores:
        gain_failed = any(g["gate"] == "evaluate.min_domain_gain" for g in failed)
        raise GateFailure("evaluate: the adapted model fails its quality gates: " + "; ".join(
            ([_domain_gate_message(config, per_source, base_scores)] if gain_failed else [])
            + [g["message"] for g in failed if "message" in g]))
    return Manifest(
        stage="evaluate",
        counts={"eval_docs": len(held.texts), "eval_tokens": int(per_source["domain"]["tokens"])},
        metrics=metrics,
        extra={"per_source": per_source, "base_per_source": base_scores,
               "control_per_source": per.get("control"), "verdict": result,
               "context": context, "reused_scores": memo.reused},
    )
