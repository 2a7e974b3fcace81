from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app

runner = CliRunner()


def test_domains_list_shows_origin() -> None:
    result = runner.invoke(app, ["domains", "list"])
    assert result.exit_code == 0
    lines = {line.split()[0]: line for line in result.output.splitlines()}
    assert {"medical", "legal", "finance"} <= set(lines)
    assert "built-in" in lines["medical"] and "medical.yaml" in lines["medical"]


def test_domains_show_prints_resolved_yaml() -> None:
    result = runner.invoke(app, ["domains", "show", "legal", "--profile", "small"])
    assert result.exit_code == 0
    doc = yaml.safe_load(result.output)
    assert doc["profile"] == "small" and doc["pretrain"]["model"]["num_layers"] == 6
    assert doc["finetune"]["max_seq_len"] == 192  # the domain's own setting survives


def test_run_with_bad_domain_file_fails_fast_naming_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "bad", "ingest": {"sources": []},
                                   "finetune": {"task": {"name": "t", "path": "t.jsonl"}}}))
    result = runner.invoke(app, ["run", "--domain-file", str(bad), "--workdir", str(tmp_path)])
    assert result.exit_code == 2
    assert str(bad) in result.output and "ingest.sources: List should have at least 1 item" \
        in result.output


def test_unknown_domain_and_profile(tmp_path: Path) -> None:
    # an unknown stage (--only, --from) is tested on the plan: test_runner's selection test
    result = runner.invoke(app, ["run", "astrology", "--workdir", str(tmp_path)])
    assert result.exit_code == 2 and "unknown domain 'astrology'" in result.output
    result = runner.invoke(app, ["domains", "show", "medical", "--profile", "huge"])
    assert result.exit_code == 2 and "allowed: tiny, small, base" in result.output


def test_domains_new_scaffolds_a_file_that_validates_once_filled_in(tmp_path: Path) -> None:
    out = tmp_path / "oncology.yaml"
    result = runner.invoke(app, ["domains", "new", "oncology", "--out", str(out)])
    assert result.exit_code == 0 and out.exists()
    result = runner.invoke(app, ["domains", "validate", str(out)])
    assert result.exit_code == 2 and "ingest.sources[0].path: no file matches" in result.output
    result = runner.invoke(app, ["domains", "validate", str(out), "--no-paths"])
    assert result.exit_code == 0, result.output
    assert "domain 'oncology' is valid" in result.output
    text = out.read_text()
    assert "# min_chars: 20 " in text  # the schema's default, commented out
    out.write_text(text.replace("# min_chars: 20 ", "min_chars: fifty "))
    result = runner.invoke(app, ["domains", "validate", str(out), "--no-paths"])
    assert result.exit_code == 2 and "ingest.min_chars" in result.output
    assert runner.invoke(app, ["domains", "new", "oncology", "--out", str(out)]).exit_code == 2


def test_committed_template_is_the_one_generated_from_the_schema() -> None:
    from pipeline import template

    assert template.TEMPLATE.read_text() == template.render(), (
        "domains/_template.yaml is stale: run `python -m pipeline.template --write`")
    rendered = template.render()
    for line in ("# max_chars: 200000", "# vocab_size: 8192", "profiles: tiny 8192, small 16384",
                 "# near_dup:", "# compare_base: true"):
        assert line in rendered, line


def test_the_process_ends_with_the_commands_status_and_all_its_output(tmp_path: Path) -> None:
    """`main()` skips the interpreter's teardown once the exit hooks ran (flows/__init__.py):
    the status and every line still come out, through a pipe as in CI."""
    import subprocess
    import sys

    def dapt(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True,
                              text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])

    listed = dapt("domains", "list")
    assert listed.returncode == 0 and {"medical", "legal", "finance"} <= {
        line.split()[0] for line in listed.stdout.splitlines()}
    shown = dapt("domains", "show", "medical")
    assert shown.returncode == 0 and yaml.safe_load(shown.stdout)["domain"] == "medical"
    missing = dapt("domains", "validate", str(tmp_path / "none.yaml"))
    assert missing.returncode == 2 and "domain file not found" in missing.stderr
    # an installed domain by its name, and a mistyped one with a suggestion
    named = dapt("domains", "validate", "legal", "--no-paths")
    assert named.returncode == 0 and "domain 'legal' is valid" in named.stdout
    typo = dapt("domains", "validate", "legl", "--no-paths")
    assert typo.returncode == 2 and "(did you mean 'legal'?)" in typo.stderr
    assert dapt("no-such-command").returncode == 2  # typer's usage error


def test_plan_lists_the_model_conversion_and_the_control_as_steps(samples_dir: Path) -> None:
    """`dapt plan medical --profile cpu --json`: the base model's conversion and the control run
    are steps of the plan (they were hidden inside input resolution), each keyed, with the
    steps that read them."""
    import json

    result = runner.invoke(app, ["plan", "medical", "--profile", "cpu", "--json",
                                 "--workdir", str(samples_dir.parent)])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    # pretrain chooses its checkpoint against the control, so the control comes first
    assert [r["step"] for r in rows] == ["ingest", "models", "tokenizer", "general", "control",
                                         "pretrain", "finetune", "evaluate"]
    shared = {r["step"] for r in rows if r["shared"]}
    assert shared == {"models", "general", "control"}
    assert all(len(r["key"]) == 16 and r["title"] for r in rows)


ROOT = Path(__file__).resolve().parents[2]


