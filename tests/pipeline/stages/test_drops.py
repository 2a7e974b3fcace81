"""Incremental ingest over drops of real sample documents (HPO term definitions): reuse of
earlier work, dedup against earlier drops, deleted and rewritten files, a killed drop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.driver import Session
from pipeline.stages.ingest.artifact import IngestOutput
from tests.e2e_domain import write_test_domain

REPO = Path(__file__).resolve().parents[3]
LINES_PER_DROP = 700
OUTPUTS = ("eval.parquet", "excluded.parquet", "index.parquet", "modified.parquet",
           "stats.parquet", "files.parquet")


@pytest.fixture
def domain(samples_dir: Path, tmp_path: Path) -> Path:
    """A domain whose one source is the glob ``data/drops/*.jsonl``; each new file is one piece."""
    path = write_test_domain(samples_dir, tmp_path)
    doc = yaml.safe_load(path.read_text())
    doc["ingest"]["sources"] = [{"name": "hpo", "path": "data/drops/*.jsonl", "id_field": "id"}]
    doc["ingest"].update(min_kept_docs=50, shard_mb=0.5)  # a drop file is one piece
    doc["pretrain"] = {}  # no general replay: the one source is the domain's
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    (tmp_path / "data/drops").mkdir()
    return path


def _hpo(samples_dir: Path, drop: int) -> list[str]:
    lines = (samples_dir / "medical/hpo.jsonl").read_text().splitlines(keepends=True)
    return lines[(drop - 1) * LINES_PER_DROP:drop * LINES_PER_DROP]


def _put(domain: Path, name: str, lines: list[str]) -> Path:
    path = domain.parent / "data/drops" / name
    path.write_text("".join(lines))
    return path


def _ingest(domain: Path, workdir: Path, **kw) -> tuple[IngestOutput, Session]:
    session = Session.open(None, "tiny", workdir=workdir, domain_file=domain)
    session.run_stage("ingest", **kw)
    session.finish()
    return IngestOutput(session.artifacts["ingest"]), session


def _ids(paths: list[Path]) -> list[str]:
    return [i for p in paths for i in pq.read_table(p, columns=["doc_id"]).column(0).to_pylist()]


def _excluded(out: IngestOutput) -> dict[str, tuple[str, str]]:
    return {r["doc_id"]: (r["reason"], r["detail"])
            for r in pq.read_table(out.excluded_file).to_pylist()}


def _reconciles(out: IngestOutput) -> None:
    assert out.docs_in == out.kept + out.excluded == pq.read_metadata(
        out.excluded_file).num_rows + out.kept
    assert sum(out.excluded_by_reason.values()) == out.excluded


@pytest.mark.slow  # several ingests
def test_three_drops_reuse_earlier_work_and_exclude_cross_drop_duplicates(
        samples_dir: Path, domain: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    _put(domain, "d1.jsonl", _hpo(samples_dir, 1))
    one, _ = _ingest(domain, work)
    assert (one.drop_number, one.previous) == (1, None)
    assert one.train_shards == one.drop_train_shards

    _put(domain, "d2.jsonl", _hpo(samples_dir, 2))
    two, session = _ingest(domain, work)
    c2 = two.artifact.manifest.counts
    assert (two.drop_number, two.previous) == (2, one.artifact.key)
    # only the new file was read: drop 1's file is reused from drop 1, not processed again
    assert (c2["files_new"], c2["files_reused"], c2["shards_built"]) == (1, 1, 1)
    assert c2["docs_in"] == LINES_PER_DROP
    # ... and the run's catalog record (what `dapt runs` prints) says so
    [stage] = session.catalog.stage_runs(session.run_id)
    assert json.loads(stage["metrics"]) == {"drop": 2.0, "files_reused": 1.0,
                                            "shards_built": 1.0, "shards_cached": 0.0}
    assert two.train_shards == one.train_shards + two.drop_train_shards
    _reconciles(two)

    # drop 3: new documents, plus a verbatim copy and a one-word edit of drop-1 documents
    kept_one = pq.read_table(one.drop_train_shards[0]).to_pylist()
    copied = kept_one[3]
    edited = next(r for r in kept_one if len(r["text"].split()) > 60)
    words = edited["text"].split()
    words[len(words) // 2] = "notably"
    planted = [json.dumps({"id": "copy", "text": copied["text"]}) + "\n",
               json.dumps({"id": "edit", "text": " ".join(words)}) + "\n"]
    _put(domain, "d3.jsonl", _hpo(samples_dir, 3) + planted)
    three, _ = _ingest(domain, work)
    c3 = three.artifact.manifest.counts
    assert (three.drop_number, c3["files_reused"], c3["docs_in"]) == (3, 2, LINES_PER_DROP + 2)
    excluded = _excluded(three)
    assert excluded["hpo:copy"] == ("duplicate", f"duplicate of {copied['doc_id']} (drop 1)")
    reason, detail = excluded["hpo:edit"]
    assert reason == "near_duplicate"
    assert detail.startswith(f"near duplicate of {edited['doc_id']} (drop 1) (Jaccard 0.")
    _reconciles(three)

    # the cumulative corpus: every drop's train shards, one held-out slice over all drops
    train_ids = _ids(three.train_shards)
    eval_ids = _ids([three.eval_file])
    assert set(_ids([one.eval_file])) <= set(eval_ids)
    assert len(train_ids) == len(set(train_ids)) == c3["corpus_train_docs"]
    assert not set(train_ids) & set(eval_ids)
    assert len(eval_ids) == c3["corpus_eval_docs"] == sum(
        IngestOutput(a).artifact.manifest.counts["eval_docs"] for a in
        (one.artifact, two.artifact, three.artifact))
    assert three.train_chars == sum(
        pc.sum(pc.utf8_length(pq.read_table(p, columns=["text"]).column(0))).as_py()
        for p in three.train_shards)

    # `--only ingest` rebuilds the artifact from the cached shard work: same bytes
    before = {n: (three.path / n).read_bytes() for n in OUTPUTS}
    again, _ = _ingest(domain, work, force=True)
    assert again.artifact.key == three.artifact.key
    assert (again.artifact.manifest.counts["shards_cached"],
            again.artifact.manifest.counts["shards_built"]) == (1, 0)
    assert {n: (again.path / n).read_bytes() for n in OUTPUTS} == before
    # `--force` redoes the shard work too
    forced, _ = _ingest(domain, work, force=True, redo_shards=True)
    assert forced.artifact.manifest.counts["shards_built"] == 1
    assert {n: (forced.path / n).read_bytes() for n in OUTPUTS} == before


@pytest.mark.slow  # several ingests
def test_deleted_and_rewritten_files_are_logged_and_lose_nothing(
        samples_dir: Path, domain: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    d1 = _put(domain, "d1.jsonl", _hpo(samples_dir, 1))
    one, _ = _ingest(domain, work)
    lines = _hpo(samples_dir, 2)
    _put(domain, "d2.jsonl", lines)
    two, _ = _ingest(domain, work)

    # drop 3: d1 deleted; d2 rewritten: its first record edited, its last one gone, one added
    d1.unlink()
    first = json.loads(lines[0])
    first["text"] += " Revised."
    added = _hpo(samples_dir, 3)[0]
    _put(domain, "d2.jsonl", [json.dumps(first) + "\n", *lines[1:-1], added])
    three, _ = _ingest(domain, work)
    m = three.artifact.manifest
    assert (m.counts["files_deleted"], m.counts["files_rewritten"], m.counts["files_new"]) == \
        (1, 1, 0)
    assert m.extra["file_changes"]["deleted"] == [str(d1)]
    assert [Path(p).name for p in m.extra["file_changes"]["rewritten"]] == ["d2.jsonl"]
    # the rewritten file is read again whole; every record is kept or logged with a reason
    assert m.counts["docs_in"] == len(lines)
    _reconciles(three)
    excluded = _excluded(three)
    # an unchanged record duplicates its own earlier version, named with the drop that has it
    kept_before = set(_ids(two.train_shards + [two.eval_file]))
    unchanged = next(i for i in (f"hpo:{json.loads(line)['id']}" for line in lines[1:-1])
                     if i in kept_before)
    assert excluded[unchanged] == ("duplicate", f"duplicate of {unchanged} (drop 2)")
    # nothing of the earlier drops leaves the corpus: the deleted file's documents stay, and
    # so does the record the rewrite dropped
    now = set(_ids(three.train_shards + [three.eval_file]))
    assert kept_before <= now
    assert f"hpo:{json.loads(added)['id']}" in now | set(excluded)
    # the files table keeps every version ingested, with the drop that ingested it
    files = pq.read_table(three.path / "files.parquet").to_pylist()
    assert [(Path(f["path"]).name, f["drop"], f["last_seen"]) for f in files] == [
        ("d1.jsonl", 1, 2), ("d2.jsonl", 2, 2), ("d2.jsonl", 3, 3)]

    # drop 4 deletes the rewritten file and brings one record of it back in a new file
    (domain.parent / "data/drops/d2.jsonl").unlink()
    record = next(line for line in lines if f"hpo:{json.loads(line)['id']}" == unchanged)
    _put(domain, "again.jsonl", [record])
    four, _ = _ingest(domain, work)
    c4 = four.artifact.manifest.counts
    assert (c4["drop"], c4["files_deleted"], c4["files_new"], c4["kept"]) == (4, 1, 1, 0)
    assert _excluded(four) == {unchanged: ("duplicate", f"duplicate of {unchanged} (drop 2)")}
    assert set(_ids(four.train_shards + [four.eval_file])) == now

    # drop 5: no file changed, but the fine-tune test split did (it is decontaminated
    # against): a drop with no document, same corpus, same lineage
    doc = yaml.safe_load(domain.read_text())
    doc["finetune"]["test_fraction"] = 0.25
    domain.write_text(yaml.safe_dump(doc, sort_keys=False))
    five, _ = _ingest(domain, work)
    c5 = five.artifact.manifest.counts
    assert (five.drop_number, five.previous) == (5, four.artifact.key)
    assert (c5["docs_in"], c5["files_reused"], c5["index_docs"]) == (0, 1, 0)
    # the earlier training text was checked against the new split: whatever it retracted is
    # logged, and nothing else left
    retracted = {r["doc_id"] for r in pq.read_table(five.path / "retracted.parquet").to_pylist()}
    assert c5["retracted_contaminated"] == len(retracted)
    assert set(_ids(five.train_shards + [five.eval_file])) == now - retracted


@pytest.mark.slow  # several ingests
def test_a_test_set_added_later_retracts_earlier_training_documents(
        samples_dir: Path, domain: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    _put(domain, "d1.jsonl", _hpo(samples_dir, 1))
    one, _ = _ingest(domain, work)
    probe = next(r for r in pq.read_table(one.drop_train_shards[0]).to_pylist()
                 if len(r["text"].split()) > 40)
    # a test set added after drop 1 that holds one of drop 1's training documents
    (domain.parent / "data/probe.jsonl").write_text(
        json.dumps({"id": "p1", "text": probe["text"]}) + "\n")
    doc = yaml.safe_load(domain.read_text())
    doc["ingest"]["decontamination"] = {"test_sets": [{"name": "probe",
                                                       "path": "data/probe.jsonl"}]}
    domain.write_text(yaml.safe_dump(doc, sort_keys=False))
    _put(domain, "d2.jsonl", _hpo(samples_dir, 2))
    two, _ = _ingest(domain, work)
    c2 = two.artifact.manifest.counts
    assert (two.drop_number, two.previous) == (2, one.artifact.key)  # the same lineage
    retracted = pq.read_table(two.path / "retracted.parquet").to_pylist()
    assert probe["doc_id"] in {r["doc_id"] for r in retracted}
    assert all(r["reason"] == "contaminated" and "test set probe" in r["detail"]
               for r in retracted)
    assert c2["retracted_contaminated"] == len(retracted)
    # drop 1's shard is replaced, in the cumulative corpus, by a copy without the document
    train = _ids(two.train_shards)
    assert probe["doc_id"] not in train
    assert two.train_shards[0].parent == two.path
    assert two.train_shards[0].name.startswith("retrofit-")
    assert len(train) == len(set(train)) == c2["corpus_train_docs"]
    assert set(_ids(one.train_shards)) - set(train) == {r["doc_id"] for r in retracted}

    # the next drop keeps the replacement and checks nothing earlier again
    _put(domain, "d3.jsonl", _hpo(samples_dir, 3))
    three, _ = _ingest(domain, work)
    assert three.artifact.manifest.counts["retracted_contaminated"] == 0
    assert three.train_shards[:2] == two.train_shards
    assert probe["doc_id"] not in _ids(three.train_shards)


KILL_AFTER_ONE_SHARD = textwrap.dedent("""
    import os, signal, sys
    from pipeline.driver import Session

    session = Session.open(None, "tiny", workdir=sys.argv[1], domain_file=sys.argv[2])

    def map_then_die(fn, jobs):
        fn(*jobs[0])  # the first shard's work is published in the store, then the process dies
        os.kill(os.getpid(), signal.SIGKILL)

    session.run_stage("ingest", map_shards=map_then_die)
""")


@pytest.mark.slow  # several ingests
def test_a_drop_killed_mid_ingest_reruns_to_the_same_result(
        samples_dir: Path, domain: Path, tmp_path: Path) -> None:
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    doc = yaml.safe_load(domain.read_text())  # d1 (134 kB) one piece; d2a, d2b (72 kB) 2 shards
    doc["ingest"]["shard_mb"] = 0.14
    domain.write_text(yaml.safe_dump(doc, sort_keys=False))
    _put(domain, "d1.jsonl", _hpo(samples_dir, 1))
    for work in (killed, clean):
        _ingest(domain, work)
    lines = _hpo(samples_dir, 2)
    _put(domain, "d2a.jsonl", lines[:LINES_PER_DROP // 2])
    _put(domain, "d2b.jsonl", lines[LINES_PER_DROP // 2:])

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", KILL_AFTER_ONE_SHARD, str(killed), str(domain)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]
    store = killed / "artifacts"
    assert len(list((store / "ingest-shard").glob("*/manifest.json"))) == 2  # d1 + d2a
    assert len(list((store / "ingest").glob("*/manifest.json"))) == 1  # drop 1 only

    rerun, _ = _ingest(domain, killed)
    reference, _ = _ingest(domain, clean)
    c = rerun.artifact.manifest.counts
    assert (rerun.drop_number, c["shards_cached"], c["shards_built"]) == (2, 1, 1)
    assert rerun.artifact.key == reference.artifact.key
    for a, b in zip(rerun.drop_train_shards, reference.drop_train_shards, strict=True):
        assert a.read_bytes() == b.read_bytes()
    assert {n: (rerun.path / n).read_bytes() for n in OUTPUTS} == \
        {n: (reference.path / n).read_bytes() for n in OUTPUTS}
    ignored = {"shards_cached", "shards_built"}
    assert {k: v for k, v in c.items() if k not in ignored} == \
        {k: v for k, v in reference.artifact.manifest.counts.items() if k not in ignored}


