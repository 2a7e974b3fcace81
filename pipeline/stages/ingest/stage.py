"""The ingest stage: the per-shard step over every shard, then the global steps in order.

With ``drops`` (from the runner) the stage is incremental (``drops.py``): only source files
no earlier drop of the lineage ingested are read, each shard's work is an ``ingest-shard``
artifact, and dedup and decontamination run against everything the earlier drops saw."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config import IngestConfig
from pipeline.engine import progress
from pipeline.engine.artifacts import Artifact, Manifest
from pipeline.stages.ingest import contamination, grouping, ner, ner_share, steps
from pipeline.stages.ingest import drops as incremental
from pipeline.stages.ingest.readers import Piece, shard_files, source_files
from pipeline.stages.ingest.shard import Laps, prepare_shard


def run(config: IngestConfig, inputs: dict[str, Artifact], out_dir: Path,
        map_shards: Callable[[Callable, list[tuple]], list] | None = None,
        drops: incremental.Drops | None = None) -> Manifest:
    """``config.sources[*].path`` must already be resolved to absolute paths, globs or URLs.

    ``map_shards(fn, jobs)`` runs ``fn(*job)`` for every job and returns the results in job
    order; the default runs them here one by one. The flow passes one that maps Prefect tasks
    over its task runner (threads, or a Dask cluster); the output is the same bytes either way.

    ``drops``: ingest as the next drop of a lineage (``inputs["ingest"]``, when given, is the
    previous drop); without it, the whole corpus at once and nothing cached.

    The steps, in order: plan the shards (``_plan``), the per-shard step over them, then the
    global steps on one DuckDB database: dedup and decontamination (``_filter``), for a drop
    the earlier drops' training text against test sets added since (``_retrofit``), the
    split and the writers (``_write``), the drop's bookkeeping (``_record_drop``), the counts
    and the gate (``_count``).
    """
    work = out_dir / "_shards"
    earlier = incremental.history(inputs.get("ingest")) if drops else None
    plan, jobs, fn, changes = _plan(config, work, drops, earlier)
    results = (map_shards or _serial_map)(fn, jobs)
    ner.shutdown()  # its worker processes (a spaCy model each) end with the shards
    lap = Laps()
    con = steps.open_database(config, work)
    g = GlobalSteps(con=con, config=config, parts=steps.load_shards(con, work, len(jobs)),
                    out_dir=out_dir, lap=lap)
    held, test_sets = _filter(g, earlier)
    prints = ({name: contamination.fingerprint(h) for name, h in test_sets.items()}
              if drops else {})
    retracted = contamination.RETRACTED_SCHEMA.empty_table()
    earlier_shards: list[list[str]] = []
    if drops:
        earlier_shards, retracted = _retrofit(g, earlier, test_sets, prints)
        lap("retrofit")
    eval_rows = _write(g, held, earlier)
    drop_extra: dict = {}
    if drops:
        if changes is None:
            raise ValueError("ingest: a drop's bookkeeping needs its file changes (None given)")
        drop_extra = _record_drop(g, DropRecord(
            drops=drops, earlier=earlier, changes=changes, plan=plan, results=results,
            earlier_shards=earlier_shards, test_sets=prints))
        lap("write_index")
    counts = _count(g, plan, results, earlier, retracted, eval_rows)
    sources = steps.by_source(con)
    con.close()
    shutil.rmtree(work, ignore_errors=True)  # links to shard artifacts go, not the artifacts
    return _manifest(config, plan, results, counts, sources, lap, drops is not None,
                     drop_extra)


def _manifest(config: IngestConfig, plan: list[list[Piece]], results: list[dict],
              counts: dict[str, int], sources: dict[str, dict[str, int]], lap: Laps,
              drop: bool, drop_extra: dict) -> Manifest:
    """The stage's manifest: the counts, a drop's metrics, and what readers find in extra."""
    seconds = {f"shards_{k}": v for k, v in steps.summed(r["seconds"] for r in results).items()}
    metrics = ({k: float(counts[k]) for k in ("drop", "files_reused", "shards_built",
                                               "shards_cached")} if drop else {})
    return Manifest(
        stage="ingest",
        counts=counts,
        metrics=metrics,
        extra={"sources": sources,
               "source_names": [s.name for s in config.sources],
               "general_sources": [s.name for s in config.sources if s.general],
               "files": _files(config, plan), "seconds": {**seconds, **lap.seconds},
               "filtered": steps.summed(r["filtered"] for r in results),
               **ner_share.record(config.pii, counts), **drop_extra},
    )


def _plan(config: IngestConfig, work: Path, drops: incremental.Drops | None,
          earlier: incremental.History | None
          ) -> tuple[list[list[Piece]], list[tuple], Callable, incremental.FileChanges | None]:
    """The shards and the per-shard jobs. A drop plans only the files no earlier drop ingested
    (an earlier file is not read again) and runs each shard through its cached artifact."""
    if drops is None:
        plan = shard_files(config, spool=work / "spool")
        return plan, [(config, files, work / f"{i:05d}") for i, files in enumerate(plan)], \
            prepare_shard, None
    if earlier is None:
        raise ValueError("ingest: a drop needs the lineage's history (None given)")
    listed = source_files(config)
    changes = incremental.file_changes([path for _, path in listed], drops.digests,
                                       earlier.files)
    fresh = changes.fresh()
    plan = shard_files(config, spool=work / "spool",
                       files=[(s, path) for s, path in listed if path in fresh])
    shard_json, code = incremental.shard_config(config), incremental.shard_code_version()
    jobs = [(config, files, work / f"{i:05d}", incremental.ShardCache(
                str(drops.store.root),
                incremental.shard_key(shard_json, files, drops.digests, code),
                drops.redo_shards))
            for i, files in enumerate(plan)]
    return plan, jobs, incremental.cached_shard, changes


@dataclass(kw_only=True)
class GlobalSteps:
    """What the global steps share: one DuckDB database over every shard's documents
    (``steps.load_shards``), the shards' ``docs.parquet`` paths, where the outputs go, the
    counts the steps add as they go and their timings."""

    con: duckdb.DuckDBPyConnection
    config: IngestConfig
    parts: list[str]
    out_dir: Path
    counts: dict[str, int] = field(default_factory=dict)
    lap: Laps = field(default_factory=Laps)


@dataclass(frozen=True, kw_only=True)
class DropRecord:
    """What a drop's bookkeeping (``_record_drop``) writes down besides the database."""

    drops: incremental.Drops
    earlier: incremental.History
    changes: incremental.FileChanges
    plan: list[list[Piece]]
    results: list[dict]  # the shards' results, in plan order
    earlier_shards: list[list[str]]  # [artifact key, file name] of earlier train shards kept
    test_sets: dict[str, str]  # name -> fingerprint, decontaminated against through this drop


