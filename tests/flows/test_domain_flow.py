"""The whole flow under Prefect's test harness on a ~1 MB real slice with a 2-layer model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from flows.cli import app
from flows.domain_flow import domain_pipeline
from pipeline.engine.catalog import Catalog
from pipeline.stages.pretrain.packing import TokenBatches
from tests.e2e_domain import GENERAL_LINES, SLICE_LINES, write_test_domain

pytestmark = [pytest.mark.slow, pytest.mark.integration]  # the whole flow under Prefect


@pytest.fixture(scope="module")
def first_run(harness, samples_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("e2e")
    domain_file = write_test_domain(samples_dir, root)
    work = root / "work"
    report = domain_pipeline(domain_file=str(domain_file), workdir=str(work))
    return {"domain_file": str(domain_file), "work": work, "report": Path(report)}


def _stages(work: Path) -> tuple[str, dict[str, tuple[bool, str]]]:
    catalog = Catalog(work / "catalog.duckdb")
    run = catalog.runs(limit=1)[0]
    assert run["status"] == "completed"
    return run["run_id"], {s["stage"]: (s["cache_hit"], s["artifact_key"])
                           for s in catalog.stage_runs(run["run_id"])}


def test_first_run_builds_every_stage_and_reports(first_run: dict) -> None:
    work, report = first_run["work"], first_run["report"]
    _, stages = _stages(work)
    assert list(stages) == ["ingest", "tokenizer", "pretrain", "finetune", "evaluate"]
    assert not any(hit for hit, _ in stages.values())
    text = report.read_text()
    for heading in ("## Key results", "## Held-out language modelling", "## Fine-tuning",
                    "### Task organ_system", "### Task icd10_chapter", "## Pretraining",
                    "## Tokenizer", "## Corpus"):
        assert heading in text
    metrics = json.loads((report.parent / "metrics.json").read_text())["metrics"]
    # 40 steps take the model far below the uniform model's perplexity (the vocabulary size)
    assert metrics["heldout_perplexity"] < metrics["vocab_size"] / 3
    # the headline task (icd10_chapter, first in the YAML) is unprefixed, the other prefixed
    assert metrics["finetune_accuracy"] > metrics["finetune_majority_rate"] + 0.2
    assert 0 < metrics["finetune_organ_system.accuracy"] <= 1
    assert "finetune_base_macro_f1" not in metrics  # from scratch: no base model to compare
    # general news is held out apart from the domain text, and harder for a medical model
    assert metrics["general_bits_per_byte"] > metrics["heldout_bits_per_byte"]
    assert "general text (forgetting)" in text and "Training mixture" in text
    # every artifact is complete and nothing half-written is left behind
    for stage, (_, key) in stages.items():
        assert (work / "artifacts" / stage / key / "manifest.json").exists()
    assert not list((work / "artifacts").glob("*/.tmp-*"))
    ingest_dir = work / "artifacts/ingest" / stages["ingest"][1]
    counts = json.loads((ingest_dir / "manifest.json").read_text())["counts"]
    assert (counts["docs_in"] == counts["kept"] + counts["excluded"]
            == sum(SLICE_LINES.values()) + GENERAL_LINES)
    # HPO definitions are also the organ_system task's texts: its test split leaves training
    assert counts["excluded_contaminated"] > 0 and counts["decontamination_test_sets"] == 2
    assert pq.read_table(ingest_dir / "excluded.parquet").num_rows == counts["excluded"]


def test_finetune_runs_every_task_and_seed_on_fixed_splits(first_run: dict) -> None:
    _, stages = _stages(first_run["work"])
    art = first_run["work"] / "artifacts/finetune" / stages["finetune"][1]
    m = json.loads((art / "manifest.json").read_text())
    preds = pq.read_table(art / "predictions.parquet").to_pylist()
    for task, result in m["extra"]["tasks"].items():
        rows = [r for r in preds if r["task"] == task]
        by_seed = {s: [r["id"] for r in rows if r["seed"] == s] for s in (0, 1)}
        # the same test examples for every seed; the scores are recomputed from the predictions
        assert by_seed[0] == by_seed[1] and len(by_seed[0]) == result["counts"]["test_examples"]
        accs = [sum(r["label"] == r["pred"] for r in rows if r["seed"] == s) / len(by_seed[s])
                for s in (0, 1)]
        assert [r["accuracy"] for r in result["adapted"]["runs"]] == pytest.approx(accs)
        assert result["adapted"]["accuracy"] == pytest.approx(sum(accs) / 2)
        assert result["adapted"]["accuracy_std"] == pytest.approx(abs(accs[0] - accs[1]) / 2**.5)
    chapter = m["extra"]["tasks"]["icd10_chapter"]
    assert chapter["labels"] == ["circulatory", "eye", "neoplasm"]  # the label map's names
    total = len((first_run["work"].parent / "data/task_icd10_chapter.jsonl").read_text()
                .splitlines())
    assert chapter["counts"]["unmapped_rows"] == total - chapter["counts"]["task_rows"] > 0
    assert (art / "model/organ_system/model.safetensors").exists()


def test_report_html_embeds_every_plot_and_cli_regenerates_it(first_run: dict) -> None:
    report = first_run["report"]
    html = report.with_suffix(".html").read_text()
    plots = sorted(p.name for p in (report.parent / "plots").glob("*.png"))
    assert plots == ["bits_per_byte.png", "confusion_icd10_chapter.png",
                     "confusion_organ_system.png", "fertility.png", "finetune.png",
                     "loss_curves.png"]
    for name in plots:
        assert (report.parent / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"](plots/{name})" in report.read_text()
    assert html.count("src='data:image/png;base64,") == len(plots)
    assert "<td>organ_system macro-f1 (mean +- std, 2 seeds)</td>" in html
    run_id, stages = _stages(first_run["work"])
    out = first_run["work"] / "regenerated"
    result = CliRunner().invoke(app, ["report", run_id[:17], "--workdir",
                                      str(first_run["work"]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    again = (out / "report.md").read_text()
    assert stages["evaluate"][1] in again and again.count("](plots/") == len(plots)
    summary = (out / "summary.md").read_text()  # what the Prefect UI shows
    assert "| domain bits/byte (lower is better) |" in summary
    missing = CliRunner().invoke(app, ["report", "nope", "--workdir", str(first_run["work"])])
    assert missing.exit_code == 2 and "0 runs match 'nope'" in missing.output


def test_export_loads_and_matches_engine_held_out_loss(first_run: dict) -> None:
    work = first_run["work"]
    _, stages = _stages(work)
    pre = work / "artifacts/pretrain" / stages["pretrain"][1]
    model = AutoModelForCausalLM.from_pretrained(pre / "hf")
    assert model.config.num_hidden_layers == 2
    summary = json.loads((pre / "summary.json").read_text())
    records = [json.loads(r) for r in (pre / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "heldout_loss" in r] == [20, 40]  # eval_every 20
    assert [r["step"] for r in records if "general_loss" in r] == [20, 40]  # forgetting
    pre_manifest = json.loads((pre / "manifest.json").read_text())
    general = pre_manifest["extra"]["mixture"]["general"]
    assert general["target_share"] == pytest.approx(0.1)
    assert general["achieved_share"] == pytest.approx(0.1, abs=0.01)  # whole documents
    assert pre_manifest["metrics"]["general_eval_loss"] > pre_manifest["metrics"]["eval_loss"]
    assert records[-1]["heldout_loss"] == pytest.approx(summary["eval_loss"], rel=1e-6)
    data = TokenBatches(pre / "data", "eval", seed=0)
    x = torch.from_numpy(data.batch(list(range(min(32, data.num_seqs)))))
    with torch.no_grad():
        losses = [model(input_ids=x[i:i + 16], labels=x[i:i + 16]).loss.item() * len(x[i:i + 16])
                  for i in range(0, len(x), 16)]
    assert sum(losses) / len(x) == pytest.approx(summary["eval_loss"], rel=1e-4)


def test_export_carries_a_model_card_the_hub_parses(first_run: dict) -> None:
    """hf/README.md: the Hub's format (front matter, then sections); the run's copy adds the
    evaluation, the verdict and the PII policy (pipeline/stages/pretrain/model_card.py)."""
    from huggingface_hub import ModelCard

    from pipeline.domains import load_file
    from pipeline.engine.artifacts import Manifest
    from pipeline.stages.pretrain import model_card

    work = first_run["work"]
    run_id, stages = _stages(work)
    pre = work / "artifacts/pretrain" / stages["pretrain"][1]
    card = ModelCard.load(pre / "hf" / "README.md")
    data = card.data.to_dict()
    assert data["license"] == "other" and "base_model" not in data  # from scratch
    assert data["datasets"] == ["hpo", "icd10cm", "healthnews", "general"]
    assert {"dapt", "from-scratch"} <= set(data["tags"]) and data["library_name"] == \
        "transformers"
    for heading in ("## Training data", "## Training recipe", "## Evaluation",
                    "## Intended use", "## Limitations", "## PII policy"):
        assert heading in card.text, heading
    manifest = Manifest.read(pre / "manifest.json")
    assert f"trained on {manifest.counts['tokens_trained']:,} tokens" in card.text
    assert f"| domain dev loss | {manifest.metrics['eval_loss']:.4g} |" in card.text
    # the same card for a continued SmolLM2 names it as the Hub's base_model, with its licence
    config = load_file(Path(first_run["domain_file"])).resolve("tiny").pretrain
    continued = model_card.export_card(
        config.model_copy(update={"mode": "continue", "base_model": "smollm2-135m"}), manifest,
        Manifest.read(work / "artifacts/ingest" / stages["ingest"][1] / "manifest.json"))
    hub = ModelCard(continued).data
    assert hub.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and hub.license == "apache-2.0"

    run_card = ModelCard.load(work / "runs" / run_id / "model-card.md")
    assert "medtest" in run_card.data.to_dict()["tags"]
    assert f"Run `{run_id}` of domain `medtest`" in run_card.text
    assert "| domain bits/byte (lower is better) |" in run_card.text
    assert "| icd10_chapter macro-f1 (mean +- std, 2 seeds) |" in run_card.text
    # the run's PII policy, from its config (tests/e2e_domain.py: pattern types, redact)
    assert "email (redact), phone (redact)" in run_card.text
    # the export's pointer to the evaluation is gone from the copy that holds it
    assert model_card.LATER in card.text and model_card.LATER not in run_card.text


def test_curves_reach_tensorboard_and_the_catalog(first_run: dict) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    work = first_run["work"]
    _, stages = _stages(work)
    key = stages["pretrain"][1]
    pre = work / "artifacts/pretrain" / key
    records = [json.loads(r) for r in (pre / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(next((pre / "tensorboard").rglob("events.out.tfevents.*"))))
    events.Reload()
    loss = events.Scalars("dapt/loss")
    assert [e.step for e in loss] == [r["step"] for r in records]
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in records], rel=1e-6)
    assert [e.step for e in events.Scalars("dapt/general_loss")] == [20, 40]
    # the DeepSpeed checkpoint served only a resume: gone once hf/ is exported (the default)
    assert not (pre / "checkpoint").exists() and (pre / "hf/model.safetensors").exists()
    assert json.loads((pre / "summary.json").read_text())["checkpoint"] is None
    assert json.loads((pre / "manifest.json").read_text())["extra"]["checkpoint"] is None
    curves = Catalog(work / "catalog.duckdb").query(
        "SELECT step, value FROM curves WHERE artifact_key = ? AND name = 'heldout_loss' "
        "ORDER BY step", [key])
    assert [(c["step"], c["value"]) for c in curves] == \
        [(r["step"], r["heldout_loss"]) for r in records if "heldout_loss" in r]


def test_rerun_hits_cache_and_only_from_rebuild_the_right_stages(first_run: dict) -> None:
    kw = {"domain_file": first_run["domain_file"], "workdir": str(first_run["work"])}
    _, built = _stages(first_run["work"])

    domain_pipeline(**kw)
    _, stages = _stages(first_run["work"])
    assert stages == {s: (True, key) for s, (_, key) in built.items()}

    domain_pipeline(only="evaluate", **kw)  # that step alone, rebuilt under its own key
    _, stages = _stages(first_run["work"])
    assert stages == {"evaluate": (False, built["evaluate"][1])}

    domain_pipeline(from_stage="finetune", **kw)
    _, stages = _stages(first_run["work"])
    assert {s: hit for s, (hit, _) in stages.items()} == {
        "ingest": True, "tokenizer": True, "pretrain": True, "finetune": False,
        "evaluate": False}


def test_cli_plan_shows_every_stage_cached_after_a_run(first_run: dict) -> None:
    _, built = _stages(first_run["work"])
    result = CliRunner().invoke(app, ["plan", "--domain-file", first_run["domain_file"],
                                      "--workdir", str(first_run["work"]), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)  # each row also has the step's name, title and sharing
    assert [{k: r[k] for k in ("stage", "key", "cached")} for r in rows] == [
        {"stage": s, "key": key, "cached": True} for s, (_, key) in built.items()]
    text = CliRunner().invoke(app, ["plan", "--domain-file", first_run["domain_file"],
                                    "--workdir", str(first_run["work"])]).output
    assert f"evaluate   {built['evaluate'][1]}  cached" in text
    assert "score base, control and adapted models" in text  # each step says what it does


def test_the_run_is_in_mlflow_with_params_metrics_and_the_model(first_run: dict) -> None:
    """The driver logs each run to MLflow (a SQLite store in the workdir): read back through
    MLflow's own client, the run has the resolved config as params, every step's metrics and
    the training curve, the report, and the export registered as a model version whose source
    is the artifact itself; the promoted model carries the alias `champion`."""
    from mlflow import MlflowClient

    work = first_run["work"]
    catalog = Catalog(work / "catalog.duckdb")
    first = catalog.runs(limit=100)[-1]  # the module's first run
    steps = {s["stage"]: s for s in catalog.stage_runs(first["run_id"])}
    uri = f"sqlite:///{work / 'mlflow' / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    experiment = client.get_experiment_by_name("dapt-medtest")
    [run] = client.search_runs([experiment.experiment_id],
                               f"tags.`dapt.run_id` = '{first['run_id']}'")
    assert run.info.status == "FINISHED" and run.data.tags["dapt.status"] == "completed"
    assert float(run.data.params["pretrain.lr"]) > 0
    assert run.data.params["run.profile"] == "tiny"
    evaluate = json.loads(steps["evaluate"]["metrics"])
    assert run.data.metrics["evaluate.heldout_perplexity"] == pytest.approx(
        evaluate["heldout_perplexity"])
    assert run.data.tags["dapt.pretrain.key"] == steps["pretrain"]["artifact_key"]
    losses = client.get_metric_history(run.info.run_id, "curve.loss")
    assert len(losses) > 1 and losses[0].step < losses[-1].step
    assert {a.path for a in client.list_artifacts(run.info.run_id, "report")} >= {
        "report/report.md", "report/report.html"}
    version = client.get_model_version_by_alias("dapt-medtest", "champion")
    assert version.tags["artifact_key"] == steps["pretrain"]["artifact_key"]
    assert Path(version.source) == work / "artifacts/pretrain" / version.tags["artifact_key"] / "hf"
    assert (Path(version.source) / "model.safetensors").exists()  # no second copy: the export


def test_cli_runs_lists_history(first_run: dict) -> None:
    result = CliRunner().invoke(app, ["runs", "--workdir", str(first_run["work"])])
    assert result.exit_code == 0, result.output
    assert "medtest/tiny  completed" in result.output
    assert "cached" in result.output and "report:" in result.output


def test_cli_compare_puts_two_runs_side_by_side(first_run: dict) -> None:
    work = first_run["work"]
    if len(Catalog(work / "catalog.duckdb").runs(limit=100)) < 2:  # this test run alone
        domain_pipeline(domain_file=first_run["domain_file"], workdir=str(work))
    runs = Catalog(work / "catalog.duckdb").runs(limit=100)
    full = [r["run_id"] for r in runs if r["status"] == "completed"][-2:]  # first, first rerun
    result = CliRunner().invoke(app, ["compare", full[1], full[0], "--workdir", str(work),
                                      "--json"])
    assert result.exit_code == 0, result.output
    both = json.loads(result.output)
    assert [r["run_id"] for r in both["runs"]] == [full[1], full[0]]
    assert list(both["stages"]) == ["ingest", "tokenizer", "pretrain", "finetune", "evaluate"]
    assert all(a == b for a, b in both["stages"].values())  # a cached rerun: same artifacts
    m = both["metrics"]["evaluate.heldout_bits_per_byte"]
    assert m[0] == m[1] and m[0] > 0
    text = CliRunner().invoke(app, ["compare", full[1][:18], full[0], "--workdir", str(work)])
    assert "same artifact" in text.output and "evaluate.heldout_perplexity" in text.output
    missing = CliRunner().invoke(app, ["compare", "nope", full[0], "--workdir", str(work)])
    assert missing.exit_code == 2 and "0 runs match 'nope'" in missing.output


def test_cli_lineage_and_gc_on_a_real_workdir(first_run: dict) -> None:
    work = first_run["work"]
    _, stages = _stages(work)
    result = CliRunner().invoke(app, ["lineage", stages["evaluate"][1][:8], "--workdir", str(work)])
    assert result.exit_code == 0, result.output
    assert "<- source hpo: " + str(work.parent / "data/hpo.jsonl") in result.output
    assert f"<- pretrain/{stages['pretrain'][1]}" in result.output
    result = CliRunner().invoke(app, ["gc", "--workdir", str(work)])
    assert result.exit_code == 0 and "0 entries, 0.0 MB; run with --yes to delete" in result.output


def test_cli_inspect_shows_exclusions_by_reason_with_samples(first_run: dict) -> None:
    work = first_run["work"]
    _, stages = _stages(work)
    log = pq.read_table(work / "artifacts/ingest" / stages["ingest"][1] / "excluded.parquet")
    reasons = log.column("reason").to_pylist()
    result = CliRunner().invoke(app, ["inspect", "medtest", "--excluded", "--json",
                                      "--limit", "2", "--workdir", str(work)])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["counts"] == {r: reasons.count(r) for r in set(reasons)}
    assert any(r.startswith("gopher_") for r in shown["counts"])  # the YAML's filters ran
    by_reason = {r: [s for s in shown["samples"] if s["reason"] == r] for r in shown["counts"]}
    assert all(1 <= len(v) <= 2 for v in by_reason.values())
    reason = next(iter(shown["counts"]))
    one = CliRunner().invoke(app, ["inspect", "medtest", "--excluded", "--reason", reason,
                                   "--workdir", str(work)])
    assert one.exit_code == 0 and f"== {reason}" in one.output
    assert one.output.count("== ") == 1
    bad = CliRunner().invoke(app, ["inspect", "medtest", "--excluded", "--reason", "nope",
                                   "--workdir", str(work)])
    assert bad.exit_code == 2 and "no document was excluded for 'nope'" in bad.output
    # The tweets' URLs fall under the medical PII policy: every redacted document is logged.
    manifest = json.loads((work / "artifacts/ingest" / stages["ingest"][1] / "manifest.json")
                          .read_text())
    mod = CliRunner().invoke(app, ["inspect", "medtest", "--modified", "--json",
                                   "--workdir", str(work)])
    assert mod.exit_code == 0, mod.output
    shown = json.loads(mod.output)
    assert shown["log"] == "modified" and manifest["counts"]["pii_url"] > 0
    assert shown["counts"]["pii_redacted"] == manifest["counts"]["pii_docs"]
    texts = pq.read_table(work / "artifacts/ingest" / stages["ingest"][1] / "modified.parquet"
                          ).to_pylist()
    redacted = [r["text"] for r in texts if r["reason"] == "pii_redacted"]
    assert len(redacted) == manifest["counts"]["pii_docs"]
    assert all(re.search(r"<(URL|EMAIL|PHONE|IP|PERSON_DATE|MRN)>", t) for t in redacted)
    # Public pages stay; a URL with a query string or behind a link shortener does not.
    assert not any(re.search(r"https?://(?:\S*\?|(?:t\.co|bit\.ly|ow\.ly)/)", t)
                   for t in redacted)
