"""docs/your-domain.md, run as written: its YAML and every `dapt` command of its `bash` blocks
(but the block marked as not run) on a real Parquet corpus and a real CSV of labelled examples,
then the outputs the page promises. The page is parsed here, so it cannot rot."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.integration]  # a small run of the whole flow

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "your-domain.md"
SKIP = "<!-- not run by tests/test_your_domain.py"


def page_blocks() -> list[tuple[str, str, bool]]:
    """(language, body, run?) of every fenced block of the page; a block right after the
    SKIP comment is not run."""
    found = re.finditer(r"(?P<before>[^\n]*)\n```(?P<lang>\w*)\n(?P<body>.*?)\n```",
                        PAGE.read_text(), flags=re.S)
    return [(m["lang"], m["body"], not m["before"].startswith(SKIP)) for m in found]


def page_commands() -> list[list[str]]:
    """The `dapt ...` lines of the page's bash blocks that run, comments dropped."""
    commands = []
    for lang, body, runs in page_blocks():
        if lang == "bash" and runs:
            commands += [shlex.split(line, comments=True) for line in body.splitlines()
                         if line.startswith("dapt ")]
    return commands


def write_files(samples: Path, root: Path) -> None:
    """corpus.parquet (BBC business news) and labelled.csv (BBC topics: every 4th article, all
    five topics), both from `dapt samples build`'s finance corpus."""
    def rows(path: Path) -> list[dict]:
        return [json.loads(line) for line in path.read_text().splitlines()]

    corpus = rows(samples / "finance" / "bbc_business.jsonl")
    pq.write_table(pa.table({"id": [r["id"] for r in corpus],
                             "text": [r["text"] for r in corpus]}), root / "corpus.parquet")
    labelled = rows(samples / "finance" / "task_bbc_topic.jsonl")[::4]
    pcsv.write_csv(pa.table({k: [r[k] for r in labelled] for k in ("id", "text", "label")}),
                   root / "labelled.csv")


def test_the_page_shows_a_short_yaml_and_the_commands_a_user_runs() -> None:
    yamls = [body for lang, body, _ in page_blocks() if lang == "yaml"]
    assert len(yamls) == 1 and len(yamls[0].splitlines()) <= 12
    names = [c[:2] for c in page_commands()]
    assert names == [["dapt", "domains"], ["dapt", "plan"], ["dapt", "run"], ["dapt", "runs"]]


def test_the_page_runs_from_two_files_to_a_report(samples_dir: Path, tmp_path: Path) -> None:
    write_files(samples_dir, tmp_path)
    (tmp_path / "mydomain.yaml").write_text(
        next(body for lang, body, _ in page_blocks() if lang == "yaml") + "\n")
    work = tmp_path / "work"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["DAPT_WORKDIR"] = str(work)
    outputs = []
    for command in page_commands():
        result = subprocess.run([sys.executable, "-m", "flows.cli", *command[1:]], cwd=tmp_path,
                                env=env, capture_output=True, text=True, timeout=1800)
        assert result.returncode == 0, f"{shlex.join(command)}\n{result.stdout}{result.stderr}"
        outputs.append(result.stdout)
    validated, planned, ran, listed = outputs
    assert "domain 'mydomain' is valid" in validated
    assert [line.split()[0] for line in planned.splitlines()] == [
        "ingest", "tokenizer", "pretrain", "finetune", "evaluate"]
    assert planned.count("would build") == 5

    report = Path(ran.split("report: ", 1)[1].split()[0])
    assert report.is_absolute() and report.exists() and "## Key results" in report.read_text()
    for name in ("report.html", "metrics.json", "model-card.md"):
        assert (report.parent / name).exists(), name
    metrics = json.loads((report.parent / "metrics.json").read_text())["metrics"]
    assert 0 < metrics["finetune_macro_f1"] <= 1  # five topics, one seed
    card = (report.parent / "model-card.md").read_text()
    assert "domain `mydomain`" in card and "## PII policy" in card
    assert report.parent.name in listed and "completed" in listed

    # the run's params record the page's overrides
    runs = subprocess.run([sys.executable, "-m", "flows.cli", "runs", "--json"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    params = json.loads(json.loads(runs.stdout)[0]["params"])
    run_line = next(c for c in page_commands() if c[1] == "run")
    assert params["overrides"] == [run_line[i + 1] for i, a in enumerate(run_line)
                                   if a == "--set"]
    # the corpus and the labelled set share articles: the task's test split left the corpus
    ingest = json.loads(next((work / "artifacts" / "ingest").glob("*/manifest.json"))
                        .read_text())["counts"]
    assert ingest["docs_in"] == 510 and ingest["excluded_contaminated"] > 0
    assert yaml.safe_load((tmp_path / "mydomain.yaml").read_text())["name"] == "mydomain"
