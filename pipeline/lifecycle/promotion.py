"""Promotion: each domain's promoted model, how a run's verdict moves it, rollback, lineage.

The promoted model of a domain is a pointer in the catalog (``promotions`` table) to a pretrain
artifact. It moves only here:

- ``decide``: after evaluate. A model whose gates all pass (``evaluate.min_domain_gain``,
  ``evaluate.max_general_degradation``) becomes the promoted one; a failing gate leaves the
  previous one promoted and records the candidate as ``rejected`` with the reason. A model is
  considered once: a cached rerun of an old run never moves the pointer back to its model.
- ``promote``: ``dapt models promote RUN``, the operator's choice (no gates).
- ``rollback``: ``dapt models rollback DOMAIN`` restores the model the current one replaced.

A run with ``pretrain.init: promoted`` continues the promoted model (``continued``): its
weights, its tokenizer (frozen within a lineage) and its mode must match the domain's config,
else the run stops with what to change. No stage imports this module, so editing it moves no
artifact key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import RunConfig
from pipeline.engine.artifacts import FAILED, Artifact, ArtifactStore, stable_hash
from pipeline.engine.catalog import Catalog
from pipeline.stages.evaluate.output import EvaluateOutput
from pipeline.stages.ingest.artifact import IngestOutput
from pipeline.stages.pretrain.output import PretrainOutput


@dataclass(frozen=True)
class Lineage:
    """What a run with ``pretrain.init: promoted`` continues: the promoted model (a pretrain
    artifact) and the tokenizer it was trained with."""

    model: Artifact
    tokenizer: Artifact

    @property
    def ingest_key(self) -> str:
        return self.model.manifest.inputs["ingest"]


@dataclass(frozen=True)
class Decision:
    promoted: bool  # the candidate is the promoted model after this decision
    message: str


def continued(catalog: Catalog, store: ArtifactStore, domain: str, run: RunConfig
              ) -> Lineage | None:
    """The lineage a run continues, or None: ``init: base``, or nothing promoted yet."""
    if run.pretrain.init != "promoted":
        return None
    key = catalog.promoted(domain)
    if key is None:
        return None
    model = store.get("pretrain", key)
    if model is None:
        raise FileNotFoundError(
            f"pretrain.init: promoted: domain {domain!r}'s promoted model pretrain/{key} is not "
            "in the artifact store any more; promote another (`dapt models promote RUN`), roll "
            "back (`dapt models rollback`), or set pretrain.init: base")
    tokenizer = store.get("tokenizer", model.manifest.inputs["tokenizer"])
    if tokenizer is None:
        raise FileNotFoundError(
            f"pretrain.init: promoted: the tokenizer of the promoted model pretrain/{key} "
            f"(tokenizer/{model.manifest.inputs['tokenizer']}) is not in the artifact store "
            "any more; set pretrain.init: base to start a new lineage")
    previous = PretrainOutput(model)
    fix = ("; set pretrain.init: base to start a new lineage from the base model (this "
           "retrains the tokenizer), or restore the setting")
    if previous.mode != run.pretrain.mode:
        raise ValueError(
            f"pretrain.init: promoted: the promoted model pretrain/{key} was trained with "
            f"pretrain.mode {previous.mode!r}, the config says {run.pretrain.mode!r}{fix}")
    if run.pretrain.mode == "continue" and previous.base_model != run.pretrain.base_model:
        raise ValueError(
            f"pretrain.init: promoted: the promoted model pretrain/{key} descends from base "
            f"model {previous.base_model!r}, the config names "
            f"{run.pretrain.base_model!r}{fix}")
    if stable_hash(run.tokenizer.model_dump(mode="json")) != tokenizer.manifest.config_hash:
        raise ValueError(
            f"pretrain.init: promoted: the `tokenizer` section differs from the one that built "
            f"the promoted model's tokenizer (tokenizer/{tokenizer.key}); a lineage keeps its "
            f"tokenizer, since a new one would invalidate the model's embeddings{fix}")
    return Lineage(model, tokenizer)


# --- the verdict ----------------------------------------------------------------------------


def promoted_line(catalog: Catalog, store: ArtifactStore, domain: str) -> str:
    """``pretrain/<key>  <its HF directory>`` of the domain's promoted model, or ``none``."""
    key = catalog.promoted(domain)
    if key is None:
        return "none"
    art = store.get("pretrain", key)
    return f"pretrain/{key}  {art.path / 'hf' if art else '(removed)'}"


