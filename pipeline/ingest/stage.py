"""The ingest stage: the per-shard step over every shard, then the global steps in order."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from pipeline import progress
from pipeline.artifacts import Artifact, Manifest
from pipeline.config import IngestConfig
from pipeline.ingest import steps
from pipeline.ingest.readers import shard_files
from pipeline.ingest.shard import Laps, prepare_shard


def run(config: IngestConfig, inputs: dict[str, Artifact], out_dir: Path,
        map_shards: Callable[[Callable, list[tuple]], list] | None = None) -> Manifest:
    """``config.sources[*].path`` must already be resolved to absolute paths, globs or URLs.

    ``map_shards(fn, jobs)`` runs ``fn(*job)`` for every job and returns the results in job
    order; the default runs them here one by one. The flow passes one that maps Prefect tasks
    over its task runner (threads, or a Dask cluster); the output is the same bytes either way.
    """
    del inputs  # ingest has no upstream artifact: its inputs are the source files
    work = out_dir / "_shards"
    plan = shard_files(config, spool=work / "spool")
    jobs = [(config, files, work / f"{i:05d}") for i, files in enumerate(plan)]
    results = (map_shards or _serial_map)(prepare_shard, jobs)
    lap = Laps()
    con = steps.open_database(config, work)
    parts = steps.load_shards(con, work, len(jobs))
    steps.exact_dedup(con)
    lap("exact_dedup")
    near = steps.near_dedup(con, config, parts)
    held = steps.held_out_sql(config)
    lap("near_dedup")
    contaminated = (steps.decontaminate(con, config, held, parts)
                    if config.decontamination.enabled else {})
    lap("decontaminate")
    steps.split(con, held)
    lap("split")
    train_files = steps.write_train(con, config, parts, out_dir)
    lap("write_train")
    steps.write_eval(con, out_dir)
    lap("write_eval")
    steps.write_excluded(con, parts, out_dir)
    lap("write_excluded")
    steps.write_modified_and_stats(con, out_dir)
    lap("write_modified_stats")
    counts = steps.count(con, plan, results,
                         {"train_shards": train_files, **near, **contaminated})
    steps.check_gate(config, counts)
    sources = steps.by_source(con)
    con.close()
    shutil.rmtree(work, ignore_errors=True)
    files: dict[str, list[str]] = {s.name: [] for s in config.sources}
    for name, path in dict.fromkeys((p.source, p.path) for shard in plan for p in shard):
        files[name].append(str(path))  # once per file, however many pieces it was cut into
    seconds = {f"shards_{k}": v for k, v in steps.summed(r["seconds"] for r in results).items()}
    return Manifest(
        stage="ingest",
        counts=counts,
        extra={"sources": sources,
               "source_names": [s.name for s in config.sources],
               "general_sources": [s.name for s in config.sources if s.general],
               "files": files, "seconds": {**seconds, **lap.seconds}},
    )


def _serial_map(fn: Callable, jobs: list[tuple]) -> list:
    results = []
    with progress.track("ingest: shards", len(jobs), "shards") as bar:
        for job in jobs:
            results.append(fn(*job))
            bar.update()
    return results
