"""Incremental ingest: drops, reusable per-shard work, and the index of everything seen.

A domain's corpus grows in *drops*. Each ingest artifact of a lineage is one drop: it holds the
drop's new train shards, the cumulative held-out slice, the drop's exclusion log, and its part
of the domain's index (``index.parquet``: every document of the drop that reached near
dedup, with its MD5, LSH band keys and text for the exact Jaccard check). Its manifest names
the previous drop (input ``ingest``), the cumulative train shards and the file versions
ingested so far. The cumulative index is the union of the chain's ``index.parquet`` files:
immutable, written with the artifact (temporary directory, manifest last, atomic rename), so a
kill never leaves half an index and a rerun of the same key writes the same bytes.

Per-shard work (``prepare_shard``) is an artifact of its own, stage ``ingest-shard``, keyed by
the shard's descriptor, its files' content digests, the per-document part of ``IngestConfig``
and the shard step's code version: a rerun, ``--only ingest`` or a new lineage over the same
files finds it; ``--force`` redoes it.

The runner (``pipeline/stages/ingest/spec.py``) picks the previous drop; see ``docs/ingest.md``,
"Incremental ingest and drops".
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import IngestConfig
from pipeline.engine.artifacts import Artifact, ArtifactStore, Manifest, stable_hash
from pipeline.engine.versions import code_version
from pipeline.stages.ingest.readers import Piece
from pipeline.stages.ingest.shard import prepare_shard

log = logging.getLogger("dapt")

SHARD_STAGE = "ingest-shard"
SHARD_MODULE = "pipeline.stages.ingest.shard"
# Every file version ingested: the drop that ingested it, and the last drop whose sources
# still matched it (a file gone since the previous drop is logged once, as deleted).
FILES_SCHEMA = pa.schema([("source", pa.string()), ("path", pa.string()),
                          ("digest", pa.string()), ("drop", pa.int64()),
                          ("last_seen", pa.int64())])

# IngestConfig fields the per-shard step never reads: they change the global steps only, so
# editing them reuses every shard's work. Everything else (sources' names and fields, the
# filters, PII, language, the MinHash parameters) is in the shard key.
GLOBAL_FIELDS = {"decontamination", "eval_fraction", "num_docs_per_shard", "shard_mb",
                 "min_kept_docs", "global_memory_gb", "seed"}


@dataclass(frozen=True, kw_only=True)
class Drops:
    """What the runner gives ingest to work incrementally: where shard work is cached, every
    source file's digest (as the artifact key hashed it), the lineage and the drop's number."""

    store: ArtifactStore
    digests: dict[str, str]
    lineage: str
    redo_shards: bool = False  # --force: rebuild the shards' artifacts too


@dataclass(frozen=True)
class ShardCache:
    """Where one shard's work lives in the store (the mapped job carries it to a worker)."""

    store_root: str
    key: str
    redo: bool = False


@dataclass(frozen=True)
class History:
    """The earlier drops of a lineage, as the next drop reads them."""

    drop: int = 0  # the previous drop's number (0: none)
    previous: Artifact | None = None
    index_files: list[Path] = field(default_factory=list)  # chain order
    files: pa.Table = field(default_factory=FILES_SCHEMA.empty_table)
    train_shards: list[list[str]] = field(default_factory=list)  # [artifact key, file name]
    counts: dict[str, int] = field(default_factory=dict)  # the previous drop's corpus_* counts
    test_sets: dict[str, str] = field(default_factory=dict)  # name -> fingerprint, checked so far

    @property
    def eval_file(self) -> Path | None:
        return self.previous.path / "eval.parquet" if self.previous else None


def shard_config(config: IngestConfig) -> dict[str, Any]:
    """The per-document part of the config (the shard key's), paths left out: the shard's
    descriptor and digests name its files."""
    dumped = config.model_dump(mode="json", exclude=GLOBAL_FIELDS)
    dumped["sources"] = [{k: v for k, v in s.items() if k not in ("path", "general")}
                         for s in dumped["sources"]]
    dumped["near_dup"].pop("threshold", None)  # used by the global step only
    return dumped


def descriptor_paths(descriptor: list[Piece]) -> list[str]:
    """The file paths a shard's pieces come from, in order (a file cut into several pieces of
    one shard appears once per piece)."""
    return [piece.path for piece in descriptor]


def shard_key(config_json: dict[str, Any], descriptor: list[Piece], digests: dict[str, str],
              code: str) -> str:
    """A shard's artifact key: its serialised descriptor, its files' digests, the per-document
    config and the shard step's code version."""
    missing = [p for p in descriptor_paths(descriptor) if p not in digests]
    if missing:
        raise RuntimeError(f"ingest: no content digest for {missing[:3]}")
    return stable_hash({"shard": [p.key() for p in descriptor], "config": config_json,
                        "code": code,
                        "digests": [digests[p] for p in descriptor_paths(descriptor)]})


def shard_code_version() -> str:
    return code_version(SHARD_MODULE)


