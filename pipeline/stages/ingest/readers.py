"""Ingest's readers: one source file (JSONL, optionally gzip or zstd compressed; TXT, one
document per file; CSV; Parquet; local or an fsspec URL), or one piece of a big one, as Arrow
rows (doc_id, source, text, reason, detail), bad records kept with their reason; and the plan
of the work: source files cut into pieces of at most about ``shard_mb`` (line-delimited files
at line ends, Parquet at row groups), grouped into shards."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO, Literal

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import zstandard

from pipeline.config import IngestConfig, SourceConfig
from pipeline.files import file_size, infer_format, is_url, match_files

RAW_SCHEMA = pa.schema(
    [("doc_id", pa.string()), ("source", pa.string()), ("text", pa.string()),
     ("reason", pa.string()), ("detail", pa.string())]
)


def _table(rows: dict[str, list]) -> pa.Table:
    return pa.table(rows, schema=RAW_SCHEMA)


def _with_ids(source: SourceConfig, name: str, ids: pa.ChunkedArray | None,
              texts: pa.ChunkedArray, first_row: int = 0) -> pa.Table:
    """Rows (doc_id, source, text, reason, detail) from a file's columns, in Arrow: the id is
    ``source:id``, or ``source:file:row`` where the file has no id for the row (``row``
    counts the file's records from 0; a piece's first is ``first_row``)."""
    n = len(texts)
    rows = np.arange(first_row, first_row + n)
    doc_ids = pc.binary_join_element_wise(f"{source.name}:{name}:",
                                          pa.array(rows).cast(pa.string()), "")
    if ids is not None and source.id_field is not None:
        given = pc.binary_join_element_wise(f"{source.name}:", ids, "")
        doc_ids = pc.if_else(pc.fill_null(pc.not_equal(ids, ""), False), given, doc_ids)
    none = pa.nulls(n, pa.string())
    return pa.table([doc_ids, pc.fill_null(none, source.name), texts, none, none],
                    schema=RAW_SCHEMA)


class _UrlPath(str):
    """An fsspec URL with the ``name`` the readers use for a local path."""

    @property
    def name(self) -> str:
        return self.rstrip("/").rsplit("/", 1)[-1]


def _open_raw(path: Path | _UrlPath) -> BinaryIO:
    if isinstance(path, _UrlPath):
        import fsspec

        return fsspec.open(path, "rb").open()
    return open(path, "rb")  # noqa: SIM115 (the caller closes it)


def _zstd_chunks(raw: BinaryIO) -> Iterator[bytes]:
    """The decompressed bytes of every zstd frame in ``raw``; ZstdError when the last frame is
    cut short (zstandard's stream reader and DuckDB both end such a file quietly)."""
    d, fed = zstandard.ZstdDecompressor().decompressobj(), False
    for chunk in iter(lambda: raw.read(1 << 20), b""):
        while chunk:
            yield d.decompress(chunk)
            fed = True
            if not d.eof:
                break
            chunk = d.unused_data
            d, fed = zstandard.ZstdDecompressor().decompressobj(), False
    if fed:
        raise zstandard.ZstdError("the file ends inside a zstd frame (truncated)")


def _zstd_complete(path: Path | _UrlPath) -> bool:
    try:
        with _open_raw(path) as raw:
            for _ in _zstd_chunks(raw):
                pass
    except zstandard.ZstdError:
        return False
    return True


def _lines(path: Path | _UrlPath, fmt: str) -> Iterator[bytes]:
    """The file's lines, decompressed for the formats jsonl.gz and jsonl.zst."""
    with _open_raw(path) as raw:
        if fmt == "jsonl.zst":
            tail = b""
            for chunk in _zstd_chunks(raw):
                *lines, tail = (tail + chunk).split(b"\n")
                yield from (line + b"\n" for line in lines)
            if tail:
                yield tail
        else:
            yield from (gzip.GzipFile(fileobj=raw) if fmt == "jsonl.gz" else raw)


def _read_jsonl_careful(source: SourceConfig, path: Path | _UrlPath, fmt: str) -> pa.Table:
    """Line-by-line reader used only when the fast path rejects a file: quarantines bad lines."""
    return _careful(source, path.name, _lines(path, fmt))


def _careful(source: SourceConfig, name: str, lines: Iterable[bytes], first_row: int = 0
             ) -> pa.Table:
    """Rows from JSONL ``lines``, one at a time, with bad lines quarantined. A record's row
    (``source:file:row``) counts the file's non-blank lines before it, as DuckDB's rows do, so
    a file reads alike whichever path read which of its pieces."""
    rows: dict[str, list] = {k: [] for k in RAW_SCHEMA.names}

    def add(doc_id: str, text: str | None, reason: str | None, detail: str | None) -> None:
        for k, v in zip(RAW_SCHEMA.names, (doc_id, source.name, text, reason, detail),
                        strict=True):
            rows[k].append(v)

    row = first_row
    try:
        for line in lines:
            if not line.strip():
                continue
            fallback_id = f"{source.name}:{name}:{row}"
            row += 1
            try:
                record = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError as exc:
                add(fallback_id, None, "invalid_utf8", str(exc)[:200])
                continue
            except json.JSONDecodeError as exc:
                add(fallback_id, None, "malformed_json", str(exc)[:200])
                continue
            if not isinstance(record, dict) or not isinstance(
                record.get(source.text_field), str
            ):
                add(fallback_id, None, "missing_text_field",
                    f"no string field {source.text_field!r}")
                continue
            rid = record.get(source.id_field) if source.id_field else None
            doc_id = f"{source.name}:{rid}" if rid not in (None, "") else fallback_id
            try:  # a lone surrogate escape ("\ud800") decodes to text UTF-8 cannot hold
                (doc_id + record[source.text_field]).encode("utf-8")
            except UnicodeEncodeError as exc:
                add(fallback_id, None, "invalid_utf8", str(exc)[:200])
                continue
            add(doc_id, record[source.text_field], None, None)
    except (OSError, EOFError, zstandard.ZstdError) as exc:  # a truncated .gz or .zst: keep
        # what was read, log the file
        add(f"{source.name}:{name}:#{row}", None, "unreadable_file",
            f"{type(exc).__name__}: {exc}"[:200])
    return _table(rows)


def read_source_file(con: duckdb.DuckDBPyConnection, source: SourceConfig, path: Path | str
                     ) -> pa.Table:
    """One file (a local path, or an fsspec URL: its filesystem is registered with ``con`` so
    DuckDB reads it) as rows (doc_id, source, text, reason, detail); reason is set for bad
    records."""
    if is_url(path):
        import fsspec

        fs = fsspec.core.url_to_fs(str(path))[0]
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        if not con.filesystem_is_registered(protocol):
            con.register_filesystem(fs)
        path = _UrlPath(path)
    else:
        path = Path(path)
    fmt = infer_format(path, source.format)
    text_col, id_col = source.text_field, source.id_field
    p = str(path).replace("'", "''")
    cols = [f'"{text_col}"'] + ([f'"{id_col}"'] if id_col else [])
    if fmt == "jsonl.zst" and not _zstd_complete(path):
        return _read_jsonl_careful(source, path, fmt)  # DuckDB would stop at the cut quietly
    try:
        if fmt.startswith("jsonl"):
            compression = {"jsonl": "none", "jsonl.gz": "gzip", "jsonl.zst": "zstd"}[fmt]
            spec = {text_col: "VARCHAR", **({id_col: "VARCHAR"} if id_col else {})}
            columns = "{" + ", ".join(f"'{k}': '{v}'" for k, v in spec.items()) + "}"
            rel = con.sql(
                f"SELECT {', '.join(cols)} FROM read_json('{p}', format='newline_delimited', "
                f"columns={columns}, maximum_object_size=268435456, "
                f"compression='{compression}')"
            )
        elif fmt == "csv":
            rel = con.sql(f"SELECT {', '.join(cols)} FROM read_csv('{p}', header=true, "
                          "all_varchar=true)")
        elif fmt == "parquet":
            rel = con.sql(f"SELECT {', '.join(c + '::VARCHAR' for c in cols)} "
                          f"FROM read_parquet('{p}')")
        else:  # txt: the whole file is one document
            rel = con.sql(f"SELECT content FROM read_text('{p}')")
        table = rel.to_arrow_table()
    except duckdb.Error as exc:
        if fmt.startswith("jsonl"):
            return _read_jsonl_careful(source, path, fmt)
        return _table({"doc_id": [f"{source.name}:{path.name}"], "source": [source.name],
                       "text": [None], "reason": ["unreadable_file"],
                       "detail": [f"{type(exc).__name__}: {exc}"[:300]]})
    return _with_ids(source, path.name,
                     table.column(1) if id_col and fmt != "txt" else None, table.column(0))


@dataclass(frozen=True)
class Piece:
    """One shard's part of one source file: the whole file (``unit="file"``), the lines in a
    byte range of its decompressed text (``"bytes"``: ``start`` to ``stop``, cut at line ends),
    or a range of its Parquet row groups (``"row_groups"``: ``start`` to ``stop``).
    ``first_row`` numbers the piece's first record in the file (the row of fallback ids
    ``source:file:row``). A small, picklable value: a cache can key a piece's work on it plus
    the file's content digest (``key``). ``spool`` names a file already holding a compressed
    file's decompressed range (written while planning), so reading the piece does not
    decompress the file from its start; it is not part of what the piece is."""

    source: str
    path: str
    unit: Literal["file", "bytes", "row_groups"] = "file"
    start: int = 0
    stop: int = 0
    first_row: int = 0
    spool: str | None = field(default=None, compare=False)

    def key(self) -> str:
        """What the piece is, as text (``spool`` left out)."""
        return json.dumps([self.source, self.path, self.unit, self.start, self.stop,
                           self.first_row])


def source_files(config: IngestConfig) -> list[tuple[SourceConfig, str]]:
    """Every file the sources match, in source then file order (the order of the output)."""
    return [(source, path) for source in config.sources
            for path in sorted(match_files(source.path))]


def shard_files(config: IngestConfig, spool: Path | None = None,
                files: list[tuple[SourceConfig, str]] | None = None) -> list[list[Piece]]:
    """The per-document work in shards: source files in source then file order, each cut into
    pieces of about ``shard_mb`` (``plan_file``), the pieces grouped in order into shards of
    about ``shard_mb`` (a folder of small files is not thousands of shards). The output depends
    on the file order only, never on the cuts, the grouping, which worker ran a shard or when.
    ``spool``: where a split compressed file's decompressed pieces are written (see
    ``plan_file``). ``files``: plan these (source, path) pairs, in ``source_files`` order,
    instead of every file the sources match (a drop's new files: an earlier file is neither
    opened nor decompressed again)."""
    limit = max(1, round(config.shard_mb * 1e6))
    shards: list[list[Piece]] = []
    current: list[Piece] = []
    size = 0
    for source, path in source_files(config) if files is None else files:
        for piece, n in plan_file(source, path, limit, spool):
            if current and size + n > limit:
                shards.append(current)
                current, size = [], 0
            current.append(piece)
            size += n
    return shards + ([current] if current else [])


def plan_file(source: SourceConfig, path: str, limit: int, spool: Path | None = None
              ) -> list[tuple[Piece, int]]:
    """A source file's pieces of about ``limit`` bytes of text, each with its size: a piece
    ends at the first line end (row group end) at or past ``limit``; the last may be smaller.

    - Plain JSONL over ``limit``: one read of the file counts its records; the pieces are byte
      ranges ending at line ends, read by seeking.
    - JSONL.gz and JSONL.zst: a compressed stream cannot seek, so the file is decompressed
      here, once, to find its size and cuts. When it is cut, each piece's text is written to
      ``spool`` (disk: the decompressed size, until the stage ends) for its shard to read;
      without ``spool`` a shard decompresses the file from its start up to its piece. A file
      that fails to decompress (cut short) stays one piece: the line-by-line reader logs it.
    - Parquet: runs of row groups of about ``limit`` bytes (uncompressed, from the footer).
    - CSV, TXT and URLs: one piece (a URL would be downloaded once more to plan it)."""
    whole = [(Piece(source.name, path), file_size(path))]
    if is_url(path):
        return whole
    fmt = infer_format(Path(path), source.format)
    if fmt == "parquet":
        return _plan_parquet(source, path, limit) or whole
    if not fmt.startswith("jsonl") or (fmt == "jsonl" and whole[0][1] <= limit):
        return whole
    try:
        with _open_raw(Path(path)) as raw:
            return _plan_lines(source, path, _chunks(raw, fmt), limit,
                               spool if fmt != "jsonl" else None)
    except (OSError, EOFError, zstandard.ZstdError):
        if spool is not None:
            for old in spool.glob(f"{_spool_stem(source.name, path)}-*"):
                old.unlink()
        return whole


def _chunks(raw: BinaryIO, fmt: str) -> Iterator[bytes]:
    """The (decompressed) bytes of a JSONL file in chunks of about 1 MB."""
    if fmt == "jsonl.zst":
        yield from _zstd_chunks(raw)
        return
    stream = gzip.GzipFile(fileobj=raw) if fmt == "jsonl.gz" else raw
    yield from iter(lambda: stream.read(1 << 20), b"")


def _plan_lines(source: SourceConfig, path: str, chunks: Iterable[bytes], limit: int,
                spool: Path | None) -> list[tuple[Piece, int]]:
    """Cut a line-delimited stream into byte ranges of at least ``limit`` bytes, each ending at
    a line end (the last: at the end), counting the records (non-blank lines) before each."""
    pieces: list[tuple[Piece, int]] = []
    held: list[bytes] = []  # the current piece's bytes, while they may need spooling
    unwritten: list[bytes] = []  # the first piece's bytes, until a second one is cut
    start = offset = rows = piece_rows = 0
    tail = b""

    def cut(end: int) -> None:
        nonlocal start, rows, piece_rows, held
        pieces.append((Piece(source.name, path, "bytes", start, end, rows), end - start))
        if spool is not None:
            unwritten.append(b"".join(held))
            while len(pieces) > 1 and unwritten:  # a second piece: the file is cut, so spool
                k = len(pieces) - len(unwritten)
                spool.mkdir(parents=True, exist_ok=True)
                name = spool / f"{_spool_stem(source.name, path)}-{k:05d}.jsonl"
                name.write_bytes(unwritten.pop(0))
                pieces[k] = (replace(pieces[k][0], spool=str(name)), pieces[k][1])
        start, rows, piece_rows, held = end, rows + piece_rows, 0, []

    for chunk in chunks:
        buf = tail + chunk
        body = buf.rfind(b"\n") + 1  # whole lines; the rest waits for the next chunk
        tail, pos = buf[body:], 0
        while pos < body:
            need = start + limit - offset  # bytes the piece still lacks (at least 1)
            end = body if need > body - pos else buf.find(b"\n", pos + need - 1) + 1
            piece_rows += _records(buf, pos, end)
            if spool is not None:
                held.append(buf[pos:end])
            offset, pos = offset + end - pos, end
            if offset - start >= limit:
                cut(offset)
    if tail:  # a last line without a newline
        piece_rows += _records(tail, 0, len(tail))
        if spool is not None:
            held.append(tail)
        offset += len(tail)
    if offset > start or not pieces:
        cut(offset)
    if len(pieces) == 1:  # not cut after all: read the file as a whole
        return [(Piece(source.name, path), offset)]
    return pieces


_BLANK = b"\t\n\x0b\x0c\r "  # what bytes.strip() and DuckDB's JSON reader skip as blank
_BLANK_START = re.compile(rb"\n[\t\n\x0b\x0c\r ]")  # a line that starts with whitespace


def _records(buf: bytes, lo: int, hi: int) -> int:
    """The records in ``buf[lo:hi]`` (whole lines): lines holding a non-whitespace byte."""
    if hi <= lo:
        return 0
    lines = buf.count(b"\n", lo, hi) + (buf[hi - 1] != 10)
    if buf[lo] not in _BLANK and not _BLANK_START.search(buf, lo, hi):
        return lines  # no line starts with whitespace: none is blank
    a = np.frombuffer(buf, np.uint8, hi - lo, lo)
    ends = np.flatnonzero(a == 10)
    if a[-1] != 10:
        ends = np.append(ends, len(a) - 1)
    filled = np.concatenate(([0], np.cumsum(~np.isin(a, np.frombuffer(_BLANK, np.uint8)))))
    starts = np.concatenate(([0], ends[:-1] + 1))
    return int(np.count_nonzero(filled[ends + 1] > filled[starts]))


def _spool_stem(source: str, path: str) -> str:
    return hashlib.sha1(f"{source}\0{path}".encode()).hexdigest()[:16]


def _plan_parquet(source: SourceConfig, path: str, limit: int) -> list[tuple[Piece, int]]:
    """Runs of row groups of about ``limit`` uncompressed bytes; [] to read the file whole
    (one run, or a file without the configured columns: the reader logs that once)."""
    try:
        meta = pq.ParquetFile(path).metadata
    except (OSError, pa.ArrowException):
        return []
    names = set(meta.schema.to_arrow_schema().names)
    if source.text_field not in names or (source.id_field and source.id_field not in names):
        return []
    pieces: list[tuple[Piece, int]] = []
    first = before = rows = size = 0  # the piece's first group, the rows before it, its rows
    for i in range(meta.num_row_groups):
        size += meta.row_group(i).total_byte_size
        rows += meta.row_group(i).num_rows
        if size >= limit or i == meta.num_row_groups - 1:
            pieces.append((Piece(source.name, path, "row_groups", first, i + 1, before), size))
            first, before, rows, size = i + 1, before + rows, 0, 0
    return pieces if len(pieces) > 1 else []


def read_piece(con: duckdb.DuckDBPyConnection, source: SourceConfig, piece: Piece
               ) -> pa.Table:
    """A piece's rows, as ``read_source_file`` gives a whole file's: a piece of a file gets the
    ids and reasons its records get when the file is read whole."""
    if piece.unit == "file":
        return read_source_file(con, source, piece.path)
    path = Path(piece.path)
    if piece.unit == "row_groups":
        return _read_row_groups(con, source, path, range(piece.start, piece.stop),
                                piece.first_row)
    fmt = infer_format(path, source.format)
    if piece.spool:
        data = Path(piece.spool).read_bytes()
    elif fmt == "jsonl":
        with open(path, "rb") as fh:
            fh.seek(piece.start)
            data = fh.read(piece.stop - piece.start)
    else:
        data = _decompressed_range(path, fmt, piece.start, piece.stop)
    spec = {source.text_field: "VARCHAR", **({source.id_field: "VARCHAR"} if source.id_field
                                              else {})}
    try:
        table = con.read_json(io.BytesIO(data), format="newline_delimited", columns=spec,
                              maximum_object_size=268435456).to_arrow_table()
    except duckdb.Error:
        return _careful(source, path.name, io.BytesIO(data), piece.first_row)
    return _with_ids(source, path.name,
                     table.column(source.id_field) if source.id_field else None,
                     table.column(source.text_field), piece.first_row)


def _decompressed_range(path: Path, fmt: str, start: int, stop: int) -> bytes:
    """Bytes ``start`` to ``stop`` of a compressed file's text, decompressing from its start."""
    parts, offset = [], 0
    with _open_raw(path) as raw:
        for chunk in _chunks(raw, fmt):
            if offset + len(chunk) > start:
                parts.append(chunk[max(start - offset, 0):stop - offset])
            offset += len(chunk)
            if offset >= stop:
                break
    return b"".join(parts)


def _read_row_groups(con: duckdb.DuckDBPyConnection, source: SourceConfig, path: Path,
                     groups: range, first_row: int) -> pa.Table:
    """Row groups of a Parquet file, cast to text by DuckDB as a whole file's are."""
    cols = [source.text_field] + ([source.id_field] if source.id_field else [])
    con.register("row_groups", pq.ParquetFile(path).read_row_groups(groups, columns=cols))
    casts = ", ".join(f'"{c}"::VARCHAR' for c in cols)
    table = con.sql(f"SELECT {casts} FROM row_groups").to_arrow_table()
    con.unregister("row_groups")
    return _with_ids(source, path.name, table.column(1) if source.id_field else None,
                     table.column(0), first_row)
