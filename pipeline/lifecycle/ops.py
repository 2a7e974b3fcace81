"""Operations on a workdir: lineage of an artifact, two runs side by side, and garbage
collection of unreferenced artifacts.

    dapt lineage KEY        upstream down to source files, downstream up to eval metrics
    dapt compare RUN RUN    stages (same artifact or not) and every metric of two runs
    dapt report RUN         regenerate a run's report (md, html, plots) from its artifacts
    dapt inspect DOMAIN --excluded [--reason R]   what ingest left out, by reason, with samples
    dapt gc [--yes]         list (or delete) artifacts no kept run references
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from pipeline.config import PiiConfig
from pipeline.engine.artifacts import Artifact, ArtifactStore
from pipeline.engine.catalog import Catalog, run_status
from pipeline.lifecycle import report
from pipeline.stages.evaluate.output import EvaluateOutput
from pipeline.stages.finetune.output import FinetuneOutput
from pipeline.stages.ingest.artifact import IngestOutput
from pipeline.stages.pretrain import model_card

# An artifact's inputs are keyed by name, and a name is the kind of the artifact it names (a
# fanned-out step's input is "kind[variant]"), except these: a second pretrain artifact (the
# promoted model a continued run starts from, the one evaluate gates it against;
# pipeline.lifecycle.promotion).
INPUT_STAGES = {"promoted": "pretrain", "previous": "pretrain"}


def input_stage(name: str) -> str:
    """The kind of the artifact an input named ``name`` is."""
    return INPUT_STAGES.get(name, name.partition("[")[0])

def find(store: ArtifactStore, key_prefix: str) -> tuple[str, str]:
    """(stage, key) of the one artifact whose key starts with ``key_prefix``."""
    found = [(a.stage, a.key) for a in store.list() if a.key.startswith(key_prefix)]
    if len(found) != 1:
        raise ValueError(f"{len(found)} artifacts match {key_prefix!r}"
                         + (f": {found}" if found else "; see `dapt runs` for keys"))
    return found[0]


def find_run(catalog: Catalog, prefix: str) -> dict:
    """The one run whose id starts with ``prefix``."""
    found = catalog.query("SELECT * FROM runs WHERE starts_with(run_id, ?)", [prefix])
    if len(found) != 1:
        raise ValueError(f"{len(found)} runs match {prefix!r}; see `dapt runs` for run ids")
    return {**found[0], "status": run_status(found[0])}


def compare(catalog: Catalog, prefix_a: str, prefix_b: str) -> dict:
    """Two runs side by side: per stage the artifact each used, then every metric of both."""
    runs = [find_run(catalog, p) for p in (prefix_a, prefix_b)]
    stages: dict[str, list[str | None]] = {}
    metrics: dict[str, list[float | None]] = {}
    for i, run in enumerate(runs):
        for row in catalog.stage_runs(run["run_id"]):
            if row["status"] != "completed":
                continue
            stages.setdefault(row["step"], [None, None])[i] = row["artifact_key"]
            for name, value in json.loads(row["metrics"] or "{}").items():
                metrics.setdefault(f"{row['step']}.{name}", [None, None])[i] = value
    return {"runs": [{k: str(r[k]) for k in ("run_id", "domain", "profile", "status")}
                     for r in runs],
            "stages": stages, "metrics": metrics}


def compare_lines(result: dict) -> list[str]:
    a, b = result["runs"]
    lines = [f"A {a['run_id']}  {a['domain']}/{a['profile']}  {a['status']}",
             f"B {b['run_id']}  {b['domain']}/{b['profile']}  {b['status']}", "",
             f"{'stage':<10} {'A':<18} {'B':<18}"]
    for stage, (ka, kb) in result["stages"].items():
        lines.append(f"{stage:<10} {ka or '-':<18} {kb or '-':<18}"
                     + ("  same artifact" if ka == kb else ""))
    lines += ["", f"{'metric':<44} {'A':>12} {'B':>12} {'B - A':>12}"]
    for name, (va, vb) in sorted(result["metrics"].items()):
        delta = f"{vb - va:+12.4g}" if va is not None and vb is not None else f"{'':>12}"
        shown = [f"{v:12.4g}" if v is not None else f"{'-':>12}" for v in (va, vb)]
        lines.append(f"{name:<44} {shown[0]} {shown[1]} {delta}")
    return lines


def write_run_report(store: ArtifactStore, catalog: Catalog, run: dict, out_dir: Path,
                     intro: list[report.Block] | None = None, pii: PiiConfig | None = None
                     ) -> Path:
    """``report.md``, ``report.html``, ``plots/``, ``summary.md`` (the key table) and
    ``model-card.md`` (the export's card with the evaluation; ``pii``: the run's PII policy,
    named there when given) of a run whose evaluate stage completed, from the artifacts its
    catalog rows name."""
    rows = [r for r in catalog.stage_runs(run["run_id"]) if r["status"] == "completed"]
    # by step: "pretrain" is the first training seed's model, "pretrain[seed1]" the next
    artifacts = {r["step"]: store.get(r["stage"], r["artifact_key"]) for r in rows}
    evaluated = artifacts.get("evaluate")
    if evaluated is None:
        raise ValueError(f"run {run['run_id']} has no evaluate artifact (it ran "
                         f"{', '.join(artifacts) or 'no stage'}); a report needs an evaluation")
    # the evaluate manifest names every artifact it was built from, whatever this run rebuilt
    for name, key in EvaluateOutput(evaluated).inputs.items():
        if name in INPUT_STAGES:  # another model of the same stage (the promoted one)
            continue
        if artifacts.get(name) is None:
            artifacts[name] = store.get(input_stage(name), key)
    missing = [s for s, a in artifacts.items() if a is None]
    if missing:
        raise ValueError(f"run {run['run_id']}: artifacts of {missing} are gone (dapt gc?)")
    evaluation = EvaluateOutput(evaluated)
    title = f"dapt report: {run['domain']} ({run['profile']})"
    stage_table = ("table", ["stage", "artifact key", "cache hit", "seconds"],
                   [[r["step"], f"`{r['artifact_key']}`", r["cache_hit"],
                     f"{r['duration_s']:.1f}"] for r in rows])
    intro = [("p", f"Run `{run['run_id']}`."), *(intro or []), stage_table]
    out_dir.mkdir(parents=True, exist_ok=True)
    # The evaluate stage drew these plots from the same artifacts with the same code (its key
    # covers pipeline.lifecycle.report): reuse them rather than draw them again (2-5 s of a cached
    # rerun).
    path = report.write_report(out_dir, title, intro, artifacts, evaluation.evaluation,
                               images=evaluation.plots)
    (out_dir / "summary.md").write_text(report.summary_markdown(title, artifacts,
                                                                evaluation.evaluation))
    shutil.copy(evaluation.metrics_file, out_dir / "metrics.json")
    _write_model_card(out_dir, run, artifacts, evaluation.evaluation, pii)
    return path



def _write_model_card(out_dir: Path, run: dict, artifacts: dict[str, Artifact],
                      evaluation: dict, pii: PiiConfig | None) -> None:
    """``model-card.md``: the export's card with the run's evaluation and verdict."""
    pretrain = artifacts.get("pretrain")
    card = pretrain.path / "hf" / model_card.CARD_FILE if pretrain is not None else None
    if card is None or not card.exists():  # exports from before cards had none
        return
    finetune = artifacts.get("finetune")
    ingest = artifacts.get("ingest")
    (out_dir / "model-card.md").write_text(model_card.run_card(
        card.read_text(), domain=run["domain"], profile=run["profile"], run_id=run["run_id"],
        verdict=report.to_markdown(report.verdict_blocks(evaluation)).strip(),
        rows=report.key_rows(evaluation, FinetuneOutput(finetune)) if finetune else [],
        pii=pii, ingest_counts=IngestOutput(ingest).counts if ingest else {}))

def latest_ingest(store: ArtifactStore, catalog: Catalog, domain: str) -> Artifact:
    """The ingest artifact of the domain's most recent run that completed ingest."""
    found = catalog.query(
        "SELECT s.artifact_key FROM stage_runs s JOIN runs r USING (run_id) WHERE r.domain = ? "
        "AND s.stage = 'ingest' AND s.status = 'completed' ORDER BY s.started_at DESC LIMIT 1",
        [domain])
    art = store.get("ingest", found[0]["artifact_key"]) if found else None
    if art is None:
        raise ValueError(f"no ingest artifact for domain {domain!r} in this workdir; run "
                         f"`dapt run {domain} --only ingest` first")
    return art