def dapt_process(*args: str, work: Path) -> subprocess.CompletedProcess:
    """The CLI as a user runs it, with ``work`` as $DAPT_WORKDIR and no Prefect server set."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True,
                          text=True, timeout=120, cwd=ROOT, env={**env, "DAPT_WORKDIR": str(work)})


# Bad input: each exits 2 with a message naming what to change, before any flow starts.
BAD_INPUT = [
    (["run", "medical", "--only", "ingst"], "--only 'ingst' is not allowed (did you mean "
     "'ingest'?); allowed: ingest, models, tokenizer, pretrain, general, control, finetune, "
     "evaluate"),
    (["run", "medical", "--from", "tokeniser"], "(did you mean 'tokenizer'?)"),
    (["run", "medical", "--only", "ingest", "--from", "pretrain"], "cannot be combined"),
    (["run", "medical", "--profile", "smal"], "(did you mean 'small'?); allowed: tiny, small, "
     "base, cpu"),
    (["run", "medical", "--init", "promotd"], "(did you mean 'promoted'?); allowed: base, "
     "promoted"),
    (["run", "medical", "--ingest-runner", "dsk"], "(did you mean 'dask'?)"),
    (["run", "medical", "--ingest-workers", "0"], "--ingest-workers 0: must be at least 1"),
    (["run", "medicl"], "unknown domain 'medicl' (did you mean 'medical'?); known: finance, "
     "legal, medical"),
    (["run", "--domain-file", "no/such.yaml"], "domain file not found: no/such.yaml"),
    (["run", "medical"], "ingest.sources[0].path: no file matches '${samples}/medical/hpo.jsonl'"),
    (["run", "medical", "--set", "pretrain.lr"], "--set 'pretrain.lr': expected PATH=VALUE"),
    (["run", "medical", "--set", "pretrain.lrr=1"], "pretrain.lrr: unknown field (did you mean "
     "'lr'?)"),
    (["run", "medical", "--set", "pretrain.lr=-1"], "pretrain.lr: Input should be greater than 0 "
     "(got -1)"),
    (["run", "medical", "--set", "ingest.sources[9].path=x"], "ingest.sources has 4 item(s), so "
     "[9] is out of range"),
    (["plan", "medical", "--set", "pretrain.modle.num_layers=2"], "pretrain has no field "
     "'modle'"),
    (["plan", "medical", "--profile", "hueg"], "--profile 'hueg' is not allowed"),
    (["domains", "show", "medical", "--set", "ingest.pii.types=[emial]"], "(got 'emial') (did "
     "you mean 'email'?)"),
    (["domains", "validate", "domains/medical.yaml"], "(run `dapt samples build` first)"),
    (["deploy", "medical"], "none runs for workdir"),
    (["serve", "medical"], "none runs for workdir"),
    (["sweep", "medical", "--profile", "cpuu"], "(did you mean 'cpu'?)"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUT, ids=lambda a: " ".join(a)
                         if isinstance(a, list) else "")
def test_bad_input_exits_2_before_any_flow_starts(args: list[str], message: str,
                                                   tmp_path: Path) -> None:
    work = tmp_path / "work"
    result = dapt_process(*args, work=work)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    # no flow: Prefect never said which server it uses, and nothing was written to the workdir
    assert "Prefect:" not in result.stderr and not work.exists()


def test_version_and_help_show_the_environment_and_plain_flags(tmp_path: Path) -> None:
    from importlib import metadata

    version = dapt_process("--version", work=tmp_path)
    assert version.returncode == 0
    assert version.stdout.strip() == f"dapt {metadata.version('dapt')}"
    top = dapt_process("--help", work=tmp_path).stdout
    assert all(var in top for var in ("DAPT_WORKDIR", "PREFECT_API_URL", "MLFLOW_TRACKING_URI"))
    plan_help = dapt_process("plan", "--help", work=tmp_path).stdout
    assert "env var: DAPT_WORKDIR" in " ".join(plan_help.split()), plan_help
    assert "--set PATH=VALUE" in plan_help
    assert re.search(r"^\s+--json\s+Machine-readable", plan_help, re.M), plan_help
    assert "<bool>" not in plan_help
    for args in (["deploy", "--help"], ["serve", "--help"]):
        assert "--workdir" in dapt_process(*args, work=tmp_path).stdout


def test_domains_show_and_plan_take_overrides(tmp_path: Path) -> None:
    shown = runner.invoke(app, ["domains", "show", "medical", "--set", "pretrain.lr=3e-4",
                                "--set", "ingest.pii.types=[email, phone]"])
    assert shown.exit_code == 0, shown.output
    doc = yaml.safe_load(shown.output)
    assert doc["pretrain"]["lr"] == 3e-4 and doc["ingest"]["pii"]["types"] == ["email", "phone"]
    # a domain that is only a file: the flag the unknown-domain message suggests
    domain_file = Path(__file__).resolve().parents[2] / "domains" / "legal.yaml"
    shown = runner.invoke(app, ["domains", "show", "--domain-file", str(domain_file)])
    assert shown.exit_code == 0 and yaml.safe_load(shown.output)["domain"] == "legal"


def test_deploy_finds_the_workdirs_server_by_itself(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """`dapt deploy --workdir W` with no PREFECT_API_URL uses the server `dapt server start`
    records in W (a stub server answering /api/health, so no Prefect server starts here)."""
    import http.server
    import json
    import threading

    from flows import cli, server

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"true")

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        folder = server.server_dir(tmp_path)
        folder.mkdir(parents=True)
        (folder / "server.pid").write_text(str(os.getpid()))
        (folder / "server.json").write_text(json.dumps({"url": url, "pid": os.getpid()}))
        assert server.status(tmp_path).status == "running", "the stub is not seen as running"
        monkeypatch.setenv("PREFECT_API_URL", "")  # unset for the call, restored after
        cli._require_server(tmp_path)
        assert os.environ["PREFECT_API_URL"] == f"{url}/api"
    finally:
        httpd.shutdown()