def _filter(g: GlobalSteps, earlier: incremental.History | None
            ) -> tuple[str, dict[str, np.ndarray]]:
    """Exact and near dedup (against the earlier drops too), then decontamination against the
    test sets and the held-out text. Returns the held-out rule and the test sets."""
    con, config, parts, lap = g.con, g.config, g.parts, g.lap
    history = bool(earlier and earlier.index_files)
    if history:
        steps.history_view(con, earlier.index_files, config.near_dup.enabled)
        steps.exact_dedup_history(con)
    steps.exact_dedup(con)
    lap("exact_dedup")
    if earlier is not None:
        steps.mark_indexed(con)
    near = steps.near_dedup(con, config, parts, history=history)
    lap("near_dedup")
    g.counts.update(grouping.assign_groups(con, config, parts))
    held = steps.held_out_sql(config)
    lap("group")
    test_sets = (contamination.test_set_hashes(con, config) if config.decontamination.enabled
                 else {})
    contaminated = (contamination.decontaminate(con, config, held, parts,
                                                earlier.eval_file if earlier else None,
                                                test_sets)
                    if config.decontamination.enabled else {})
    lap("decontaminate")
    g.counts.update(**near, **contaminated)
    return held, test_sets


def _retrofit(g: GlobalSteps, earlier: incremental.History, test_sets: dict[str, np.ndarray],
              prints: dict[str, str]) -> tuple[list[list[str]], pa.Table]:
    """Earlier drops' training text against the test sets added since they were ingested:
    the contaminated documents are retracted (``retracted.parquet``) and the shards that held
    them rewritten into this drop. Returns the earlier train shards to keep, and what went."""
    earlier_shards = earlier.train_shards
    retracted = contamination.RETRACTED_SCHEMA.empty_table()
    added = {name: h for name, h in test_sets.items()
             if earlier.test_sets.get(name) != prints[name]}
    if added and earlier.previous:
        earlier_shards, retracted = contamination.retrofit(
            g.con, g.config,
            [(k, n, g.out_dir.parent / k / n) for k, n in earlier.train_shards], added,
            g.out_dir)
    steps.write_table(retracted, g.out_dir / "retracted.parquet")
    return earlier_shards, retracted