def excluded(art: Artifact, reason: str | None = None, limit: int = 5,
             width: int = 160, log: str = "excluded") -> dict:
    """Counts of excluded documents by reason, and up to ``limit`` samples of each reason (or
    of ``reason`` alone), from the artifact's exclusion log; with ``log="modified"``, the same
    for the documents ingest changed (mojibake repair, PII redaction)."""
    ingest = IngestOutput(art)
    logged = ingest.excluded_file if log == "excluded" else ingest.modified_file
    path = str(logged).replace("'", "''")
    con = duckdb.connect()
    counts = dict(con.execute(f"SELECT reason, count(*) FROM read_parquet('{path}') "
                              "GROUP BY reason ORDER BY count(*) DESC, reason").fetchall())
    if reason is not None and reason not in counts:
        raise ValueError(f"no document was {log} for {reason!r}; reasons here: "
                         f"{', '.join(counts) or 'none'}")
    samples = con.execute(
        f"SELECT reason, doc_id, source, detail, left(coalesce(text, ''), {int(width)}) AS text "
        f"FROM (SELECT *, row_number() OVER (PARTITION BY reason ORDER BY doc_id) AS rn "
        f"FROM read_parquet('{path}')) WHERE rn <= {int(limit)} AND (? IS NULL OR reason = ?) "
        "ORDER BY reason, doc_id", [reason, reason]).fetchall()
    cols = ("reason", "doc_id", "source", "detail", "text")
    return {"artifact": art.key, "log": log, "docs_in": ingest.docs_in,
            "counts": counts,
            "samples": [dict(zip(cols, row, strict=True)) for row in samples]}


