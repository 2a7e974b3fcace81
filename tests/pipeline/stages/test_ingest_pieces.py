"""Big source files are cut into pieces of about ``shard_mb`` (plain JSONL by byte range,
.gz and .zst while decompressed, Parquet by row groups), and a file split into shards writes
the same bytes as unsplit. Real sample documents (general news)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from pipeline.config import IngestConfig
from pipeline.stages import ingest
from pipeline.stages.ingest.readers import plan_file, read_piece

FORMATS = ["jsonl", "jsonl.gz", "jsonl.zst", "parquet"]


def _news_lines(samples_dir: Path, n: int = 240) -> list[bytes]:
    """``n`` real news records without their ids (so the ids are ``source:file:row``), a
    malformed copy of one (its first half) and a few blank lines between them."""
    with open(samples_dir / "general" / "news.jsonl", "rb") as fh:
        records = [json.loads(line) for _, line in zip(range(n), fh, strict=False)]
    lines = [json.dumps({"text": r["text"]}).encode() + b"\n" for r in records]
    lines.insert(150, lines[10][:40] + b"\n")  # cut short: malformed_json, read line by line
    for at in (7, 80, 81, 200):
        lines.insert(at, b"  \n" if at % 2 else b"\n")
    return lines


def _write(lines: list[bytes], fmt: str, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"news.{fmt}"
    data = b"".join(lines)
    if fmt == "parquet":
        texts = [json.loads(line)["text"] for line in lines if line.strip().endswith(b"}")]
        pq.write_table(pa.table({"text": texts}), path, row_group_size=16)
    else:
        path.write_bytes({"jsonl": lambda b: b, "jsonl.gz": gzip.compress,
                          "jsonl.zst": zstandard.ZstdCompressor().compress}[fmt](data))
    return path


def _config(path: Path, shard_mb: float) -> IngestConfig:
    return IngestConfig(sources=[{"name": "news", "path": str(path)}], shard_mb=shard_mb,
                        min_kept_docs=1)


@pytest.mark.slow  # four ingests per format
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_file_split_into_shards_writes_the_same_bytes_as_unsplit(
        samples_dir: Path, tmp_path: Path, fmt: str) -> None:
    path = _write(_news_lines(samples_dir), fmt, tmp_path / "data")
    outs, plans = [], []
    for shard_mb in (1000, 0.1, 0.037):
        config = _config(path, shard_mb)
        plans.append(ingest.shard_files(config))
        out = tmp_path / f"out-{shard_mb}"
        out.mkdir()
        counts = ingest.run(config, {}, out).counts
        assert counts["ingest_shards"] == len(plans[-1]) and counts["files"] == 1
        outs.append((counts["docs_in"], counts["kept"],
                     {p.name: p.read_bytes() for p in sorted(out.glob("*.parquet"))}))
        assert not (out / "_shards").exists()  # the spool went with the work directory
    assert [len(p) for p in plans][0] == 1 and plans[0][0][0].unit == "file"
    assert 4 <= len(plans[1]) < len(plans[2])  # cut: about 0.8 MB of text
    assert {p.unit for s in plans[2] for p in s} == {
        "row_groups" if fmt == "parquet" else "bytes"}
    docs_in, kept, files = outs[0]
    assert 200 < kept < docs_in == 240 + (fmt != "parquet")  # the malformed line is a record
    assert {"train-00000.parquet", "eval.parquet", "excluded.parquet"} <= set(files)
    # every record's id is its row in the file (blank lines not counted), whichever piece
    # read it; the malformed line was read line by line, the rest of the file by DuckDB
    out = tmp_path / "out-0.037"
    rows = {r["doc_id"]: r for name in ("train-00000.parquet", "eval.parquet",
                                        "excluded.parquet")
            for r in pq.read_table(out / name).to_pylist()}
    assert set(rows) == {f"news:news.{fmt}:{i}" for i in range(docs_in)}
    if fmt != "parquet":
        assert rows[f"news:news.{fmt}:150"]["reason"] == "malformed_json"
    assert outs[1] == outs[0] and outs[2] == outs[0]


def test_pieces_are_bounded_contiguous_and_count_the_records_before_them(
        samples_dir: Path, tmp_path: Path) -> None:
    lines = _news_lines(samples_dir)
    data = b"".join(lines)
    path = _write(lines, "jsonl", tmp_path)
    source = _config(path, 1).sources[0]
    limit, longest = 50_000, max(len(line) for line in lines)
    pieces = plan_file(source, str(path), limit)
    assert 2 <= len(pieces) <= -(-len(data) // limit)
    assert pieces[0][0].start == 0 and pieces[-1][0].stop == len(data)
    for (piece, size), (after, _) in zip(pieces, pieces[1:] + [(None, 0)], strict=True):
        assert size == piece.stop - piece.start and data[piece.stop - 1] == ord("\n")
        assert piece.first_row == sum(1 for line in data[:piece.start].splitlines()
                                      if line.strip())
        if after is not None:
            assert after.start == piece.stop and limit <= size < limit + longest
    # shards of pieces stay near shard_mb: no shard holds two pieces of a cut file
    plan = ingest.shard_files(_config(path, limit / 1e6))
    assert [[p.key() for p in s] for s in plan] == [[p.key()] for p, _ in pieces]
    # a file smaller than shard_mb stays one piece, read whole, as are its compressed forms
    for fmt in ("jsonl", "jsonl.gz", "jsonl.zst"):
        small = _write(lines, fmt, tmp_path / "small")
        [(piece, size)] = plan_file(source, str(small), len(data) + 1)
        assert piece == ingest.Piece("news", str(small)) and size == (
            small.stat().st_size if fmt == "jsonl" else len(data))


@pytest.mark.parametrize("fmt", ["jsonl.gz", "jsonl.zst"])
def test_a_compressed_piece_reads_alike_from_the_spool_and_from_the_file(
        samples_dir: Path, tmp_path: Path, fmt: str) -> None:
    """Planning decompresses the file once and spools each piece's text; without the spool a
    piece is read by decompressing the file up to it. Both give the same rows."""
    import duckdb

    lines = _news_lines(samples_dir)
    path = _write(lines, fmt, tmp_path / "data")
    source = _config(path, 1).sources[0]
    spooled = plan_file(source, str(path), 60_000, tmp_path / "spool")
    plain = plan_file(source, str(path), 60_000)
    assert len(spooled) >= 4 and [p for p, _ in spooled] == [p for p, _ in plain]
    assert all(p.spool for p, _ in spooled) and not any(p.spool for p, _ in plain)
    assert b"".join(Path(p.spool).read_bytes() for p, _ in spooled) == b"".join(lines)
    con = duckdb.connect()
    for (a, _), (b, _) in zip(spooled, plain, strict=True):
        assert read_piece(con, source, a).equals(read_piece(con, source, b))
    # a cut-short file is not split: the line-by-line reader logs it, as before
    cut = tmp_path / f"cut.{fmt}"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert [p for p, _ in plan_file(source, str(cut), 60_000, tmp_path / "spool2")] == [
        ingest.Piece("news", str(cut))]
    assert not list((tmp_path / "spool2").glob("*"))  # what it spooled before the cut is gone


def test_a_lone_surrogate_escape_is_invalid_utf8_not_a_crash(tmp_path: Path) -> None:
    """DuckDB rejects the line, so its piece is read line by line; Python's json decodes
    "\\ud800" to a string UTF-8 cannot encode (Arrow raised on it, ending the run)."""
    long = "A sentence that is comfortably longer than the minimum length."
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": long + " one"}) + "\n"
                                      + '{"text": "lone \\ud800 surrogate"}\n'
                                      + json.dumps({"text": long + " two"}) + "\n")
    out = tmp_path / "out"
    out.mkdir()
    config = IngestConfig(sources=[{"name": "a", "path": str(tmp_path / "a.jsonl")}],
                          min_kept_docs=1, eval_fraction=0.49,
                          quality={"gopher": {"enabled": False},
                                   "repetition": {"enabled": False}},
                          near_dup={"enabled": False},
                          held_out={"group_by": "id"}, decontamination={"enabled": False},
                          language={"enabled": False})
    counts = ingest.run(config, {}, out).counts
    excluded = pq.read_table(out / "excluded.parquet").to_pylist()
    assert [(r["doc_id"], r["reason"]) for r in excluded] == [("a:a.jsonl:1", "invalid_utf8")]
    assert counts["kept"] == 2 and counts["docs_in"] == 3
