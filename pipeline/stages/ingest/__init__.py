"""Ingest stage: domain sources -> normalised, filtered, deduplicated, split zstd Parquet.

Reads JSONL (optionally gzip or zstd compressed), TXT (one document per file), CSV and Parquet;
repairs mojibake (ftfy, on the documents that show its mark); normalises Unicode (NFC), control
characters and whitespace; redacts PII with typed placeholders (``pii.py``, per the domain's
policy); applies the filters of ``filters.py`` in order (length, C4, the Gopher quality and
repetition filters of ``quality.py``, language); drops exact duplicates (first occurrence
wins), then near-duplicates (MinHash-LSH with an exact Jaccard check, ``dedup.py``: one
document per cluster is kept); splits a deterministic held-out slice by a hash of the document
id; drops training documents that share a word 13-gram with the held-out slice or a fine-tune
test set (decontamination). All of it is DuckDB SQL, numpy and compiled kernels
(``*kernels.py``) over Arrow buffers, in shards (``prepare_shard``) and then global steps over
the shards' outputs. Every document that does not reach the output is a row in
``excluded.parquet`` with its reason, and the manifest reconciles ``docs_in = kept +
excluded``.

Outputs: ``train-NNNNN.parquet`` shards in input order and ``eval.parquet`` in hash order (any
prefix is a fair sample across sources), both with columns doc_id, source, text;
``excluded.parquet`` (doc_id, source, stage, reason, detail, text); ``modified.parquet`` (the
same columns: one row per change made to a document, mojibake repair or PII redaction, with the
text after it) and ``stats.parquet`` (per source and outcome: documents and characters).

The package: ``readers`` (source files -> Arrow rows; big files cut into pieces, pieces
grouped into shards), ``shard`` (the per-shard step), ``filters`` (the per-document filters,
one class each, applied in order), ``steps`` (the global steps: dedup, split, writers),
``contamination`` (decontamination), ``stage`` (``run``: the steps in order), ``artifact``
(``IngestOutput``, how downstream stages read the result), ``drops`` (incremental ingest:
drops, cached shard work, the index of everything seen); what the filters use: ``quality``,
``dedup``, ``pii`` (with ``ner``, ``gazetteer`` and ``ner_share``), ``language`` and the
compiled ``kernels`` (``text_kernels``, ``gopher_kernels``, ``minhash_kernels``).

Run alone: ``python -c "from pipeline import ingest; ..."`` or ``dapt run DOMAIN --only ingest``.
"""

# Not ``artifact``: the stage never reads its own output, so editing the reader changes the keys
# of the stages downstream and not ingest's (``pipeline/engine/versions.py``).
from pipeline.stages.ingest.drops import Drops, cached_shard
from pipeline.stages.ingest.readers import Piece, read_piece, read_source_file, shard_files
from pipeline.stages.ingest.shard import prepare_shard
from pipeline.stages.ingest.stage import run

__all__ = ["Drops", "Piece", "cached_shard", "prepare_shard", "read_piece", "read_source_file",
           "run", "shard_files"]
