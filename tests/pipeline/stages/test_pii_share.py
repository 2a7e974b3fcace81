"""``pii.ner_share``: NER (person, location) on a share of the documents chosen by their id, the
pattern types on all of them, both sides counted and reported."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from pipeline import domains
from pipeline.config import IngestConfig, PiiConfig
from pipeline.engine.artifacts import MANIFEST, Artifact, Manifest
from pipeline.lifecycle import report
from pipeline.stages import ingest
from pipeline.stages.ingest import ner_share, pii
from pipeline.stages.ingest.artifact import IngestOutput
from pipeline.stages.pretrain.model_card import pii_lines

SHARE = 0.5
NAMES = [("Maria", "Garcia"), ("Wei", "Chen"), ("John", "Smith"), ("Anna", "Kowalski"),
         ("James", "Miller"), ("Sarah", "Jensen")]


def _chosen(doc_id: str, share: float) -> bool:
    """The share's choice recomputed apart from DuckDB: MD5 of the salted id, little-endian."""
    digest = hashlib.md5((ner_share.SALT + doc_id).encode()).digest()
    return int.from_bytes(digest, "little") % ner_share.SCALE < round(share * ner_share.SCALE)


def _ingest(tmp: Path, shard_mb: float) -> tuple[Path, Manifest, dict[str, str]]:
    """The 80 notes ingested with NER on half of them; (artifact dir, manifest, {doc_id:
    text})."""
    out = tmp / f"out-{shard_mb}"
    out.mkdir()
    config = IngestConfig(
        sources=[{"name": "a", "path": str(tmp / "a.jsonl"), "id_field": "id"}],
        min_kept_docs=1, eval_fraction=0.2, min_chars=25, shard_mb=shard_mb,
        pii={"types": ["email", "phone", "person"], "ner_share": SHARE, "ner_workers": 1},
        quality={"gopher": {"enabled": False}, "repetition": {"enabled": False}},
        near_dup={"enabled": False}, held_out={"group_by": "id"},
        decontamination={"enabled": False})
    manifest = ingest.run(config, {}, out)
    (out / MANIFEST).write_text(manifest.to_json())  # as the store publishes it
    texts = {r["doc_id"]: r["text"] for name in ("train-00000.parquet", "eval.parquet")
             for r in pq.read_table(out / name).to_pylist()}
    return out, manifest, texts


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[float, tuple[Path, Manifest, dict]]:
    """One shard, and several shards of ~2 KB, over the same 80 notes, each with a titled
    name, a full name, a phone number and an email address."""
    tmp = tmp_path_factory.mktemp("ner_share")
    docs = [{"id": str(i), "text": f"Note {i}: Dr. {NAMES[i % 6][1]} saw "
             f"{NAMES[(i + 1) % 6][0]} {NAMES[(i + 1) % 6][1]} today. Call 555-234-{i:04d} or "
             f"write to desk{i}@clinic.example.com for the results."} for i in range(80)]
    (tmp / "a.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    return {mb: _ingest(tmp, mb) for mb in (32.0, 0.002)}


def test_the_share_picks_the_same_documents_whatever_the_shards(runs: dict) -> None:
    (_, one, texts), (_, many, texts_many) = runs[32.0], runs[0.002]
    assert (one.counts["ingest_shards"], many.counts["ingest_shards"] > 1) == (1, True)
    assert texts == texts_many and len(texts) == 80
    scanned = {doc_id for doc_id, text in texts.items() if "<PERSON>" in text}
    assert scanned == {doc_id for doc_id in texts if _chosen(doc_id, SHARE)}
    assert 0 < len(scanned) < 80
    for doc_id, text in texts.items():
        # outside the share a note keeps its names and still loses its phone and email
        assert "<PHONE>" in text and "<EMAIL>" in text and "@" not in text, text
        if doc_id not in scanned:
            i = int(doc_id.removeprefix("a:"))
            assert f"Dr. {NAMES[i % 6][1]} saw {' '.join(NAMES[(i + 1) % 6])}" in text, text
        else:
            assert re.search(r"Dr\. <PERSON> saw <PERSON> today", text), text


def test_scanned_and_skipped_add_up_and_the_report_says_so(runs: dict) -> None:
    out, manifest, texts = runs[32.0]
    counts = manifest.counts
    scanned = sum(_chosen(doc_id, SHARE) for doc_id in texts)
    assert (counts["ner_docs_scanned"], counts["ner_docs_skipped"]) == (scanned, 80 - scanned)
    assert counts["ner_docs_scanned"] + counts["ner_docs_skipped"] == counts["docs_in"] == 80
    assert counts["pii_phone"] == counts["pii_email"] == 80
    assert runs[0.002][1].counts["ner_docs_scanned"] == scanned
    ing = IngestOutput(Artifact("ingest", "k", out))
    coverage = ing.ner_coverage
    assert coverage is not None and (coverage.scanned, coverage.documents) == (scanned, 80)
    markdown = report.to_markdown(report._corpus_blocks(ing))
    assert (f"NER (person) ran on {scanned} of 80 documents (pii.ner_share 0.5): names in the "
            "rest are not redacted.") in markdown
    assert f"NER read {scanned} of 80 documents (`ingest.pii.ner_share`)" in " ".join(
        pii_lines(counts))



def test_a_share_is_validated_and_the_tiny_profile_sets_it() -> None:
    for bad in (0, -0.5, 1.5):
        with pytest.raises(ValidationError, match=rf"ner_share: {bad!r}.*0 < ner_share <= 1"):
            PiiConfig(types=["person"], ner_share=bad)
    medical = domains.get("medical").spec
    tiny, cpu, base = (medical.resolve(p).ingest.pii for p in ("tiny", "cpu", "base"))
    assert tiny.ner_share < 0.2 and cpu.ner_share == base.ner_share == 1.0
    assert tiny.types == cpu.types and "person" in tiny.types  # medical's own types stay


def test_share_one_scans_every_document_and_a_share_needs_ids() -> None:
    con = duckdb.connect()
    con.register("t0", pa.table({"ord": [0, 1], "doc_id": ["a:0", "a:1"],
                                 "text": ["Dr. Moreau saw him.", "Wei Chen called 555-234-5678."]}))
    con.execute("CREATE TABLE t AS SELECT * FROM t0; CREATE TABLE u AS SELECT ord, text FROM t0")
    every = PiiConfig(types=["phone", "person"])
    assert ner_share.count(con, "t", every) == {"ner_docs_scanned": 2, "ner_docs_skipped": 0}
    assert ner_share.count(con, "t", PiiConfig(types=["phone"])) == {}  # no NER type: no count
    with pytest.raises(ValueError, match="pii.ner_share 0.5 picks documents by their doc_id"):
        pii.redact(con, "u", PiiConfig(types=["person"], ner_share=0.5))


def test_the_stage_ends_its_ner_worker_processes(runs: dict, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The NER worker pool (a spaCy model per process) ends with the shards, not at exit: a
    run would hold it through pretraining. ``ner.shutdown`` joins it (test_pii.py checks that
    on a real pool)."""
    from pipeline.stages.ingest import ner

    calls: list[bool] = []
    real = ner.shutdown
    monkeypatch.setattr(ner, "shutdown", lambda: calls.append(True) or real())
    notes = runs[32.0][0].parent / "a.jsonl"  # the module's notes, a fresh output dir
    (tmp_path / "a.jsonl").write_bytes(notes.read_bytes())
    _, manifest, _ = _ingest(tmp_path, 32.0)
    assert calls == [True] and ner._pool["executor"] is None
    assert manifest.counts == runs[32.0][1].counts
