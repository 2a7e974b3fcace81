"""Continued adaptation, promotion and rollback on three drops of the real medical slice with a
2-layer model: drop 1 trains from fresh weights and is promoted; drop 2 continues the promoted
model (other weights, the same frozen tokenizer) and is promoted; drop 3 runs through the Prefect
flow, fails a gate, ends in a NotPromoted state and leaves drop 2's model promoted; rollback
restores drop 1's. Drops 1 and 2 run without Prefect, to keep the module short."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from prefect.settings import PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings
from prefect.testing.utilities import prefect_test_harness
from safetensors.torch import load_file
from typer.testing import CliRunner

from flows.cli import app
from flows.domain_flow import domain_pipeline
from pipeline.driver import Session
from pipeline.engine.catalog import Catalog
from tests.e2e_domain import write_test_domain

pytestmark = [pytest.mark.slow, pytest.mark.integration]

SHORT = {"pretrain": {"max_steps": 10, "warmup_steps": 2, "log_every": 2, "eval_every": 10},
         "finetune": {"max_train_examples": 120, "max_test_examples": 60, "epochs": 1,
                      "seeds": [0]},
         "evaluate": {"max_eval_docs": 40}}
DROP_LINES = 400  # health news lines per later drop


def _add_drop(samples: Path, data: Path, n: int) -> None:
    """Drop n: the next DROP_LINES health news articles, as a new file of the source's glob."""
    with open(samples / "medical/healthnews.jsonl") as src:
        lines = src.readlines()
    first = 2500 + (n - 2) * DROP_LINES  # drop 1 is the first 2500 (write_test_domain)
    (data / f"healthnews-{n}.jsonl").write_text("".join(lines[first:first + DROP_LINES]))


def _set(path: Path, section: str, **values: object) -> None:
    doc = yaml.safe_load(path.read_text())
    doc["profiles"]["tiny"][section].update(values)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def _weights(art: Path) -> dict[str, torch.Tensor]:
    return load_file(art / "hf/model.safetensors")


def _session(path: Path, work: Path) -> Session:
    return Session.open(None, "tiny", workdir=work, domain_file=path, init="promoted")