def gate_text(gate: dict[str, Any]) -> str:
    """One failed gate in a line: 'general bits/byte +4.1% > 3%'."""
    value, limit = gate["value"], gate["limit"]
    if gate["gate"] == "evaluate.max_general_degradation":
        return (f"general bits/byte {value:+.1%} > {limit * 100:g}% "
                "(evaluate.max_general_degradation)")
    if gate["gate"] == "evaluate.min_domain_gain":
        return (f"domain bits/byte gain {value:+.4f} < {limit:g} "
                "(evaluate.min_domain_gain)")
    return f"{gate['gate']}: {value:g} against {limit:g}"


def failed_evaluation(store: ArtifactStore, key: str) -> Path | None:
    """The newest failed build of evaluate/<key> (evaluate writes metrics.json and the report
    before its gates raise)."""
    builds = sorted((store.root / "evaluate").glob(f"{FAILED}{key}-*"),
                    key=lambda p: p.stat().st_mtime)
    return builds[-1] if builds else None


def evaluation_report(evaluation_dir: Path | None) -> Path | None:
    """The ``report.md`` a failed evaluation left, or None."""
    if evaluation_dir is None:
        return None
    path = EvaluateOutput(evaluation_dir).report_file
    return path if path.exists() else None


def _candidate(evaluation_dir: Path | None) -> EvaluateOutput | None:
    """What a failed evaluate build left in ``evaluation_dir``, or None."""
    if evaluation_dir is None or not EvaluateOutput(evaluation_dir).exists:
        return None
    return EvaluateOutput(evaluation_dir)


def candidate_evaluation(evaluation_dir: Path | None) -> dict[str, Any] | None:
    """The evaluation (metrics.json) a failed evaluate build left, or None."""
    found = _candidate(evaluation_dir)
    return found.evaluation if found else None


def failed_gates(evaluation_dir: Path | None) -> list[dict[str, Any]]:
    """The gates a failed evaluate build's evaluation failed ([] without one)."""
    found = _candidate(evaluation_dir)
    return found.failed_gates if found else []


def decide(catalog: Catalog, domain: str, key: str, run_id: str,
           failures: list[str]) -> Decision:
    """Move the domain's pointer to pretrain/<key> unless a gate failed (``failures``) or the
    model was considered before; record the outcome."""
    current = catalog.promoted(domain)
    stays = (f"the promoted model stays pretrain/{current}" if current
             else "no model of this domain is promoted")
    if failures:
        reason = "; ".join(failures)
        catalog.record_promotion(domain, "rejected", key, current, run_id, reason)
        return Decision(False, f"not promoted: {reason}; {stays}")
    if current == key:
        return Decision(True, f"pretrain/{key} is already the promoted model")
    earlier = [r for r in catalog.promotions(domain) if key in (r["key"], r["previous"])
               and r["action"] != "rejected"]
    if earlier:
        return Decision(False, f"not promoted: pretrain/{key} was promoted before and later "
                               f"replaced (promotion #{earlier[-1]['seq']}); {stays}; "
                               f"`dapt models promote {run_id}` restores it")
    catalog.record_promotion(domain, "promoted", key, current, run_id, "gates passed")
    return Decision(True, f"promoted pretrain/{key}"
                          + (f" (replaces pretrain/{current})" if current else ""))


# --- the operator's commands -----------------------------------------------------------------


def run_model(catalog: Catalog, run_id: str) -> tuple[dict[str, Any], str]:
    """(run, key of the pretrain artifact it built or reused) for a run id or unique prefix."""
    runs = catalog.query("SELECT * FROM runs WHERE run_id LIKE ? ORDER BY started_at",
                         [run_id + "%"])
    if len(runs) != 1:
        raise ValueError(f"run {run_id!r}: {'no run' if not runs else 'several runs'} "
                         "match; see `dapt runs`")
    # the step named pretrain: with pretrain.seeds > 1, the first seed's (the one gated)
    rows = catalog.query("SELECT artifact_key FROM stage_runs WHERE run_id = ? AND "
                         "stage = 'pretrain' AND coalesce(step, stage) = 'pretrain' AND "
                         "status = 'completed'", [runs[0]["run_id"]])
    if not rows:
        raise ValueError(f"run {runs[0]['run_id']} has no completed pretrain stage: no model "
                         "to promote")
    return runs[0], rows[-1]["artifact_key"]