def excluded_lines(result: dict) -> list[str]:
    lines = [f"ingest/{result['artifact']}: {sum(result['counts'].values()):,} of "
             f"{result['docs_in']:,} documents {result['log']}", ""]
    lines += [f"  {n:>9,}  {reason}" for reason, n in result["counts"].items()]
    current = None
    for s in result["samples"]:
        if s["reason"] != current:
            current = s["reason"]
            lines += ["", f"== {current}"]
        lines.append(f"{s['doc_id']}  ({s['detail'] or '-'})")
        lines.append("    " + s["text"].replace("\n", " | "))
    return lines


def file_inputs(art: Artifact) -> list[str]:
    """The files outside the store an artifact was built from (ingest's sources, finetune's
    labelled tasks), each as a ``<- source|task NAME: PATH`` line."""
    if art.stage == "ingest":
        return [f"<- source {name}: {path}"
                for name, paths in IngestOutput(art).source_files.items() for path in paths]
    if art.stage == "finetune":
        return [f"<- task {task}: {path}" for task, path in FinetuneOutput(art).task_files.items()]
    return []


def lineage(store: ArtifactStore, key_prefix: str) -> list[str]:
    """Lines of an indented tree: the artifact, its inputs down to files, its dependents."""
    stage, key = find(store, key_prefix)
    by_input: dict[str, list[tuple[str, str]]] = {}
    for art in store.list():
        for input_key in art.manifest.inputs.values():
            by_input.setdefault(input_key, []).append((art.stage, art.key))

    def describe(s: str, k: str) -> str:
        art = store.get(s, k)
        if art is None:
            return f"{s}/{k} (removed)"
        m = art.manifest
        shown = ", ".join(f"{n}={v:.4g}" for n, v in list(m.metrics.items())[:4])
        return f"{s}/{k}  {m.created_at}" + (f"  {shown}" if shown else "")

    lines = [describe(stage, key), "upstream:"]
    seen: set[str] = set()

    def up(s: str, k: str, depth: int) -> None:
        art = store.get(s, k)
        if art is None or k in seen:
            return
        seen.add(k)
        m = art.manifest
        lines.extend("  " * depth + line for line in file_inputs(art))
        for name, input_key in m.inputs.items():
            stage_of = input_stage(name)
            label = f"{name}: " if name != stage_of else ""
            if input_key in seen:
                lines.append("  " * depth + f"<- {label}{stage_of}/{input_key} (shown above)")
                continue
            lines.append("  " * depth + "<- " + label + describe(stage_of, input_key))
            up(stage_of, input_key, depth + 1)

    up(stage, key, 1)
    lines.append("downstream:")

    def down(k: str, depth: int) -> None:
        for s, child in sorted(set(by_input.get(k, []))):
            lines.append("  " * depth + "-> " + describe(s, child))
            down(child, depth + 1)

    down(key, 1)
    return lines


