from __future__ import annotations

from pathlib import Path

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
    assert result.exit_code == 0, result.output
    assert "domain 'oncology' is valid" in result.output
    text = out.read_text()
    assert "# min_chars: 20 " in text  # the schema's default, commented out
    out.write_text(text.replace("# min_chars: 20 ", "min_chars: fifty "))
    result = runner.invoke(app, ["domains", "validate", str(out)])
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
    assert dapt("no-such-command").returncode == 2  # typer's usage error
