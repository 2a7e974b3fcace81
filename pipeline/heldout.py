"""The held-out slice in two disjoint parts: ``dev`` for the choices a run makes (checkpoint
choice, the LR x replay sweep, the curves during training) and ``test`` for the figures it
reports (evaluate, the verdict).

Ingest holds documents out by a hash of their id; this splits them again by a second, independent
hash of the id (``DEV_SHARE`` to dev), so nothing chosen on dev has seen a test document and the
split does not change when the corpus grows. Each part keeps ingest's hash order: a prefix is a
fair sample.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.artifacts import Artifact
from pipeline.ingest import held_out

DEV_SHARE = 0.3
PARTS = ("dev", "test")


def dev_mask(doc_ids: pa.ChunkedArray | pa.Array) -> pa.Array:
    """True where a held-out document belongs to dev."""
    con = duckdb.connect()
    con.register("ids", pa.table({"doc_id": doc_ids}))
    return con.sql(
        f"SELECT md5_number('dev:' || doc_id) % 1000000 < {round(DEV_SHARE * 1_000_000)} "
        "AS dev FROM ids").to_arrow_table().column("dev").combine_chunks()


def split(table: pa.Table) -> dict[str, pa.Table]:
    """``table`` (with a ``doc_id`` column) as its dev and test rows, order kept."""
    mask = dev_mask(table.column("doc_id"))
    return {"dev": table.filter(mask), "test": table.filter(pc.invert(mask))}


def parts(ingest: Artifact, columns: list[str]) -> dict[str, dict[str, pa.Table]]:
    """``{"domain"|"general": {"dev"|"test": table}}`` of the ingest artifact's held-out text;
    ``columns`` must include ``source`` (``doc_id`` is read in any case)."""
    wanted = list(dict.fromkeys([*columns, "doc_id"]))
    out = {}
    for slice_, table in held_out(ingest, wanted).items():
        halves = split(table)
        out[slice_] = {p: t.select(columns) for p, t in halves.items()}
    return out