@dataclass(frozen=True)
class Garbage:
    path: Path
    reason: str
    bytes: int


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def find_garbage(store: ArtifactStore, catalog: Catalog, keep_runs: int | None = None
                 ) -> list[Garbage]:
    """Artifacts no kept run references (directly or as an input of one it references), plus
    leftovers of failed or interrupted builds.

    With ``keep_runs`` only the newest N runs of each domain count as references. Every model
    ever promoted (``dapt models promoted``, and those a rollback may restore) is kept.
    """
    rank = "row_number() OVER (PARTITION BY domain ORDER BY started_at DESC)"
    rows = catalog.query(
        f"SELECT DISTINCT s.stage, s.artifact_key FROM stage_runs s JOIN "
        f"(SELECT run_id, {rank} AS n FROM runs) r USING (run_id) "
        f"WHERE s.status = 'completed'" + (f" AND r.n <= {int(keep_runs)}" if keep_runs else ""))
    referenced = {(r["stage"], r["artifact_key"]) for r in rows}
    # every model ever promoted: the current one, and those a rollback may restore
    referenced |= {("pretrain", r["key"]) for r in catalog.promotions()
                   if r["action"] != "rejected"}
    # What a kept artifact was built from is kept too (a prepared base model is never a stage
    # run of its own, but pretrain artifacts name it as an input).
    todo = list(referenced)
    while todo:
        art = store.get(*todo.pop())
        for name, input_key in (art.manifest.inputs.items() if art else ()):
            if (input_stage(name), input_key) not in referenced:
                referenced.add((input_stage(name), input_key))
                todo.append((input_stage(name), input_key))
        # a kept ingest drop's per-shard work stays reusable (`--only ingest` rebuilds from it)
        shard_keys = IngestOutput(art).shard_keys if art and art.stage == "ingest" else []
        referenced.update(("ingest-shard", k) for k in shard_keys)
    garbage = [Garbage(a.path, "unreferenced", _size(a.path)) for a in store.list()
               if (a.stage, a.key) not in referenced]
    garbage += [Garbage(g.path, g.reason, _size(g.path)) for g in store.leftovers()]
    return garbage


def collect_garbage(garbage: list[Garbage], catalog: Catalog) -> None:
    for g in garbage:
        shutil.rmtree(g.path, ignore_errors=True)
        if g.reason == "unreferenced":
            catalog.query("DELETE FROM artifacts WHERE stage = ? AND key = ?",
                          [g.path.parent.name, g.path.name])