@pytest.fixture(scope="module")
def drops(samples_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Drops 1 and 2 through the pipeline without Prefect (``Session.run_all``)."""
    root = tmp_path_factory.mktemp("drops")
    path = write_test_domain(samples_dir, root, **SHORT)
    doc = yaml.safe_load(path.read_text())
    doc["ingest"]["sources"][2]["path"] = "data/healthnews*.jsonl"  # a folder that grows
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    work = root / "work"
    first = _session(path, work)  # drop 1: nothing promoted yet, so from fresh weights
    first.run_all()
    _add_drop(samples_dir, root / "data", 2)
    # gates that any real result passes: this run is about continuing, not about the verdict
    _set(path, "evaluate", min_domain_gain=None, max_general_degradation=0.5)
    second = _session(path, work)
    second.run_all()
    catalog = Catalog(work / "catalog.duckdb")
    return {"path": path, "work": work, "catalog": catalog, "root": root,
            "sessions": [first, second], "samples": samples_dir,
            "models": [first.plan["pretrain"].key, second.plan["pretrain"].key]}


@pytest.fixture(scope="module")
def drop3(drops: dict, harness) -> dict:
    """Drop 3 through the Prefect flow, with a gate no model can pass."""
    _add_drop(drops["samples"], drops["root"] / "data", 3)
    _set(drops["path"], "evaluate", min_domain_gain=10.0)  # 10 bits/byte better than drop 2's
    state = domain_pipeline(domain_file=str(drops["path"]), workdir=str(drops["work"]),
                            init="promoted", return_state=True)
    return {**drops, "state": state, "run": drops["catalog"].runs("medtest", 1)[0]}


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory):
    """tests/flows/conftest.py's harness with a longer start-up allowance: on the shared 2-core
    machine the temporary server has taken over 120 s to answer."""
    storage = tmp_path_factory.mktemp("prefect-results")
    with (temporary_settings({PREFECT_RESULTS_LOCAL_STORAGE_PATH: str(storage)}),
          prefect_test_harness(server_startup_timeout=600)):
        yield


def _pretrain(work: Path, key: str) -> Path:
    return work / "artifacts/pretrain" / key


def test_a_continued_run_starts_from_the_promoted_model(drops: dict) -> None:
    work, (first, second) = drops["work"], drops["models"]
    d1, d2 = (s.decision for s in drops["sessions"])
    assert d1.promoted and d1.message == f"promoted pretrain/{first}"
    assert d2.promoted and d2.message == (
        f"promoted pretrain/{second} (replaces pretrain/{first})")
    assert drops["catalog"].promoted("medtest") == second
    m1 = json.loads((_pretrain(work, first) / "manifest.json").read_text())
    m2 = json.loads((_pretrain(work, second) / "manifest.json").read_text())
    assert "promoted" not in m1["inputs"] and m1["extra"]["init"] == "base"
    assert m2["inputs"]["promoted"] == first and m2["extra"]["init"] == f"promoted pretrain/{first}"
    # the tokenizer is frozen: drop 2 did not train a new one on the grown corpus
    assert m2["inputs"]["tokenizer"] == m1["inputs"]["tokenizer"]
    assert m2["inputs"]["ingest"] != m1["inputs"]["ingest"]
    stages = {s["stage"]: s for s in drops["catalog"].stage_runs(drops["sessions"][1].run_id)}
    assert stages["tokenizer"]["cache_hit"] and not stages["pretrain"]["cache_hit"]
    # the worker loaded drop 1's exported model, and its first logged loss is already below
    # the first one from fresh weights (which starts near ln(vocab))
    spec = json.loads((_pretrain(work, second) / "spec.json").read_text())
    assert spec["base_dir"] == str(_pretrain(work, first) / "hf")
    assert json.loads((_pretrain(work, first) / "spec.json").read_text())["base_dir"] is None
    curve = [json.loads(r) for r in (_pretrain(work, second) / "metrics.jsonl")
             .read_text().splitlines()]
    first_curve = [json.loads(r) for r in (_pretrain(work, first) / "metrics.jsonl")
                   .read_text().splitlines()]
    assert curve[0]["step"] == first_curve[0]["step"]
    assert curve[0]["loss"] < first_curve[0]["loss"]
    w1, w2 = _weights(_pretrain(work, first)), _weights(_pretrain(work, second))
    assert w1.keys() == w2.keys()
    assert any(not torch.equal(w1[k], w2[k]) for k in w1)
    # evaluate gated drop 2's model against drop 1's, on the same documents
    metrics = json.loads((drops["sessions"][1].artifacts["evaluate"].path / "metrics.json")
                         .read_text())
    assert metrics["verdict"]["text"].startswith(f"adapted vs promoted pretrain/{first}: ")
    assert "base_heldout_bits_per_byte" in metrics["metrics"]


def test_no_new_drop_means_nothing_to_train(drops: dict) -> None:
    # runs before drop 3 lands: the corpus is drop 2's. (Deleting a later drop's file would not
    # bring it back: its documents stay in the cumulative corpus, docs/ingest.md.)
    session = _session(drops["path"], drops["work"])
    assert session.lineage is not None and session.lineage.model.key == drops["models"][1]
    assert session.run_all() is None
    assert session.decision.message.startswith(
        f"up to date: the promoted model pretrain/{drops['models'][1]} already trained on")
    assert drops["catalog"].runs("medtest", 1)[0]["status"] == "up to date"


def test_a_drop_of_duplicates_is_up_to_date_not_a_failure(drops: dict, harness) -> None:
    # a file whose articles all duplicate drop 2's: the drop is ingested (and logged), every
    # document excluded, and the flow ends UpToDate before pretraining on nothing
    data = drops["root"] / "data"
    dup = data / "healthnews-copy.jsonl"
    dup.write_text((data / "healthnews-2.jsonl").read_text())
    try:
        state = domain_pipeline(domain_file=str(drops["path"]), workdir=str(drops["work"]),
                                init="promoted", return_state=True)
    finally:
        dup.unlink()
    assert state.is_completed() and state.name == "UpToDate"
    assert state.message.startswith("up to date: drop 3 (ingest/")
    assert f"adds no training documents ({DROP_LINES} in; excluded: " in state.message
    assert "duplicate " in state.message
    assert state.message.endswith(f"the promoted model pretrain/{drops['models'][1]} stays")
    run = drops["catalog"].runs("medtest", 1)[0]
    assert run["status"] == "up to date"
    assert [s["stage"] for s in drops["catalog"].stage_runs(run["run_id"])] == ["ingest"]
    assert drops["catalog"].promoted("medtest") == drops["models"][1]


def test_a_failing_gate_keeps_the_previous_model_and_rollback_restores(drop3: dict) -> None:
    catalog, work, (first, second) = drop3["catalog"], drop3["work"], drop3["models"]
    s3, run3 = drop3["state"], drop3["run"]
    assert s3.is_completed() and s3.name == "NotPromoted"
    assert s3.message.startswith("not promoted: domain bits/byte gain ")
    assert s3.message.endswith(f"< 10 (evaluate.min_domain_gain); the promoted model stays "
                               f"pretrain/{second}")
    assert catalog.promoted("medtest") == second
    assert run3["status"] == "not promoted" and run3["error"] == s3.message
    shown_report = Path(s3.result()).read_text()
    assert "NOT PROMOTED" in shown_report
    # the rejected candidate's verdict is in the run's own report, with the gate that failed
    assert "## The candidate's evaluation" in shown_report
    assert "evaluate.min_domain_gain FAILED" in shown_report and "**Verdict**" in shown_report
    rejected = catalog.promotions("medtest")[-1]
    assert rejected["action"] == "rejected" and rejected["previous"] == second

    cli = CliRunner()
    lineage = cli.invoke(app, ["lineage", "medtest", "--workdir", str(work)])
    assert lineage.exit_code == 0, lineage.output
    assert f"continued pretrain/{first}" in lineage.output
    assert "from fresh weights" in lineage.output
    assert "rejected" in lineage.output
    back = cli.invoke(app, ["models", "rollback", "medtest", "--workdir", str(work)])
    assert back.exit_code == 0, back.output
    assert catalog.promoted("medtest") == first
    shown = cli.invoke(app, ["models", "promoted", "medtest", "--workdir", str(work)])
    assert f"pretrain/{first}" in shown.output
    again = cli.invoke(app, ["models", "rollback", "medtest", "--workdir", str(work)])
    assert again.exit_code == 2 and "nothing earlier to roll back to" in again.output
    # the operator brings drop 2's model back by its run
    fwd = cli.invoke(app, ["models", "promote", drop3["sessions"][1].run_id, "--workdir",
                           str(work)])
    assert fwd.exit_code == 0 and catalog.promoted("medtest") == second
