"""Reading an ingest artifact: the files and fields the stages downstream may use.

Downstream code goes through ``IngestOutput`` and never opens an ingest artifact's files by
name, so ingest can change its layout in one place. This module is not imported by the ingest
stage itself: editing it changes the keys of the stages that read ingest, not ingest's.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.engine.artifacts import Artifact, Manifest


@dataclass(frozen=True)
class NerCoverage:
    """The documents the NER types (person, location) were looked for in: ``scanned`` inside
    ``pii.ner_share``, ``skipped`` outside it (their names and places stay)."""

    types: list[str]
    share: float
    scanned: int
    skipped: int

    @property
    def documents(self) -> int:
        return self.scanned + self.skipped

    def sentence(self) -> str:
        """What a reader must know when the share left documents out ("" when it did not)."""
        if not self.skipped:
            return ""
        found = "names" if "location" not in self.types else \
            "places" if "person" not in self.types else "names and places"
        return (f"NER ({'/'.join(self.types)}) ran on {self.scanned:,} of {self.documents:,} "
                f"documents (pii.ner_share {self.share:g}): {found} in the rest are not "
                "redacted.")


class IngestOutput:
    """An ingest artifact as its readers see it.

    - ``train_shards``: the cumulative corpus's ``train-NNNNN.parquet`` (doc_id, source,
      text): every earlier drop's, oldest first, then this drop's, each in input order;
    - ``drop_train_shards``: this drop's new train shards only (all of them for a corpus
      ingested at once);
    - ``eval_file``: the cumulative held-out slice in hash order (any prefix is a fair sample);
    - ``excluded_file``, ``modified_file``, ``stats_file``: this drop's exclusion and
      modification logs and per-source counts;
    - ``source_names`` (config order, as packing indexes them), ``general_sources`` (the
      replayed general text), ``train_chars`` (cumulative), ``drop_train_chars``;
    - ``drop_number`` (1 for the first drop or a corpus ingested at once) and ``previous`` (the
      previous drop's ingest key, or None); ``is_drop`` (a lineage's drop, not a corpus
      ingested at once) and ``shard_keys`` (its per-shard work, kept for a rebuild);
    - this drop's counts: ``docs_in``, ``kept``, ``train_docs``, ``eval_docs``, ``excluded``,
      ``excluded_by_reason`` ({reason: documents}), and ``sources`` ({source: {docs_in, kept,
      ...}}) and ``source_files`` ({source: its files}); ``ner_coverage``: the documents NER
      read and those ``pii.ner_share`` left out.
    """

    def __init__(self, artifact: Artifact):
        # general: the general sources' own ingest (pipeline/stages/general), the same files
        if artifact.stage not in ("ingest", "general"):
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
        counts = self._manifest.counts
        return int(counts.get("corpus_train_chars", counts.get("train_chars", 0)))

    @property
    def drop_train_chars(self) -> int:
        return int(self._manifest.counts.get("train_chars", 0))

    @property
    def drop_number(self) -> int:
        return int((self._manifest.extra.get("drop") or {}).get("number", 1))

    @property
    def previous(self) -> str | None:
        return (self._manifest.extra.get("drop") or {}).get("previous")

    @property
    def is_drop(self) -> bool:
        return "drop" in self._manifest.extra

    @property
    def shard_keys(self) -> list[str]:
        return list((self._manifest.extra.get("drop") or {}).get("shard_keys", []))

    @property
    def counts(self) -> dict[str, int]:
        """Every count of the manifest (documents in, kept, by exclusion reason, PII per type)."""
        return dict(self._manifest.counts)

    @property
    def ner_coverage(self) -> NerCoverage | None:
        """How many documents NER read and how many ``pii.ner_share`` left out; None when no
        NER type ran (or the artifact predates the count)."""
        ner, counts = self._manifest.extra.get("ner"), self._manifest.counts
        if not ner or "ner_docs_scanned" not in counts:
            return None
        return NerCoverage(types=list(ner["types"]), share=float(ner["share"]),
                           scanned=int(counts["ner_docs_scanned"]),
                           skipped=int(counts["ner_docs_skipped"]))

    @property
    def docs_in(self) -> int:
        return int(self._manifest.counts["docs_in"])

    @property
    def kept(self) -> int:
        return int(self._manifest.counts["kept"])

    @property
    def train_docs(self) -> int:
        return int(self._manifest.counts.get("train_docs", 0))

    @property
    def eval_docs(self) -> int:
        return int(self._manifest.counts["eval_docs"])

    @property
    def excluded(self) -> int:
        return int(self._manifest.counts["excluded"])

    @property
    def excluded_by_reason(self) -> dict[str, int]:
        return {k.removeprefix("excluded_"): v for k, v in self._manifest.counts.items()
                if k.startswith("excluded_")}

    @property
    def source_files(self) -> dict[str, list[str]]:
        """{source: the files ingest read for it}."""
        return dict(self._manifest.extra.get("files", {}))

    @property
    def sources(self) -> dict[str, dict[str, int]]:
        return dict(self._manifest.extra["sources"])

    @property
    def train_shards(self) -> list[Path]:
        # earlier drops' artifacts sit beside this one in the store
        # (key "": an earlier shard this drop rewrote into itself, without documents that a
        # test set added since contaminates)
        earlier = (self._manifest.extra.get("drop") or {}).get("train_shards", [])
        return ([self.path.parent / (key or self.artifact.key) / name for key, name in earlier]
                + self.drop_train_shards)

    @property
    def drop_train_shards(self) -> list[Path]:
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

    def held_out_parts(self, columns: list[str]) -> dict[str, dict[str, pa.Table]]:
        """``{"domain"|"general": {"dev"|"test": table}}``: the held-out slice in its two
        disjoint parts (see ``split_dev_test``); ``columns`` must include ``source``."""
        grouped = "group" in pq.read_schema(self.eval_file).names
        wanted = list(dict.fromkeys([*columns, "doc_id", *(["group"] if grouped else [])]))
        return {slice_: {part: t.select(columns) for part, t in split_dev_test(table).items()}
                for slice_, table in self.held_out(wanted).items()}


# The held-out slice in two disjoint parts: ``dev`` for the choices a run makes (checkpoint
# choice, the LR x replay sweep, the curves during training) and ``test`` for the figures it
# reports (evaluate, the verdict). Ingest holds documents out by a hash of their group (their id
# unless ``ingest.held_out`` groups them); this splits them again by a second, independent hash
# of the group, so nothing chosen on dev has seen a test document or a near-twin of one, and a
# document's part does not change when the corpus grows.
DEV_SHARE = 0.3


def dev_mask(doc_ids: pa.ChunkedArray | pa.Array) -> pa.Array:
    """True where a held-out document belongs to the dev part, given each one's group (an
    eval file without groups: its doc ids)."""
    con = duckdb.connect()
    con.register("ids", pa.table({"doc_id": doc_ids}))
    return con.sql(
        f"SELECT md5_number('dev:' || doc_id) % 1000000 < {round(DEV_SHARE * 1_000_000)} "
        "AS dev FROM ids").to_arrow_table().column("dev").combine_chunks()


def split_dev_test(table: pa.Table) -> dict[str, pa.Table]:
    """``table`` (with a ``doc_id`` column, and ``group`` when ingest wrote groups) as its dev
    and test rows, order kept."""
    mask = dev_mask(table.column("group" if "group" in table.column_names else "doc_id"))
    return {"dev": table.filter(mask), "test": table.filter(pc.invert(mask))}
