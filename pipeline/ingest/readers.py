"""Ingest's readers: one source file (JSONL, optionally gzip or zstd compressed; TXT, one
document per file; CSV; Parquet; local or an fsspec URL) as Arrow rows (doc_id, source, text,
reason, detail), bad records kept with their reason; and the grouping of a source's files into
shards."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import zstandard

from pipeline.config import IngestConfig, SourceConfig
from pipeline.files import file_size, infer_format, is_url, match_files

RAW_SCHEMA = pa.schema(
    [("doc_id", pa.string()), ("source", pa.string()), ("text", pa.string()),
     ("reason", pa.string()), ("detail", pa.string())]
)


def _table(rows: dict[str, list]) -> pa.Table:
    return pa.table(rows, schema=RAW_SCHEMA)


def _with_ids(source: SourceConfig, path: Path, ids: pa.ChunkedArray | None,
              texts: pa.ChunkedArray) -> pa.Table:
    """Rows (doc_id, source, text, reason, detail) from a file's columns, in Arrow: the id is
    ``source:id``, or ``source:file:row`` where the file has no id for the row."""
    n = len(texts)
    doc_ids = pc.binary_join_element_wise(f"{source.name}:{path.name}:",
                                          pa.array(np.arange(n)).cast(pa.string()), "")
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
    rows: dict[str, list] = {k: [] for k in RAW_SCHEMA.names}

    def add(doc_id: str, text: str | None, reason: str | None, detail: str | None) -> None:
        for k, v in zip(RAW_SCHEMA.names, (doc_id, source.name, text, reason, detail),
                        strict=True):
            rows[k].append(v)

    lineno = -1
    try:
        for lineno, line in enumerate(_lines(path, fmt)):
            fallback_id = f"{source.name}:{path.name}:{lineno}"
            if not line.strip():
                continue
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
            add(doc_id, record[source.text_field], None, None)
    except (OSError, EOFError, zstandard.ZstdError) as exc:  # a truncated .gz or .zst: keep
        # what was read, log the file
        add(f"{source.name}:{path.name}:#{lineno + 1}", None, "unreadable_file",
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
    return _with_ids(source, path, table.column(1) if id_col and fmt != "txt" else None,
                     table.column(0))


def shard_files(config: IngestConfig) -> list[list[tuple[str, str]]]:
    """The per-document work in shards: source files in source then file order, as (source
    name, path or URL), grouped into runs of about ``shard_mb`` (a bigger file is a shard
    alone, so a folder of small files is not thousands of shards). The output depends on the
    file order only, never on the grouping, on which worker ran a shard or when."""
    limit, shards, current, size = config.shard_mb * 1e6, [], [], 0
    for source in config.sources:
        for path in sorted(match_files(source.path)):
            n = file_size(path)
            if current and size + n > limit:
                shards.append(current)
                current, size = [], 0
            current.append((source.name, path))
            size += n
    return shards + ([current] if current else [])