def cached_shard(config: IngestConfig, files: list[Piece], shard_dir: Path, cache: ShardCache
                 ) -> dict[str, Any]:
    """``prepare_shard`` through the store: reuse the shard's artifact or build it, then link
    ``shard_dir`` to it so the global steps read it where they read a fresh shard."""
    store = ArtifactStore(Path(cache.store_root))

    def build(out: Path) -> Manifest:
        result = prepare_shard(config, files, out)
        return Manifest(stage=SHARD_STAGE, extra={"result": result,
                                                  "pieces": [p.key() for p in files]})

    art, hit = store.build(stage=SHARD_STAGE, key=cache.key, config_hash="", code="",
                           inputs={}, fn=build, force=cache.redo)
    shard_dir.parent.mkdir(parents=True, exist_ok=True)
    if shard_dir.is_symlink() or shard_dir.exists():
        os.unlink(shard_dir)
    os.symlink(art.path, shard_dir, target_is_directory=True)
    result = dict(art.manifest.extra["result"])
    if hit:
        result["seconds"] = {}  # this run spent none of them
    return {**result, "cache_hit": hit, "shard_key": cache.key}


def history(previous: Artifact | None) -> History:
    if previous is None:
        return History()
    m = previous.manifest
    drop = m.extra.get("drop")
    if not drop:
        raise ValueError(f"ingest/{previous.key} is not a drop of an incremental lineage")
    root = previous.path.parent
    chain = [*drop["chain"], previous.key]
    own = [[previous.key, f.name] for f in sorted(previous.path.glob("train-*.parquet"))]
    missing = [k for k in chain if not (root / k / "index.parquet").exists()]
    if missing:
        raise FileNotFoundError(
            f"ingest: earlier drop(s) {missing} of this lineage are gone from {root} (removed "
            "by hand or by `dapt gc`?): the next drop cannot dedup against them")
    return History(drop=int(drop["number"]), previous=previous,
                   index_files=[root / k / "index.parquet" for k in chain],
                   files=pq.read_table(previous.path / "files.parquet"),
                   # "": a shard the previous drop rewrote into itself (``contamination.retrofit``)
                   train_shards=[[k or previous.key, n] for k, n in drop["train_shards"]] + own,
                   counts={k: v for k, v in m.counts.items() if k.startswith("corpus_")},
                   test_sets=dict(drop.get("test_sets", {})))


@dataclass(frozen=True)
class FileChanges:
    """The drop's source files against the versions earlier drops ingested."""

    new: list[str]  # never seen at this path
    rewritten: list[str]  # seen at this path with other content
    reused: list[str]  # this exact version was ingested by an earlier drop
    deleted: list[str]  # matched at the previous drop, no longer matched by the sources

    def fresh(self) -> set[str]:
        return set(self.new) | set(self.rewritten)


def file_changes(paths: list[str], digests: dict[str, str], seen: pa.Table) -> FileChanges:
    """The sources' files now (``paths``) against the file versions earlier drops ingested."""
    versions = set(zip(seen.column("path").to_pylist(), seen.column("digest").to_pylist(),
                       strict=True))
    seen_paths = {p for p, _ in versions}
    current = sorted(set(paths))
    new, rewritten, reused = [], [], []
    for path in current:
        if (path, digests[path]) in versions:
            reused.append(path)
        elif path in seen_paths:
            rewritten.append(path)
        else:
            new.append(path)
    last = max(seen.column("last_seen").to_pylist(), default=0)
    present = {p for p, n in zip(seen.column("path").to_pylist(),
                                 seen.column("last_seen").to_pylist(), strict=True) if n == last}
    deleted = sorted(present - set(current))
    for kind, paths in (("rewritten", rewritten), ("deleted", deleted)):
        if paths:
            log.warning("ingest: %d earlier file(s) %s since the last drop (their earlier "
                        "documents stay in the corpus): %s", len(paths), kind, paths[:5])
    return FileChanges(new, rewritten, reused, deleted)


def files_table(seen: pa.Table, files: list[tuple[str, str]], changes: FileChanges,
                digests: dict[str, str], drop: int) -> pa.Table:
    """Every file version ingested through this drop: the earlier rows, then this drop's.
    ``files``: (source name, path) pairs holding this drop's files (a path may repeat, one
    per piece; files not new or rewritten are left out)."""
    fresh = changes.fresh()
    rows = sorted({(name, path) for name, path in files if path in fresh}, key=lambda r: r[1])
    added = pa.table({"source": [r[0] for r in rows], "path": [r[1] for r in rows],
                      "digest": [digests[r[1]] for r in rows],
                      "drop": pa.array([drop] * len(rows), pa.int64()),
                      "last_seen": pa.array([drop] * len(rows), pa.int64())},
                     schema=FILES_SCHEMA)
    reused = set(changes.reused)
    last_seen = [drop if p in reused and digests[p] == d else n for p, d, n in zip(
        seen.column("path").to_pylist(), seen.column("digest").to_pylist(),
        seen.column("last_seen").to_pylist(), strict=True)]
    earlier = seen.set_column(seen.schema.get_field_index("last_seen"), "last_seen",
                              pa.array(last_seen, pa.int64())) if seen.num_rows else seen
    return pa.concat_tables([earlier.cast(FILES_SCHEMA), added])


def head(store: ArtifactStore, lineage: str) -> Artifact | None:
    """The newest drop of ``lineage``: the highest drop number, then the latest created."""
    best, best_rank = None, None
    for art in store.list("ingest"):
        drop = art.manifest.extra.get("drop") or {}
        if drop.get("lineage") != lineage:
            continue
        rank = (int(drop["number"]), art.manifest.created_at)
        if best_rank is None or rank > best_rank:
            best, best_rank = art, rank
    return best