def test_a_drop_plans_only_its_new_files(samples_dir: Path, domain: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Earlier compressed files are not decompressed again to plan a drop's shards: the cost
    of a drop follows its new files, not the history."""
    import gzip

    from pipeline.stages.ingest import readers

    planned: list[str] = []
    plan_file = readers.plan_file

    def recording(source, path, limit, spool=None):
        planned.append(Path(path).name)
        return plan_file(source, path, limit, spool)

    monkeypatch.setattr(readers, "plan_file", recording)
    doc = yaml.safe_load(domain.read_text())
    doc["ingest"]["sources"][0]["path"] = "data/drops/*.jsonl.gz"
    doc["ingest"]["shard_mb"] = 0.05  # each file is cut into pieces: planning decompresses it
    domain.write_text(yaml.safe_dump(doc, sort_keys=False))
    drops = domain.parent / "data/drops"
    work = tmp_path / "work"
    for n in (1, 2):
        (drops / f"d{n}.jsonl.gz").write_bytes(gzip.compress("".join(_hpo(samples_dir, n))
                                                             .encode(), mtime=0))
        out, _ = _ingest(domain, work)
        c = out.artifact.manifest.counts
        assert (c["files_new"], c["files_reused"]) == (1, n - 1)
        assert c["ingest_shards"] > 1  # the new file was cut
        assert c["docs_in"] == LINES_PER_DROP
        # the reader's view of the same drop
        assert (out.drop_number, out.is_drop, out.docs_in) == (n, True, LINES_PER_DROP)
        _reconciles(out)
        assert {s: Path(f).name for s, [f] in out.source_files.items()} == {
            "hpo": f"d{n}.jsonl.gz"}  # this drop's new file only
        assert len(out.shard_keys) == c["ingest_shards"]
        assert out.sources["hpo"] == {"docs_in": out.docs_in, "kept": out.kept}
        assert (out.previous is None) == (n == 1)
    assert planned == ["d1.jsonl.gz", "d2.jsonl.gz"]
