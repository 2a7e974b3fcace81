from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import QualityGateError, ingest
from pipeline.config import IngestConfig

LONG = "A sentence that is comfortably longer than the minimum length."
# These tests are about reading, normalising, splitting and dedup; tests/pipeline/test_quality.py
# covers the quality filters, which would drop these one-sentence documents, and
# tests/pipeline/test_dedup.py near-duplicates (which these templated sentences are) and
# decontamination.
NO_QUALITY = {"gopher": {"enabled": False}, "repetition": {"enabled": False}}
NO_NEAR_DUP = {"enabled": False}
BASICS = {"quality": NO_QUALITY, "near_dup": NO_NEAR_DUP, "decontamination": {"enabled": False}}


def _run(tmp_path: Path, sources: list[dict], **kw) -> tuple[dict, Path]:
    out = tmp_path / "out"
    out.mkdir()
    config = IngestConfig(sources=sources, min_kept_docs=1,
                          **{**BASICS, **kw})
    return ingest.run(config, {}, out).counts, out


def _rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def _jsonl(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def test_normalises_unicode_whitespace_and_control_chars(tmp_path: Path) -> None:
    _jsonl(tmp_path / "a.jsonl", [
        {"id": "1", "text": "Cafe\u0301  menu\u00a0\tlist \x07ok and long enough\r\n\n\n\nnext"}])
    counts, out = _run(tmp_path, [{"name": "a", "path": str(tmp_path / "*.jsonl"),
                                   "id_field": "id"}], eval_fraction=0.49)
    [row] = _rows(out / "train-00000.parquet") + _rows(out / "eval.parquet")
    assert row["text"] == "Caf\u00e9 menu list ok and long enough\n\nnext"
    assert row["doc_id"] == "a:1"


def test_every_document_is_kept_or_excluded_with_a_reason(tmp_path: Path) -> None:
    _jsonl(tmp_path / "a.jsonl", [
        {"id": "1", "text": LONG}, {"id": "2", "text": LONG + "  "},  # duplicate once normalised
        "{not json", {"id": "4", "text": "tiny"}, {"id": "5"}, {"id": "6", "text": "   "},
        {"id": "7", "text": LONG + " Another one."}])
    (tmp_path / "b.txt").write_text(LONG + " From a text file.")
    with gzip.open(tmp_path / "c.jsonl.gz", "wt") as fh:
        fh.write(json.dumps({"text": LONG + " Gzipped."}) + "\n")
    with open(tmp_path / "d.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["body", "ref"], [LONG + " From CSV.", "r1"]])
    pq.write_table(pa.table({"text": [LONG * 3]}), tmp_path / "e.parquet")
    sources = [
        {"name": "j", "path": str(tmp_path / "*.jsonl"), "id_field": "id"},
        {"name": "t", "path": str(tmp_path / "*.txt")},
        {"name": "g", "path": str(tmp_path / "*.jsonl.gz")},
        {"name": "c", "path": str(tmp_path / "*.csv"), "text_field": "body", "id_field": "ref"},
        {"name": "p", "path": str(tmp_path / "*.parquet")},
    ]
    counts, out = _run(tmp_path, sources, max_chars=100, eval_fraction=0.49)
    excluded = {r["doc_id"]: r["reason"] for r in _rows(out / "excluded.parquet")}
    assert excluded == {
        "j:2": "duplicate", "j:a.jsonl:2": "malformed_json", "j:4": "too_short",
        "j:a.jsonl:4": "missing_text_field", "j:6": "empty", "p:e.parquet:0": "too_long"}
    kept = {r["doc_id"] for r in _rows(out / "train-00000.parquet") + _rows(out / "eval.parquet")}
    assert kept == {"j:1", "j:7", "t:b.txt:0", "g:c.jsonl.gz:0", "c:r1"}
    assert counts["docs_in"] == 11 == counts["kept"] + counts["excluded"]
    assert counts["excluded_duplicate"] == 1 and counts["files"] == 5
    stats = _rows(out / "stats.parquet")
    assert sum(r["docs"] for r in stats) == counts["docs_in"]


def test_split_is_deterministic_and_shards_respect_size(tmp_path: Path) -> None:
    _jsonl(tmp_path / "a.jsonl", [{"id": str(i), "text": f"{LONG} number {i}"} for i in range(200)])
    src = [{"name": "a", "path": str(tmp_path / "a.jsonl"), "id_field": "id"}]
    counts, out = _run(tmp_path, src, eval_fraction=0.1, num_docs_per_shard=50)
    first = sorted(r["doc_id"] for r in _rows(out / "eval.parquet"))
    assert 5 <= len(first) <= 40 and counts["train_shards"] == -(-counts["train_docs"] // 50)
    assert [len(_rows(p)) for p in sorted(out.glob("train-*.parquet"))][:-1] == [50] * (
        counts["train_shards"] - 1)
    (tmp_path / "again").mkdir()
    config = IngestConfig(sources=src, eval_fraction=0.1, num_docs_per_shard=50, min_kept_docs=1,
                          **BASICS)
    ingest.run(config, {}, tmp_path / "again")
    assert sorted(r["doc_id"] for r in _rows(tmp_path / "again/eval.parquet")) == first


def test_truncated_gzip_keeps_read_lines_and_reports_file(tmp_path: Path) -> None:
    payload = gzip.compress(
        "".join(json.dumps({"text": f"{LONG} {i}"}) + "\n" for i in range(50)).encode())
    (tmp_path / "t.jsonl.gz").write_bytes(payload[: len(payload) // 2])
    counts, out = _run(tmp_path, [{"name": "g", "path": str(tmp_path / "t.jsonl.gz")}],
                       eval_fraction=0.49)
    reasons = [r["reason"] for r in _rows(out / "excluded.parquet")]
    assert reasons.count("unreadable_file") == 1
    assert counts["docs_in"] == counts["kept"] + counts["excluded"]


def test_quality_gate_fails_loudly(tmp_path: Path) -> None:
    _jsonl(tmp_path / "a.jsonl", [{"text": "tiny"}] * 3)
    out = tmp_path / "out"
    out.mkdir()
    config = IngestConfig(sources=[{"name": "a", "path": str(tmp_path / "a.jsonl")}])
    with pytest.raises(QualityGateError, match="0 of 3 documents survived"):
        ingest.run(config, {}, out)


def test_unknown_suffix_asks_for_format() -> None:
    with pytest.raises(ValueError, match="set `format` on the source"):
        ingest.infer_format(Path("corpus.xml"), None)