# What `dapt run`'s closing table shows per stage: (where, name, label); the first one found.
KEY_METRICS = {
    "ingest": [("counts", "kept", "docs kept")],
    "tokenizer": [("metrics", "fertility", "fertility")],
    "pretrain": [("metrics", "eval_loss", "held-out loss")],
    "finetune": [("metrics", "macro_f1", "macro-F1"), ("metrics", "accuracy", "accuracy")],
    "evaluate": [("metrics", "heldout_perplexity", "held-out perplexity")],
}


def summary_rows(catalog: Catalog, run_id: str) -> list[list[str]]:
    """stage | cache hit or built (or failed) | seconds | key metric, for one run."""
    rows = []
    for r in catalog.stage_runs(run_id):
        found = catalog.query("SELECT counts, metrics FROM artifacts WHERE stage = ? AND key = ?",
                              [r["stage"], r["artifact_key"]])
        values = {k: json.loads(v) if v else {} for k, v in (found[0] if found else {}).items()}
        metric = next((f"{label} {values[where][name]:.4g}"
                       for where, name, label in KEY_METRICS.get(r["stage"], [])
                       if name in values.get(where, {})), "")
        status = "failed" if r["status"] == "failed" else "cache hit" if r["cache_hit"] else "built"
        rows.append([r["step"], status, f"{r['duration_s']:.1f}", metric])
    return rows


def summary_lines(catalog: Catalog, run_id: str) -> list[str]:
    header = ["stage", "result", "seconds", "key metric"]
    rows = summary_rows(catalog, run_id)
    widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=True)]
    fmt = "  ".join(f"{{:{'>' if i == 2 else '<'}{w}}}" for i, w in enumerate(widths))
    return [fmt.format(*cells).rstrip()
            for cells in (header, ["-" * w for w in widths], *rows)]


def candidate_blocks(evaluation: Mapping[str, Any]) -> list[report.Block]:
    """A rejected candidate's verdict (vs control, with intervals), its twin table and its
    zero-shot table: what a reader needs to see why the gate failed."""
    return [("h2", "The candidate's evaluation"), *report.verdict_blocks(evaluation),
            *report.zeroshot_blocks(evaluation)]


def write_failure_report(catalog: Catalog, run: dict, out_dir: Path, error: str,
                         not_promoted: bool = False,
                         candidate: Mapping[str, Any] | None = None) -> Path:
    """``report.md`` and ``report.html`` of a run that stopped: the stage that failed, its
    error, and what completed before it; with ``not_promoted``, a model that failed evaluate's
    gates (pipeline.lifecycle.promotion), and ``candidate``, its evaluation: the verdict, the
    twin table and the zero-shot table come right after the gate that failed."""
    rows = catalog.stage_runs(run["run_id"])
    failed = [r["step"] for r in rows if r["status"] == "failed"]
    title = (f"dapt report: {run['domain']} ({run['profile']}): "
             + ("NOT PROMOTED" if not_promoted else "FAILED"))
    where = f"in stage **{failed[-1]}**" if failed else "before any stage completed"
    blocks: list[report.Block] = [
        ("h1", title),
        ("p", f"Run `{run['run_id']}`'s model failed evaluate's gates: the domain's promoted "
              "model did not change." if not_promoted else
              f"Run `{run['run_id']}` failed {where}. Nothing downstream ran, so there is no "
              "evaluation to report; fix the error and rerun: completed stages are reused."),
        ("h2", "Verdict" if not_promoted else "Error"), ("p", error),
        *(candidate_blocks(candidate) if candidate else []),
        ("h2", "Stages"),
        ("table", ["stage", "artifact key", "result", "seconds"],
         [[r["step"], f"`{r['artifact_key']}`", row[1], row[2]]
          for r, row in zip(rows, summary_rows(catalog, run["run_id"]), strict=True)]),
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.html").write_text(report.to_html(blocks, {}, title))
    (out_dir / "report.md").write_text(report.to_markdown(blocks))
    return out_dir / "report.md"
