from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from pipeline import QualityGateError, files
from pipeline.config import IngestConfig
from pipeline.stages import ingest

LONG = "A sentence that is comfortably longer than the minimum length."
# These tests are about reading, normalising, splitting and dedup;
# tests/pipeline/stages/test_quality.py
# covers the quality filters, which would drop these one-sentence documents, and
# tests/pipeline/stages/test_dedup.py near-duplicates (which these templated sentences are) and
# decontamination.
NO_QUALITY = {"gopher": {"enabled": False}, "repetition": {"enabled": False}}
NO_NEAR_DUP = {"enabled": False}
# The texts here are one template with a number in it: near dedup and the near-twin groups of
# the held-out split would (rightly) treat them as one; their own tests are in test_dedup.py and
# test_twins.py.
BASICS = {"quality": NO_QUALITY, "near_dup": NO_NEAR_DUP, "decontamination": {"enabled": False},
          "held_out": {"group_by": "id"}}


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


COMPRESS = {"gz": gzip.compress, "zst": lambda b: zstandard.ZstdCompressor().compress(b)}


@pytest.mark.parametrize("suffix", ["gz", "zst"])
def test_compressed_jsonl_is_read_and_a_truncated_file_keeps_its_lines(tmp_path: Path,
                                                                       suffix: str) -> None:
    # 5,000 lines, so the compressed file holds many blocks and a cut keeps the first ones
    payload = COMPRESS[suffix](
        "".join(json.dumps({"text": f"{LONG} {i} {i * 7919 % 10007}"}) + "\n"
                for i in range(5000)).encode())
    (tmp_path / f"whole.jsonl.{suffix}").write_bytes(payload)
    counts, _ = _run(tmp_path, [{"name": "w", "path": str(tmp_path / f"whole.jsonl.{suffix}")}],
                     eval_fraction=0.49)
    assert counts["docs_in"] == counts["kept"] == 5000
    (tmp_path / f"t.jsonl.{suffix}").write_bytes(payload[: len(payload) // 2])
    (tmp_path / "out").rename(tmp_path / "whole-out")
    counts, out = _run(tmp_path, [{"name": "g", "path": str(tmp_path / f"t.jsonl.{suffix}")}],
                       eval_fraction=0.49)
    excluded = _rows(out / "excluded.parquet")
    assert [r["reason"] for r in excluded].count("unreadable_file") == 1
    assert counts["docs_in"] == counts["kept"] + counts["excluded"]
    assert 0 < counts["kept"] < 5000  # the lines before the cut


def test_quality_gate_fails_loudly(tmp_path: Path) -> None:
    _jsonl(tmp_path / "a.jsonl", [{"text": "tiny"}] * 3)
    out = tmp_path / "out"
    out.mkdir()
    config = IngestConfig(sources=[{"name": "a", "path": str(tmp_path / "a.jsonl")}])
    with pytest.raises(QualityGateError, match="0 of 3 documents survived"):
        ingest.run(config, {}, out)


def test_unknown_suffix_asks_for_format() -> None:
    with pytest.raises(ValueError, match="set `format` on the source"):
        files.infer_format(Path("corpus.xml"), None)


def test_bad_input_matrix_is_counted_and_reconciled(tmp_path: Path) -> None:
    """Malformed JSON, invalid UTF-8, empty and zero-byte files, a Parquet file without the text
    column, binary files and a 50 MB document: the run completes, each bad record or file is in
    the exclusion log with its reason (a corrupt file by name), and in = kept + excluded."""
    import random

    good = [{"id": str(i), "text": f"{LONG} Good document number {i}."} for i in range(20)]
    lines = [json.dumps(d).encode() for d in good]
    lines[3] = b'{"id": "bad-utf8", "text": "caf\xe9 \xff\xfe broken"}'
    lines[7] = b'{"id": "x", "text": '
    (tmp_path / "a.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (tmp_path / "zero.jsonl").write_bytes(b"")
    (tmp_path / "blank.jsonl").write_text("\n\n   \n")
    rng = random.Random(0)
    noise = bytes(rng.randrange(256) for _ in range(4096))
    (tmp_path / "binary.jsonl").write_bytes(noise)
    (tmp_path / "binary.txt").write_bytes(noise)
    pq.write_table(pa.table({"body": ["no text column here"]}), tmp_path / "wrong.parquet")
    big = ("word " * 10_500_000).strip()  # 52.5 MB, one document
    (tmp_path / "huge.jsonl").write_text(json.dumps({"id": "huge", "text": big}) + "\n")
    sources = [{"name": "j", "path": str(tmp_path / "*.jsonl"), "id_field": "id"},
               {"name": "t", "path": str(tmp_path / "*.txt")},
               {"name": "p", "path": str(tmp_path / "*.parquet")}]
    counts, out = _run(tmp_path, sources, eval_fraction=0.3)
    log = _rows(out / "excluded.parquet")
    by_id = {r["doc_id"]: r for r in log}
    assert by_id["j:a.jsonl:3"]["reason"] == "invalid_utf8"
    assert by_id["j:a.jsonl:7"]["reason"] == "malformed_json"
    assert by_id["j:huge"]["reason"] == "too_long" and by_id["j:huge"]["stage"] == "length"
    assert by_id["p:wrong.parquet"]["reason"] == "unreadable_file"
    assert "text" in by_id["p:wrong.parquet"]["detail"]  # names the missing column
    assert by_id["t:binary.txt"]["reason"] == "unreadable_file"
    binary = [r for r in log if r["doc_id"].startswith("j:binary.jsonl:")]
    assert binary and {r["reason"] for r in binary} <= {"invalid_utf8", "malformed_json"}
    assert all(r["stage"] == "read" for r in binary)
    assert not any("zero.jsonl" in r["doc_id"] or "blank.jsonl" in r["doc_id"] for r in log)
    kept = {r["doc_id"] for r in _rows(out / "train-00000.parquet") + _rows(out / "eval.parquet")}
    assert kept == {f"j:{i}" for i in range(20)} - {"j:3", "j:7"}
    assert counts["docs_in"] == counts["kept"] + counts["excluded"] == 18 + len(log)


def test_rerun_writes_byte_identical_output(tmp_path: Path) -> None:
    """Ingest is a pure function of its inputs: a rerun (after a killed run, say) writes the
    same bytes, so the content-addressed artifact it replaces is the same artifact."""
    _jsonl(tmp_path / "a.jsonl", [{"id": str(i), "text": f"{LONG} Document {i} " + "x" * (i % 7)}
                                  for i in range(3000)])
    src = [{"name": "a", "path": str(tmp_path / "a.jsonl"), "id_field": "id"}]
    outs = []
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        ingest.run(IngestConfig(sources=src, min_kept_docs=1, num_docs_per_shard=1000, **BASICS),
                   {}, tmp_path / name)
        outs.append({p.name: p.read_bytes() for p in sorted((tmp_path / name).iterdir())})
    assert list(outs[0]) == list(outs[1]) and len(outs[0]) >= 6
    assert outs[0] == outs[1]


def test_fsspec_url_sources_read_like_local_files(tmp_path: Path) -> None:
    """memory:// stands in for s3:// or gs://: the same files give the same output and log, a
    malformed line included (the line-by-line reader opens the URL through fsspec)."""
    import fsspec

    from pipeline.domains import source_digest
    from pipeline.files import match_files

    files = {
        "a.jsonl": "".join(json.dumps({"id": str(i), "text": f"{LONG} Remote {i}."}) + "\n"
                           for i in range(30)).encode() + b"{broken\n",
        "b.jsonl.gz": gzip.compress(json.dumps({"id": "g", "text": LONG + " Gz."}).encode()),
        "c.txt": (LONG + " A text file.").encode(),
    }
    fs = fsspec.filesystem("memory")
    (tmp_path / "local").mkdir()
    for name, data in files.items():
        fs.pipe(f"memory://corpus-{tmp_path.name}/{name}", data)
        (tmp_path / "local" / name).write_bytes(data)
    url = f"memory://corpus-{tmp_path.name}"
    assert match_files(f"{url}/*.jsonl*") == [f"memory:///corpus-{tmp_path.name}/a.jsonl",
                                              f"memory:///corpus-{tmp_path.name}/b.jsonl.gz"]
    digest = source_digest(f"{url}/a.jsonl")
    assert digest == source_digest(f"{url}/a.jsonl") and len(digest) == 32
    outs = []
    for name, root in (("remote", url), ("local", str(tmp_path / "local"))):
        (tmp_path / name).mkdir(exist_ok=True)
        out = tmp_path / name / "out"
        out.mkdir()
        config = IngestConfig(sources=[
            {"name": "j", "path": f"{root}/*.jsonl*", "id_field": "id"},
            {"name": "t", "path": f"{root}/*.txt"}], min_kept_docs=1, eval_fraction=0.2,
            **BASICS)
        counts = ingest.run(config, {}, out).counts
        outs.append((counts, [_rows(out / n) for n in ("train-00000.parquet", "eval.parquet",
                                                        "excluded.parquet")]))
    assert outs[0] == outs[1]
    counts, (train, held, excluded) = outs[0]
    assert counts["docs_in"] == 33 and [r["reason"] for r in excluded] == ["malformed_json"]
    assert {"j:g", "t:c.txt:0"} <= {r["doc_id"] for r in train + held}


def test_shards_group_small_files_in_order_and_do_not_change_the_output(tmp_path: Path) -> None:
    for i in range(6):
        _jsonl(tmp_path / f"p{i}.jsonl", [{"id": f"{i}-{j}", "text": f"{LONG} File {i} row {j}."}
                                          for j in range(40)])
    size = (tmp_path / "p0.jsonl").stat().st_size / 1e6
    src = [{"name": "a", "path": str(tmp_path / "p*.jsonl"), "id_field": "id"}]
    outs = []
    for shard_mb, expected in ((size * 2.5, [2, 2, 2]), (size * 1.2, [1] * 6), (100, [6])):
        # output shards of 70 documents: each reads the text of the input shards it spans
        config = IngestConfig(sources=src, min_kept_docs=1, shard_mb=shard_mb,
                              num_docs_per_shard=70, **BASICS)
        assert [len(s) for s in ingest.shard_files(config)] == expected
        assert [p.path for s in ingest.shard_files(config) for p in s] == sorted(
            str(p) for p in tmp_path.glob("p*.jsonl"))
        out = tmp_path / f"out-{len(expected)}"
        out.mkdir()
        counts = ingest.run(config, {}, out).counts
        assert counts["ingest_shards"] == len(expected) and counts["train_shards"] == 4
        train = [r for p in sorted(out.glob("train-*.parquet")) for r in _rows(p)]
        assert len(train) == counts["train_docs"]
        outs.append({p.name: p.read_bytes() for p in sorted(out.glob("*.parquet"))})
    # the global steps in 10 MB of DuckDB memory (spilling to disk) write the same bytes
    config = IngestConfig(sources=src, min_kept_docs=1, num_docs_per_shard=70,
                          global_memory_gb=0.01, **BASICS)
    (tmp_path / "small").mkdir()
    ingest.run(config, {}, tmp_path / "small")
    outs.append({p.name: p.read_bytes() for p in sorted((tmp_path / "small").glob("*.parquet"))})
    assert outs[0] == outs[1] == outs[2] == outs[3]