def promote(catalog: Catalog, store: ArtifactStore, run_id: str) -> Decision:
    """The operator promotes a run's model, gates or not (``dapt models promote RUN``)."""
    run, key = run_model(catalog, run_id)
    if store.get("pretrain", key) is None:
        raise ValueError(f"run {run['run_id']}'s model pretrain/{key} is not in the artifact "
                         "store any more")
    current = catalog.promoted(run["domain"])
    if current == key:
        return Decision(True, f"pretrain/{key} is already {run['domain']}'s promoted model")
    catalog.record_promotion(run["domain"], "manual", key, current, run["run_id"],
                             "promoted by the operator")
    return Decision(True, f"{run['domain']}: promoted pretrain/{key} (run {run['run_id']})"
                          + (f", replacing pretrain/{current}" if current else ""))


def rollback(catalog: Catalog, store: ArtifactStore, domain: str) -> Decision:
    """Restore the model the current one replaced (``dapt models rollback DOMAIN``)."""
    current = catalog.promoted(domain)
    if current is None:
        raise ValueError(f"domain {domain!r} has no promoted model to roll back")
    made = [r for r in catalog.promotions(domain)
            if r["key"] == current and r["action"] in ("promoted", "manual")]
    previous = made[-1]["previous"] if made else None
    if previous is None:
        raise ValueError(f"pretrain/{current} is the first model promoted for {domain!r}: "
                         "there is nothing earlier to roll back to")
    if store.get("pretrain", previous) is None:
        raise ValueError(f"the model to restore, pretrain/{previous}, is not in the artifact "
                         "store any more; promote another with `dapt models promote RUN`")
    catalog.record_promotion(domain, "rollback", previous, current, None,
                             f"rolled back from pretrain/{current}")
    return Decision(True, f"{domain}: promoted pretrain/{previous} again (rolled back from "
                          f"pretrain/{current})")


def _model_run(catalog: Catalog, key: str) -> str:
    rows = catalog.query("SELECT run_id FROM stage_runs WHERE stage = 'pretrain' AND "
                         "artifact_key = ? AND status = 'completed' AND NOT cache_hit "
                         "ORDER BY started_at LIMIT 1", [key])
    return rows[0]["run_id"] if rows else "?"


def lineage_lines(catalog: Catalog, store: ArtifactStore, domain: str) -> list[str]:
    """The promoted model's chain back to its lineage's first model (each with the drop it
    trained on), then the domain's promotion history."""
    current = catalog.promoted(domain)
    lines = [f"{domain}: promoted model "
             + (f"pretrain/{current}" if current else "none")]
    key, seen = current, set()
    if key:
        lines.append("chain (newest first; each continued model names the one it started from):")
    while key and key not in seen:
        seen.add(key)
        art = store.get("pretrain", key)
        if art is None:
            lines.append(f"  pretrain/{key} (removed)")
            break
        m, model = art.manifest, PretrainOutput(art)
        ingest = store.get("ingest", m.inputs.get("ingest", ""))
        kept = IngestOutput(ingest).kept if ingest else "?"
        parent = m.inputs.get("promoted")
        start = (f"continued pretrain/{parent}" if parent
                 else f"from base {model.base_model}" if model.mode == "continue"
                 else "from fresh weights")
        drop = f"ingest/{m.inputs.get('ingest')} ({kept} docs kept)"
        trained = model.tokens_trained
        lines.append(f"  pretrain/{key}  run {_model_run(catalog, key)}  {start}")
        lines.append(f"      drop {drop}, tokenizer/{m.inputs.get('tokenizer')}, "
                     f"{'?' if trained is None else trained} tokens trained")
        key = parent
    history = catalog.promotions(domain)
    if history:
        lines.append("history:")
    for r in history:
        what = {"rollback": f"pretrain/{r['key']} restored, pretrain/{r['previous']} demoted",
                "rejected": f"pretrain/{r['key']} not promoted"}.get(
            r["action"], f"pretrain/{r['key']}")
        lines.append(f"  #{r['seq']} {r['recorded_at']:%Y-%m-%d %H:%M:%S} {r['action']:<9} "
                     f"{what}" + (f"  run {r['run_id']}" if r["run_id"] else "")
                     + (f"  ({r['reason']})" if r["reason"] else ""))
    return lines
