"""Which documents the NER types (person, location) are looked for in, when ``pii.ner_share``
is below 1, and how many that left out.

NER is most of a PII pass's time (docs/pii.md), so a profile meant to be quick (``tiny``: the
demo) runs it on a share of the documents. The share is chosen by a salted hash of the doc id,
as the held-out split is, so a rerun, another shard layout or another drop of a lineage picks
the same documents. Documents outside the share still get every pattern type (email, phone,
record numbers, ...); only their names and places stay. Each shard counts both sides
(``ner_docs_scanned`` + ``ner_docs_skipped`` = its documents), the manifest sums them and the
report says how many documents NER read.
"""

from __future__ import annotations

import logging

import duckdb

from pipeline.config import PII_NER_TYPES, PiiConfig

log = logging.getLogger("dapt")

SALT = "ner_share:"
SCALE = 1_000_000_000  # the hash's resolution: shares down to 1e-9


def ner_types(config: PiiConfig) -> list[str]:
    """The NER types this policy looks for (none when PII is off or their policy is keep)."""
    if not config.enabled:
        return []
    return [n for n in PII_NER_TYPES
            if n in config.types and config.policy.get(n, "redact") != "keep"]


def predicate(share: float, column: str = "doc_id") -> str:
    """A DuckDB boolean expression: true for the documents inside the share."""
    if share >= 1:
        return "true"
    return f"md5_number('{SALT}' || {column}) % {SCALE} < {round(share * SCALE)}"


def scope(con: duckdb.DuckDBPyConnection, table: str, config: PiiConfig) -> str:
    """``predicate`` for ``table``'s documents; below a share of 1 the table needs doc ids."""
    if config.ner_share < 1 and ner_types(config):
        columns = {r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()}
        if "doc_id" not in columns:
            raise ValueError(f"pii.ner_share {config.ner_share:g} picks documents by their "
                             f"doc_id, and table {table!r} has none (columns: "
                             f"{sorted(columns)}); set ner_share to 1 or add a doc_id")
    return predicate(config.ner_share)


def count(con: duckdb.DuckDBPyConnection, table: str, config: PiiConfig) -> dict[str, int]:
    """``{"ner_docs_scanned": n, "ner_docs_skipped": m}`` over every document of ``table``
    (scanned: inside the share, whether or not a name was found); empty when no NER type
    runs."""
    if not ner_types(config):
        return {}
    inside = scope(con, table, config)
    scanned, total = con.execute(f"SELECT count(*) FILTER (WHERE {inside}), count(*) "
                                 f"FROM {table}").fetchall()[0]
    return {"ner_docs_scanned": int(scanned), "ner_docs_skipped": int(total - scanned)}


def record(config: PiiConfig, counts: dict[str, int]) -> dict[str, dict]:
    """The manifest's ``extra.ner`` ({types, share}) when an NER type ran, with a log line when
    the share left documents out; empty otherwise."""
    types = ner_types(config)
    if not types:
        return {}
    if counts.get("ner_docs_skipped"):
        found = "names" if "location" not in types else \
            "places" if "person" not in types else "names and places"
        log.warning("ingest: NER (%s) ran on %d of %d documents (pii.ner_share %g): %s in "
                    "the rest are not redacted", "/".join(types), counts["ner_docs_scanned"],
                    counts["docs_in"], config.ner_share, found)
    return {"ner": {"types": types, "share": config.ner_share}}
