"""The filter chain (``ingest/filters.py``): ``apply`` marks what each filter rejects, in order,
so a later filter never sees a document an earlier one excluded, and counts it; a filter added
to ``FILTERS`` runs through a shard and a whole ingest with its reason; a filter that names a
document outside its view, or gives no reason, is an error."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import IngestConfig
from pipeline.stages import ingest
from pipeline.stages.ingest import filters
from pipeline.stages.ingest.readers import shard_files

LONG = "A sentence that is comfortably longer than the minimum length, in plain English words."
TABLE = "| a | b | c |\n" * 10


class NoTables(filters.Filter):
    """The docs' example: documents that are mostly pipe-delimited table rows."""

    name = "no_tables"

    @classmethod
    def enabled(cls, config: IngestConfig) -> bool:
        return config.quality.gopher.enabled

    def reject(self, con: duckdb.DuckDBPyConnection, view: str) -> filters.Rows:
        return con.sql(f"SELECT ord, 'tables' AS reason, NULL AS detail FROM {view} "
                       "WHERE length(regexp_replace(text, '[^|]', '', 'g')) > 20")


class Seen(filters.Filter):
    """Rejects nothing; keeps the ords it was shown."""

    name = "seen"
    ords: list[int]

    def reject(self, con: duckdb.DuckDBPyConnection, view: str) -> filters.Rows:
        self.ords = [o for (o,) in con.sql(f"SELECT ord FROM {view} ORDER BY ord").fetchall()]
        return pa.table({"ord": pa.array([], pa.int64()), "reason": pa.array([], pa.string()),
                         "detail": pa.array([], pa.string())})


def _config(tmp_path: Path, quality: dict | None = None) -> IngestConfig:
    return IngestConfig(sources=[{"name": "a", "path": str(tmp_path / "*.jsonl"),
                                  "id_field": "id"}],
                        min_kept_docs=1, min_chars=20, eval_fraction=0.49,
                        quality=quality or {"gopher": {"min_words": 3, "min_stop_words": None}},
                        pii={"enabled": False}, near_dup={"enabled": False},
                        held_out={"group_by": "id"},
                        decontamination={"enabled": False}, language={"enabled": False})


def _docs(texts: list[str | None]) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.register("raw", pa.table({"ord": list(range(len(texts))), "text": texts},
                                 schema=pa.schema([("ord", pa.int64()), ("text", pa.string())])))
    con.execute("""CREATE TABLE docs AS SELECT ord, NULL::VARCHAR AS reason,
                   NULL::VARCHAR AS detail, text FROM raw;
                   CREATE TABLE modified (ord BIGINT, stage VARCHAR, reason VARCHAR,
                                          detail VARCHAR)""")
    return con


def test_apply_marks_in_order_and_counts_each_filter(tmp_path: Path) -> None:
    config = _config(tmp_path)
    con = _docs([LONG, "tiny", "", None, TABLE, LONG + " Again."])
    seen = Seen(config)
    chain = [filters.Length(config), NoTables(config), seen]
    laps: list[str] = []
    excluded = filters.apply(con, chain, laps.append)
    assert excluded == {"length": 3, "no_tables": 1, "seen": 0}
    assert laps == ["length", "no_tables", "seen"]
    assert seen.ords == [0, 5]  # neither the length filter's nor the table's documents
    assert con.sql("SELECT ord, reason FROM docs ORDER BY ord").fetchall() == [
        (0, None), (1, "too_short"), (2, "empty"), (3, "empty"), (4, "tables"), (5, None)]


def test_build_keeps_the_enabled_filters_in_order(tmp_path: Path) -> None:
    names = [f.name for f in filters.build(_config(tmp_path))]
    assert names == ["length", "gopher", "ngram_repetition"]  # c4 and language are off
    names = [f.name for f in filters.build(_config(
        tmp_path, {"c4": {"enabled": True}, "gopher": {"enabled": False},
                   "repetition": {"enabled": False}}))]
    assert names == ["length", "c4"]


class Outside(filters.Filter):
    name = "outside"

    def reject(self, con: duckdb.DuckDBPyConnection, view: str) -> filters.Rows:
        return con.sql("SELECT 1::BIGINT AS ord, 'x' AS reason, NULL AS detail")


class Twice(filters.Filter):
    name = "twice"

    def reject(self, con: duckdb.DuckDBPyConnection, view: str) -> filters.Rows:
        return con.sql(f"SELECT ord, 'x' AS reason, NULL AS detail FROM {view} "
                       f"UNION ALL SELECT ord, 'y', NULL FROM {view}")


class NoReason(filters.Filter):
    name = "no_reason"

    def reject(self, con: duckdb.DuckDBPyConnection, view: str) -> filters.Rows:
        return con.sql(f"SELECT ord, NULL::VARCHAR AS reason, NULL AS detail FROM {view}")


@pytest.mark.parametrize("bad", [Outside, Twice, NoReason])
def test_a_filter_must_name_documents_of_its_view_once_with_a_reason(
        tmp_path: Path, bad: type[filters.Filter]) -> None:
    con = _docs([LONG, "tiny"])
    with pytest.raises(RuntimeError, match=f"ingest filter '{bad.name}'"):
        filters.apply(con, [filters.Length(_config(tmp_path)), bad(_config(tmp_path))])


def test_a_filter_added_to_the_list_runs_through_a_shard_and_the_stage(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [{"id": str(i), "text": f"{LONG} Number {i}."} for i in range(6)]
    rows += [{"id": "t", "text": TABLE}, {"id": "s", "text": "short"}]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = _config(tmp_path)
    order = list(filters.FILTERS)
    monkeypatch.setattr(filters, "FILTERS", (*order[:2], NoTables, *order[2:]))
    [pieces] = shard_files(config, spool=tmp_path / "spool")
    result = ingest.prepare_shard(config, pieces, tmp_path / "shard")
    assert result["filtered"] == {"length": 1, "no_tables": 1, "gopher": 0,
                                  "ngram_repetition": 0}
    assert set(result["seconds"]) >= {"length", "no_tables", "gopher", "ngram_repetition"}
    docs = pq.read_table(tmp_path / "shard" / "docs.parquet").to_pylist()
    assert {d["doc_id"]: d["reason"] for d in docs if d["reason"]} == {
        "a:t": "tables", "a:s": "too_short"}

    out = tmp_path / "out"
    out.mkdir()
    manifest = ingest.run(config, {}, out)
    assert manifest.extra["filtered"] == result["filtered"]  # one shard: the same counts
    assert manifest.counts["excluded_tables"] == 1
    excluded = pq.read_table(out / "excluded.parquet").to_pylist()
    assert [(r["doc_id"], r["stage"], r["reason"]) for r in excluded] == [
        ("a:t", "quality", "tables"), ("a:s", "length", "too_short")]
