"""Ingest's held-out groups, a global step after dedup: column ``grp`` of the ``docs`` table, the
unit the held-out rule hashes (``steps.held_out_sql``), so every document of a group lands on the
same side of the split, and on the same side of its dev/test split (``artifact.split_dev_test``).

Per source (``ingest.held_out``): ``id`` keeps today's rule (the group is the document's id);
``{id_regex}`` names groups by the id (an ICD-10 category, a licence family); ``auto`` and the
regex rule also link near-twins (one-word-edit neighbours of up to 256 words, ``twins.py``)
across every grouped source, transitively, so a template's variants never straddle the split.
A group merged by twins takes the smallest name among its members: the same corpus always gives
the same groups. Near-twins are linked within one drop's documents; a later drop's twin of an
earlier document is not (the report's twin rate shows it if it happens).
"""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa

from pipeline.config import GroupRegex, IngestConfig
from pipeline.stages.ingest import twins

# A text with at most MAX_WORDS words rarely has more characters than this; longer texts are
# not read for twins (bounds the memory to the short texts).
MAX_TWIN_CHARS = twins.MAX_WORDS * 40


def _rules(config: IngestConfig) -> dict[str, object]:
    return {s.name: config.group_rule(s.name) for s in config.sources}


def _name_by_regex(con: duckdb.DuckDBPyConnection, config: IngestConfig) -> None:
    for name, rule in _rules(config).items():
        if not isinstance(rule, GroupRegex):
            continue
        group = 1 if "(" in rule.id_regex.replace("\\(", "").replace("(?", "") else 0
        pattern = rule.id_regex.replace("'", "''")
        con.execute(f"""
            UPDATE docs SET grp = 'group:' || regexp_extract(
                substr(doc_id, length(source) + 2), '{pattern}', {group})
            WHERE source = '{name}' AND regexp_extract(
                substr(doc_id, length(source) + 2), '{pattern}', {group}) <> ''""")


def _short_texts(con: duckdb.DuckDBPyConnection, parts: list[str], sources: list[str]
                 ) -> pa.Table:
    """(ord, text) of the kept documents of ``sources`` short enough to have twins."""
    from pipeline.stages.ingest.steps import _texts_of

    empty = pa.table({"ord": pa.array([], pa.int64()), "text": pa.array([], pa.string())})
    if not sources:
        return empty
    names = ", ".join(f"'{s}'" for s in sources)
    ords = con.execute(f"SELECT ord FROM docs WHERE reason IS NULL AND source IN ({names}) "
                       f"AND chars <= {MAX_TWIN_CHARS} ORDER BY ord").fetchnumpy()["ord"]
    tables = list(_texts_of(con, parts, np.asarray(ords, np.int64))) if len(ords) else []
    return pa.concat_tables(tables) if tables else empty


def assign_groups(con: duckdb.DuckDBPyConnection, config: IngestConfig, parts: list[str]
                  ) -> dict[str, int]:
    """Adds ``docs.grp``; returns the counts (groups, near-twin pairs and linked documents)."""
    # imported here: the pretrain stage reads ingest's package, and its wheelhouse has no scipy
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    con.execute("ALTER TABLE docs ADD COLUMN grp VARCHAR; UPDATE docs SET grp = doc_id")
    _name_by_regex(con, config)
    linked = [s for s, rule in _rules(config).items() if rule != "id"]
    short = _short_texts(con, parts, linked)
    edges = twins.twin_edges(short.column("text"))
    edges = edges[edges[:, 0] != edges[:, 1]]
    counts = {"heldout_twin_pairs": int(len(edges)), "heldout_twin_linked_docs": 0}
    if len(edges):
        kept = con.sql("SELECT ord, grp FROM docs WHERE reason IS NULL ORDER BY ord"
                       ).to_arrow_table()
        k_ord = kept.column("ord").to_numpy()
        names = np.array(kept.column("grp").to_pylist(), dtype=object)
        s_ord = short.column("ord").to_numpy()
        at = np.searchsorted(k_ord, s_ord)  # the short texts' rows among the kept documents
        # nodes: the kept documents; edges: twins, and each document to its named group's first
        _, first, inverse = np.unique(names, return_index=True, return_inverse=True)
        rows = np.concatenate([at[edges[:, 0]], np.arange(len(k_ord))])
        cols = np.concatenate([at[edges[:, 1]], first[inverse]])
        graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(k_ord),) * 2)
        _, comp = connected_components(graph, directed=False)
        order = np.lexsort((names.astype(str), comp))  # per component, its smallest name first
        _, first_of = np.unique(comp[order], return_index=True)
        merged = names[order][first_of][comp]
        changed = merged != names
        counts["heldout_twin_linked_docs"] = int(np.isin(comp, comp[at[edges.ravel()]]).sum())
        if changed.any():
            con.register("merged", pa.table({"ord": k_ord[changed],
                                             "grp": pa.array(list(merged[changed]), pa.string())}))
            con.execute("UPDATE docs SET grp = m.grp FROM merged m WHERE docs.ord = m.ord")
            con.unregister("merged")
    counts["heldout_groups"] = int(con.execute(
        "SELECT count(DISTINCT grp) FROM docs WHERE reason IS NULL").fetchall()[0][0])
    return counts
