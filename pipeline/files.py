"""Data files: telling a URL from a local path, matching globs, inferring a file's format,
reading configured columns, writing a file atomically. Used by domain resolution, ingest, the
labelled task files and every writer whose file a reader (or a resumed build) must never find
half written."""

from __future__ import annotations

import glob
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # duckdb and pyarrow load in read_columns: the artifact store imports this
    import pyarrow as pa


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8, Unix line ends) to ``path`` through a uniquely named temporary
    file in the same directory, renamed into place: a reader sees the old file or the new one,
    never half of one, and two writers never share a temporary file. The temporary file is
    removed if the write fails."""
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with tmp.open("x", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def is_url(path: str | Path) -> bool:
    """An fsspec URL (``s3://``, ``gs://``, ``memory://``, ...) rather than a local path."""
    return "://" in str(path)


def match_files(pattern: str) -> list[str]:
    """Files (not directories) matching a path or glob; ``**`` recurses. An fsspec URL is
    globbed by its filesystem (install ``s3fs``, ``gcsfs``, ... for ``s3://``, ``gs://``)."""
    if is_url(pattern):
        import fsspec

        fs, root = fsspec.core.url_to_fs(pattern)
        found = fs.glob(root) if glob.has_magic(root) else [root] if fs.exists(root) else []
        return [fs.unstrip_protocol(p) for p in sorted(found) if fs.isfile(p)]
    return [p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]


def file_size(path: str) -> int:
    """Bytes of a local file, or of a URL as its filesystem reports them."""
    if not is_url(path):
        return os.path.getsize(path)
    import fsspec

    fs, root = fsspec.core.url_to_fs(path)
    return int(fs.size(root) or 0)


def infer_format(path: Path, declared: str | None) -> str:
    if declared:
        return declared
    name = path.name.lower()
    for suffix, fmt in ((".jsonl.gz", "jsonl.gz"), (".json.gz", "jsonl.gz"),
                        (".jsonl.zst", "jsonl.zst"), (".json.zst", "jsonl.zst"),
                        (".jsonl", "jsonl"), (".json", "jsonl"), (".txt", "txt"), (".csv", "csv"),
                        (".parquet", "parquet")):
        if name.endswith(suffix):
            return fmt
    raise ValueError(
        f"cannot infer the format of {path}; set `format` on the source "
        "(jsonl, jsonl.gz, jsonl.zst, txt, csv, parquet)"
    )


def read_columns(path: Path, fields: dict[str, str], where: str) -> pa.Table:
    """The configured columns of a JSONL, CSV or Parquet file as VARCHAR, named after their
    config field (``{"id_field": "key"}`` gives a column ``id``); ``where`` names the config
    section in errors."""
    fmt = infer_format(path, None)
    reader = {"jsonl": "read_json", "jsonl.gz": "read_json", "jsonl.zst": "read_json",
              "csv": "read_csv",
              "parquet": "read_parquet"}.get(fmt)
    if reader is None:
        raise ValueError(f"{where}.path: {path} must be JSONL, CSV or Parquet, not {fmt}")
    columns = ", ".join(f'"{column}"::VARCHAR AS {name.removesuffix("_field")}'
                        for name, column in fields.items())
    quoted = str(path).replace("'", "''")
    import duckdb

    try:
        return duckdb.connect().sql(
            f"SELECT {columns} FROM {reader}('{quoted}')").to_arrow_table()
    except duckdb.BinderException as exc:
        named = ", ".join(f"{name}={column!r}" for name, column in fields.items())
        raise ValueError(f"{where}: {path} lacks a configured field ({named}): {exc}") from None
