from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline import StageError, domains
from pipeline.driver import Session, plan
from pipeline.engine.plan import select
from tests.e2e_domain import write_test_domain


def _keys(path: Path, workdir: Path) -> dict[str, str]:
    d = domains.load_file(path)
    return {s: p.key for s, p in plan(d, d.resolve("tiny"), workdir).items()}


def _edit(path: Path, section: str, **values) -> None:
    doc = yaml.safe_load(path.read_text())
    doc["profiles"]["tiny"][section].update(values)
    path.write_text(yaml.safe_dump(doc))


def test_changing_one_stage_invalidates_it_and_downstream(samples_dir: Path,
                                                          tmp_path: Path) -> None:
    path = write_test_domain(samples_dir, tmp_path)
    base = _keys(path, tmp_path)
    assert base == _keys(path, tmp_path)  # stable

    _edit(path, "finetune", lr=1e-4)
    after = _keys(path, tmp_path)
    assert [s for s in base if base[s] != after[s]] == ["finetune", "evaluate"]

    _edit(path, "tokenizer", vocab_size=1024)
    after2 = _keys(path, tmp_path)
    assert [s for s in after if after[s] != after2[s]] == [
        "tokenizer", "pretrain", "finetune", "evaluate"]

    # ingest decontaminates against each task's test split: a new split changes every key
    _edit(path, "finetune", test_fraction=0.3)
    after_split = _keys(path, tmp_path)
    assert all(after2[s] != after_split[s] for s in after2)
    _edit(path, "finetune", test_fraction=0.2)
    assert _keys(path, tmp_path) == after2

    with open(tmp_path / "data/hpo.jsonl", "a") as fh:  # new source content: everything
        fh.write('{"id": "X", "text": "A brand new phenotype definition for the test."}\n')
    after3 = _keys(path, tmp_path)
    assert all(after2[s] != after3[s] for s in after2)


def test_selection_semantics(samples_dir: Path, tmp_path: Path) -> None:
    path = write_test_domain(samples_dir, tmp_path)
    d = domains.load_file(path)
    tiny = plan(d, d.resolve("tiny"), tmp_path)  # from scratch: no base model, no control
    s = select(tiny)
    assert s.steps == ["ingest", "tokenizer", "pretrain", "finetune", "evaluate"]
    assert s.rebuild == set() and s.build_missing
    s = select(tiny, only="finetune")
    assert (s.steps, s.rebuild, s.build_missing) == (["finetune"], {"finetune"}, False)
    assert select(tiny, from_step="pretrain").rebuild == {"pretrain", "finetune", "evaluate"}
    assert select(tiny, force=True).rebuild == set(s for s in tiny)
    with pytest.raises(ValueError, match="allowed: ingest, tokenizer"):
        select(tiny, "train")
    with pytest.raises(ValueError, match="cannot be combined"):
        select(tiny, "ingest", "tokenizer")

    medical = domains.get("medical")  # continue mode with a control: three shared steps
    cpu = plan(medical, medical.resolve("cpu"), samples_dir.parent)
    # pretrain chooses its checkpoint against the control: the control (and the general text it
    # reads) is planned before it, and its key is one of pretrain's inputs
    assert list(cpu) == ["ingest", "models", "tokenizer", "general", "control", "pretrain",
                         "finetune", "evaluate"]
    assert cpu["pretrain"].inputs["control"] == cpu["control"].key
    assert "control" in cpu["pretrain"].needs
    # the shared steps are built when missing, never rebuilt by --force or --from
    assert select(cpu, force=True).rebuild == set(cpu) - {"models", "general", "control"}
    assert select(cpu, from_step="ingest").rebuild == {"ingest", "tokenizer", "pretrain",
                                                        "finetune", "evaluate"}
    only = select(cpu, only="evaluate")
    assert only.steps == ["models", "general", "control", "evaluate"]
    assert only.rebuild == {"evaluate"}
    assert select(cpu, only="control").rebuild == {"control"}
    assert select(cpu, upto="pretrain").steps == ["ingest", "models", "tokenizer", "general",
                                                  "control", "pretrain"]
    assert select(cpu, from_step="control").rebuild == {"control", "pretrain", "finetune",
                                                         "evaluate"}


def test_only_with_missing_input_is_a_clear_error(samples_dir: Path, tmp_path: Path) -> None:
    path = write_test_domain(samples_dir, tmp_path)
    session = Session.open(None, "tiny", workdir=tmp_path / "work", domain_file=path)
    with pytest.raises(StageError, match=r"input artifact ingest/\w+ does not exist"):
        session.run_all(only="tokenizer")
    [run] = session.catalog.runs()
    assert run["run_id"] == session.run_id
    assert run["status"] == "failed"  # the in-process driver marks it, as the flow does
    assert session.catalog.stage_runs(session.run_id)[0]["status"] == "failed"


def test_plan_reads_a_source_file_again_only_when_it_changed(
        samples_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Source digests are remembered by the files' stat (``digests.json``): an unchanged corpus
    is not read again to plan, and a rewrite, even to the same size, is always seen."""
    from pipeline.engine import artifacts

    path = write_test_domain(samples_dir, tmp_path)
    read: list[str] = []
    real = artifacts.file_digest

    def counting(p: Path, chunk: int = 1 << 20) -> str:
        read.append(Path(p).name)
        return real(p, chunk)

    monkeypatch.setattr(artifacts, "file_digest", counting)
    first = _keys(path, tmp_path)
    assert "hpo.jsonl" in read and (tmp_path / "digests.json").exists()
    read.clear()
    assert _keys(path, tmp_path) == first
    assert "hpo.jsonl" not in read  # remembered
    hpo = tmp_path / "data/hpo.jsonl"
    text = hpo.read_text()
    hpo.write_text(text.replace("a", "b", 1))  # same size, new content
    after = _keys(path, tmp_path)
    assert read.count("hpo.jsonl") == 1
    assert after["ingest"] != first["ingest"]
    hpo.write_text(text)
    (tmp_path / "digests.json").write_text("{not json")  # a torn cache is rebuilt, not trusted
    assert _keys(path, tmp_path) == first
