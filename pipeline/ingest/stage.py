"""The ingest stage: the per-shard step over every shard, then the global steps in order.

With ``drops`` (from the runner) the stage is incremental (``drops.py``): only source files
no earlier drop of the lineage ingested are read, each shard's work is an ``ingest-shard``
artifact, and dedup and decontamination run against everything the earlier drops saw."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pyarrow.compute as pc

from pipeline import progress
from pipeline.artifacts import Artifact, Manifest
from pipeline.config import IngestConfig
from pipeline.ingest import drops as incremental
from pipeline.ingest import steps
from pipeline.ingest.readers import shard_files
from pipeline.ingest.shard import Laps, prepare_shard


def run(config: IngestConfig, inputs: dict[str, Artifact], out_dir: Path,
        map_shards: Callable[[Callable, list[tuple]], list] | None = None,
        drops: incremental.Drops | None = None) -> Manifest:
    """``config.sources[*].path`` must already be resolved to absolute paths, globs or URLs.

    ``map_shards(fn, jobs)`` runs ``fn(*job)`` for every job and returns the results in job
    order; the default runs them here one by one. The flow passes one that maps Prefect tasks
    over its task runner (threads, or a Dask cluster); the output is the same bytes either way.

    ``drops``: ingest as the next drop of a lineage (``inputs["ingest"]``, when given, is the
    previous drop); without it, the whole corpus at once and nothing cached.
    """
    work = out_dir / "_shards"
    plan = shard_files(config, spool=work / "spool")
    earlier = incremental.history(inputs.get("ingest")) if drops else None
    changes = None
    if drops is None:
        jobs = [(config, files, work / f"{i:05d}") for i, files in enumerate(plan)]
        fn: Callable = prepare_shard
    else:
        changes = incremental.file_changes(plan, drops.digests, earlier.files)
        fresh = changes.fresh()
        all_files = plan
        plan = [s for s in ([p for p in shard if p.path in fresh] for shard in plan) if s]
        shard_json, code = incremental.shard_config(config), incremental.shard_code_version()
        jobs = [(config, files, work / f"{i:05d}", incremental.ShardCache(
                    str(drops.store.root),
                    incremental.shard_key(shard_json, files, drops.digests, code),
                    drops.redo_shards))
                for i, files in enumerate(plan)]
        fn = incremental.cached_shard
    results = (map_shards or _serial_map)(fn, jobs)
    lap = Laps()
    con = steps.open_database(config, work)
    parts = steps.load_shards(con, work, len(jobs))
    history = bool(earlier and earlier.index_files)
    if history:
        steps.history_view(con, earlier.index_files, config.near_dup.enabled)
        steps.exact_dedup_history(con)
    steps.exact_dedup(con)
    lap("exact_dedup")
    if drops:
        steps.mark_indexed(con)
    near = steps.near_dedup(con, config, parts, history=history)
    held = steps.held_out_sql(config)
    lap("near_dedup")
    earlier_eval = earlier.eval_file if earlier else None
    test_sets = (steps.test_set_hashes(con, config) if config.decontamination.enabled
                 else {})
    contaminated = (steps.decontaminate(con, config, held, parts, earlier_eval, test_sets)
                    if config.decontamination.enabled else {})
    lap("decontaminate")
    if drops:  # earlier drops' training text against the test sets added since
        prints = {name: steps.fingerprint(h) for name, h in test_sets.items()}
        added = {name: test_sets[name] for name in prints
                 if earlier.test_sets.get(name) != prints[name]}
        earlier_shards, retracted = earlier.train_shards, steps.RETRACTED_SCHEMA.empty_table()
        if added and earlier.previous:
            earlier_shards, retracted = steps.retrofit(
                con, config, [(k, n, out_dir.parent / k / n) for k, n in earlier.train_shards],
                added, out_dir)
        steps.write_table(retracted, out_dir / "retracted.parquet")
        lap("retrofit")
    steps.split(con, held)
    lap("split")
    train_files = steps.write_train(con, config, parts, out_dir)
    lap("write_train")
    eval_rows = steps.write_eval(con, out_dir, earlier_eval)
    lap("write_eval")
    steps.write_excluded(con, parts, out_dir)
    lap("write_excluded")
    steps.write_modified_and_stats(con, out_dir)
    lap("write_modified_stats")
    extra_counts: dict[str, int] = {"train_shards": train_files, **near, **contaminated}
    drop_extra: dict = {}
    if drops:
        number = earlier.drop + 1
        extra_counts["index_docs"] = steps.write_index(con, config, parts, out_dir, number)
        lap("write_index")
        files_table = incremental.files_table(earlier.files, all_files, changes,
                                              drops.digests, number)
        steps.write_table(files_table, out_dir / "files.parquet")
        hits = sum(bool(r.get("cache_hit")) for r in results)
        extra_counts.update(
            drop=number, files_new=len(changes.new), files_rewritten=len(changes.rewritten),
            files_deleted=len(changes.deleted), files_reused=len(changes.reused),
            shards_cached=hits, shards_built=len(results) - hits)
        prev = earlier.previous
        drop_extra = {"drop": {
            "number": number, "lineage": drops.lineage,
            "previous": prev.key if prev else None,
            "chain": ([*prev.manifest.extra["drop"]["chain"], prev.key] if prev else []),
            "train_shards": earlier_shards, "test_sets": prints,
            "shard_keys": [r["shard_key"] for r in results]},
            "file_changes": {"new": changes.new, "rewritten": changes.rewritten,
                             "deleted": changes.deleted}}
    counts = steps.count(con, plan, results, extra_counts)
    if drops:
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
    else:
        steps.check_gate(config, counts)
    sources = steps.by_source(con)
    con.close()
    shutil.rmtree(work, ignore_errors=True)  # links to shard artifacts go, not the artifacts
    files: dict[str, list[str]] = {s.name: [] for s in config.sources}
    for name, path in dict.fromkeys((p.source, p.path) for shard in plan for p in shard):
        files[name].append(str(path))  # once per file, however many pieces it was cut into
    seconds = {f"shards_{k}": v for k, v in steps.summed(r["seconds"] for r in results).items()}
    metrics = ({k: float(counts[k]) for k in ("drop", "files_reused", "shards_built",
                                               "shards_cached")} if drops else {})
    return Manifest(
        stage="ingest",
        counts=counts,
        metrics=metrics,
        extra={"sources": sources,
               "source_names": [s.name for s in config.sources],
               "general_sources": [s.name for s in config.sources if s.general],
               "files": files, "seconds": {**seconds, **lap.seconds}, **drop_extra},
    )


def _serial_map(fn: Callable, jobs: list[tuple]) -> list:
    results = []
    with progress.track("ingest: shards", len(jobs), "shards") as bar:
        for job in jobs:
            results.append(fn(*job))
            bar.update()
    return results
