"""The CLI's commands over a workdir's history: `dapt runs`, `lineage`, `compare`,
`report`, `inspect`, `gc` (registered on the app by ``flows.cli``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from flows import crashed
from flows.cli_common import (
    Workdir,
    fail,
    open_catalog,
    workdir_path,
)


def runs(domain: Annotated[str | None, typer.Argument()] = None, workdir: Workdir = None,
         limit: Annotated[int, typer.Option(help="Most recent N runs.")] = 10,
         as_json: Annotated[bool, typer.Option("--json", help="Machine-readable.")] = False
         ) -> None:
    """Past runs from the catalog: stages, artifact keys, cache hits, metrics, times."""
    work = workdir_path(workdir)
    catalog = open_catalog(work)
    rows = catalog.runs(domain, limit)
    crashed.mark_crashed(work, rows)  # the Prefect UI shows them Crashed too
    for r in rows:
        r["stages"] = catalog.stage_runs(r["run_id"])
        if r["params"] and json.loads(r["params"]).get("kind") == "sweep":
            r["sweep"] = {m["name"]: m["value"] for m in catalog.query(
                "SELECT name, value FROM metrics WHERE run_id = ? AND stage = 'sweep'",
                [r["run_id"]])}
    if as_json:
        typer.echo(json.dumps(rows, default=str, indent=2))
        return
    for r in rows:
        took = (r["finished_at"] - r["started_at"]).total_seconds() if r["finished_at"] else None
        typer.echo(f"{r['run_id']}  {r['domain']}/{r['profile']}  {r['status']}  "
                   f"started {r['started_at']:%Y-%m-%d %H:%M:%S}"
                   + (f"  {took:.0f}s" if took is not None else ""))
        for s in r["stages"]:
            m = json.loads(s["metrics"]) if s["metrics"] else {}
            shown = ", ".join(f"{k}={v:.4g}" for k, v in list(m.items())[:4])
            typer.echo(f"    {s['step']:<10} {s['artifact_key']}  "
                       f"{'cached' if s['cache_hit'] else s['status']:<9} "
                       f"{s['duration_s']:>7.1f}s  {shown}")
        if r.get("sweep"):
            points = sum(name.endswith(".domain_change") for name in r["sweep"])
            typer.echo(f"    sweep: {points} points, pick lr "
                       f"{r['sweep']['pick_lr']:g}, replay {r['sweep']['pick_replay']:g}")
        if r["error"]:
            label = "error" if r["status"] == "failed" else "note"
            typer.echo(f"    {label}: {r['error'][:300]}")
        if r["report_path"]:
            typer.echo(f"    report: {r['report_path']}")



def lineage(target: Annotated[str | None, typer.Argument(
        help="A domain (its chain of promoted models and drops; default: every domain with "
             "one), or an artifact key or unique prefix (its upstream and downstream).")] = None,
            workdir: Workdir = None) -> None:
    """A domain's models and drops, or an artifact's upstream (to its source files) and
    downstream (to eval metrics)."""
    from pipeline.engine.artifacts import ArtifactStore
    from pipeline.engine.catalog import Catalog
    from pipeline.lifecycle import ops, promotion

    work = workdir_path(workdir)
    store = ArtifactStore(work / "artifacts")
    path = work / "catalog.duckdb"
    catalog = Catalog(path) if path.exists() else None
    domains = sorted({r["domain"] for r in catalog.promotions()}) if catalog else []
    if target is None or target in domains:
        if catalog is None or not domains:
            raise fail("no domain has a promoted model yet (see `dapt models promoted`)")
        for name in [target] if target else domains:
            typer.echo("\n".join(promotion.lineage_lines(catalog, store, name)))
        return
    try:
        lines = ops.lineage(store, target)
    except ValueError as exc:
        raise fail(str(exc)) from None
    typer.echo("\n".join(lines))


def compare(run_a: Annotated[str, typer.Argument(help="A run id or a unique prefix.")],
            run_b: Annotated[str, typer.Argument(help="A run id or a unique prefix.")],
            workdir: Workdir = None,
            as_json: Annotated[bool, typer.Option("--json", help="Machine-readable.")] = False
            ) -> None:
    """Two runs side by side: which artifacts they share, and every metric with B - A."""
    from pipeline.lifecycle import ops

    catalog = open_catalog(workdir_path(workdir))
    try:
        result = ops.compare(catalog, run_a, run_b)
    except ValueError as exc:
        raise fail(str(exc)) from None
    typer.echo(json.dumps(result, indent=2) if as_json else "\n".join(ops.compare_lines(result)))


def report(run_id: Annotated[str, typer.Argument(help="A run id or a unique prefix.")],
           workdir: Workdir = None,
           out: Annotated[Path | None, typer.Option(
               help="Where to write; default runs/<run_id>/ in the workdir.")] = None) -> None:
    """Regenerate a run's report.md, report.html (plots embedded) and plots/ from its
    artifacts."""
    from pipeline.engine.artifacts import ArtifactStore
    from pipeline.lifecycle import ops

    work = workdir_path(workdir)
    catalog = open_catalog(work)
    try:
        run = ops.find_run(catalog, run_id)
        written = ops.write_run_report(ArtifactStore(work / "artifacts"), catalog, run,
                                       out or work / "runs" / run["run_id"])
    except ValueError as exc:
        raise fail(str(exc)) from None
    typer.echo(f"report: {written}\nhtml: {written.with_suffix('.html')}")


def inspect(domain: Annotated[str, typer.Argument(help="A domain name.")],
            excluded: Annotated[bool, typer.Option(
                "--excluded", help="Show the exclusion log.")] = False,
            modified: Annotated[bool, typer.Option(
                "--modified", help="Show the modification log (mojibake, PII).")] = False,
            reason: Annotated[str | None, typer.Option(help="Only this reason.")] = None,
            limit: Annotated[int, typer.Option(help="Samples per reason.")] = 5,
            workdir: Workdir = None,
            as_json: Annotated[bool, typer.Option("--json", help="Machine-readable.")] = False
            ) -> None:
    """What the domain's latest ingest left out (--excluded) or changed (--modified): counts by
    reason and sample documents."""
    from pipeline.engine.artifacts import ArtifactStore
    from pipeline.lifecycle import ops

    if excluded == modified:
        raise fail("say what to inspect: --excluded or --modified")
    work = workdir_path(workdir)
    catalog = open_catalog(work)
    try:
        art = ops.latest_ingest(ArtifactStore(work / "artifacts"), catalog, domain)
        result = ops.excluded(art, reason, limit, log="excluded" if excluded else "modified")
    except ValueError as exc:
        raise fail(str(exc)) from None
    typer.echo(json.dumps(result, indent=2) if as_json
               else "\n".join(ops.excluded_lines(result)))


def gc(workdir: Workdir = None,
       keep_runs: Annotated[int | None, typer.Option(
           help="Only the newest N runs per domain keep their artifacts.")] = None,
       yes: Annotated[bool, typer.Option("--yes", help="Delete (default: dry run).")] = False
       ) -> None:
    """Remove artifacts no run references and leftovers of failed builds (dry run by default)."""
    from pipeline.engine.artifacts import ArtifactStore
    from pipeline.lifecycle import ops

    work = workdir_path(workdir)
    catalog = open_catalog(work)
    garbage = ops.find_garbage(ArtifactStore(work / "artifacts"), catalog, keep_runs)
    for g in garbage:
        typer.echo(f"{g.bytes / 1e6:10.1f} MB  {g.reason:<18} {g.path}")
    total = sum(g.bytes for g in garbage) / 1e6
    if yes:
        ops.collect_garbage(garbage, catalog)
        typer.echo(f"removed {len(garbage)} entries, {total:.1f} MB")
    else:
        typer.echo(f"{len(garbage)} entries, {total:.1f} MB; run with --yes to delete")