def _write(g: GlobalSteps, held: str, earlier: incremental.History | None) -> int:
    """The split, then the train shards, the held-out slice (cumulative for a drop), the
    exclusion log, the modified log and the stats. Returns the held-out slice's rows."""
    con, parts, out_dir, lap = g.con, g.parts, g.out_dir, g.lap
    steps.split(con, held)
    lap("split")
    g.counts["train_shards"] = steps.write_train(con, g.config, parts, out_dir)
    lap("write_train")
    eval_rows = steps.write_eval(con, out_dir, earlier.eval_file if earlier else None)
    lap("write_eval")
    steps.write_excluded(con, parts, out_dir)
    lap("write_excluded")
    steps.write_modified_and_stats(con, out_dir)
    lap("write_modified_stats")
    return eval_rows


def _record_drop(g: GlobalSteps, d: DropRecord) -> dict:
    """A drop's part of the index, its file versions, its counts and its manifest entry."""
    earlier, changes = d.earlier, d.changes
    number = earlier.drop + 1
    g.counts["index_docs"] = steps.write_index(g.con, g.config, g.parts, g.out_dir, number)
    steps.write_table(incremental.files_table(
        earlier.files, [(p.source, p.path) for shard in d.plan for p in shard], changes,
        d.drops.digests, number), g.out_dir / "files.parquet")
    hits = sum(bool(r.get("cache_hit")) for r in d.results)
    g.counts.update(
        drop=number, files_new=len(changes.new), files_rewritten=len(changes.rewritten),
        files_deleted=len(changes.deleted), files_reused=len(changes.reused),
        shards_cached=hits, shards_built=len(d.results) - hits)
    prev = earlier.previous
    return {"drop": {
        "number": number, "lineage": d.drops.lineage,
        "previous": prev.key if prev else None,
        "chain": ([*prev.manifest.extra["drop"]["chain"], prev.key] if prev else []),
        "train_shards": d.earlier_shards,
        "test_sets": d.test_sets,
        "shard_keys": [r["shard_key"] for r in d.results]},
        "file_changes": {"new": changes.new, "rewritten": changes.rewritten,
                         "deleted": changes.deleted}}


def _count(g: GlobalSteps, plan: list[list[Piece]], results: list[dict],
           earlier: incremental.History | None, retracted: pa.Table, eval_rows: int
           ) -> dict[str, int]:
    """The counts (a drop adds the cumulative corpus's ``corpus_*``), checked by the gate."""
    config = g.config
    counts = steps.count(g.con, plan, results, g.counts)
    if earlier is None:
        steps.check_gate(config, counts)
        return counts
    before = earlier.counts
    gone = retracted.num_rows
    counts.update(
        retracted_contaminated=gone,
        corpus_kept=before.get("corpus_kept", 0) + counts["kept"] - gone,
        corpus_train_docs=before.get("corpus_train_docs", 0) + counts["train_docs"] - gone,
        corpus_train_chars=before.get("corpus_train_chars", 0) + counts["train_chars"]
        - int(pc.sum(retracted.column("chars")).as_py() or 0),
        corpus_eval_docs=eval_rows)
    steps.check_gate(config, {**counts, "kept": counts["corpus_kept"],
                              "eval_docs": counts["corpus_eval_docs"]})
    return counts


def _files(config: IngestConfig, plan: list[list[Piece]]) -> dict[str, list[str]]:
    """Each source's files ingested, once per file however many pieces it was cut into."""
    files: dict[str, list[str]] = {s.name: [] for s in config.sources}
    for name, path in dict.fromkeys((p.source, p.path) for shard in plan for p in shard):
        files[name].append(str(path))
    return files


def _serial_map(fn: Callable, jobs: list[tuple]) -> list:
    results = []
    with progress.track("ingest: shards", len(jobs), "shards") as bar:
        for job in jobs:
            results.append(fn(*job))
            bar.update()
    return results
