"""Reading an ingest artifact: the files and fields the stages downstream may use.

Downstream code goes through ``IngestOutput`` and never opens an ingest artifact's files by
name, so ingest can change its layout in one place. This module is not imported by the ingest
stage itself: editing it changes the keys of the stages that read ingest, not ingest's.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.artifacts import Artifact, Manifest


class IngestOutput:
    """An ingest artifact as its readers see it.

    - ``train_shards``: ``train-NNNNN.parquet`` in input order (doc_id, source, text);
    - ``eval_file``: the held-out slice in hash order (any prefix is a fair sample);
    - ``excluded_file``, ``modified_file``, ``stats_file``: the exclusion and modification logs
      and the per-source counts;
    - ``source_names`` (config order, as packing indexes them), ``general_sources`` (the
      replayed general text), ``train_chars``.
    """

    def __init__(self, artifact: Artifact):
        if artifact.stage != "ingest":
            raise ValueError(f"{artifact.stage}/{artifact.key} is not an ingest artifact")
        self.artifact = artifact
        self.path: Path = artifact.path

    @cached_property
    def _manifest(self) -> Manifest:
        return self.artifact.manifest

    @property
    def source_names(self) -> list[str]:
        return list(self._manifest.extra["source_names"])

    @property
    def general_sources(self) -> list[str]:
        return list(self._manifest.extra.get("general_sources", []))

    @property
    def train_chars(self) -> int:
        return int(self._manifest.counts.get("train_chars", 0))

    @property
    def docs_in(self) -> int:
        return int(self._manifest.counts["docs_in"])

    @property
    def train_shards(self) -> list[Path]:
        return sorted(self.path.glob("train-*.parquet"))

    @property
    def eval_file(self) -> Path:
        return self.path / "eval.parquet"

    @property
    def excluded_file(self) -> Path:
        return self.path / "excluded.parquet"

    @property
    def modified_file(self) -> Path:
        return self.path / "modified.parquet"

    @property
    def stats_file(self) -> Path:
        return self.path / "stats.parquet"

    def held_out(self, columns: list[str]) -> dict[str, pa.Table]:
        """The held-out slice split into domain text and general (replay) text, each still in
        hash order, so any prefix is a fair sample. ``columns`` must include ``source``."""
        table = pq.read_table(self.eval_file, columns=columns)
        is_general = pc.is_in(table.column("source"),
                              value_set=pa.array(sorted(self.general_sources), pa.string()))
        return {"domain": table.filter(pc.invert(is_general)),
                "general": table.filter(is_general)}
