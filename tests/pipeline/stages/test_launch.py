from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from pipeline.config import PROFILES, PretrainConfig
from pipeline.stages.pretrain.launch import expand_nodelist, hosts_from_env, render_hostfile
from pipeline.stages.pretrain.stage import launch_command

REPO = Path(__file__).resolve().parents[3]


def _config(**kw) -> PretrainConfig:
    return PretrainConfig.model_validate({**PROFILES["tiny"]["pretrain"], **kw})


@pytest.mark.parametrize(("nodelist", "hosts"), [
    ("node7", ["node7"]),
    ("gpu[01-03,07],cpu5", ["gpu01", "gpu02", "gpu03", "gpu07", "cpu5"]),
    ("gpu[8-11]", ["gpu8", "gpu9", "gpu10", "gpu11"]),
    ("n[098-101]", ["n098", "n099", "n100", "n101"]),
    ("a[1,3],b[2-3],c", ["a1", "a3", "b2", "b3", "c"]),
    ("rack[1-2]-n[01-02]", ["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"]),
    ("x[5]", ["x5"]),
    ("[1-2]n", ["1n", "2n"]),
    (" gpu[1-2].cluster.local ", ["gpu1.cluster.local", "gpu2.cluster.local"]),
])
def test_expand_nodelist(nodelist: str, hosts: list[str]) -> None:
    assert expand_nodelist(nodelist) == hosts


@pytest.mark.parametrize(("nodelist", "message"), [
    ("", "empty"),
    ("gpu[01-03", "unbalanced"),
    ("gpu01-03]", "unexpected character"),
    ("gpu[3-1]", "backwards"),
    ("gpu[a-b]", "not a number"),
    ("gpu[]", "not a number"),
    ("gpu[1,,2]", "not a number"),
    ("gpu[1-2-3]", "not a number"),
    ("gpu[[1-2]]", "unbalanced"),
    ("a,,b", "empty entry"),
    ("a,", "empty entry"),
    ("gpu 1", "unexpected character"),
])
def test_expand_nodelist_rejects_malformed(nodelist: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        expand_nodelist(nodelist)


def test_render_hostfile_exact() -> None:
    assert render_hostfile(["gpu01", "gpu02"], 8) == "gpu01 slots=8\ngpu02 slots=8\n"
    assert render_hostfile(["solo"], 1) == "solo slots=1\n"


@pytest.mark.parametrize(("hosts", "slots", "message"), [
    ([], 8, "at least one host"),
    (["a", "b", "a"], 8, "repeated: a"),
    (["a"], 0, "slots must be at least 1"),
    (["a b"], 1, "without whitespace"),
])
def test_render_hostfile_rejects(hosts: list[str], slots: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        render_hostfile(hosts, slots)


def test_render_hostfile_parses_with_deepspeed() -> None:
    from deepspeed.launcher.runner import _parse_hostfile

    text = render_hostfile(expand_nodelist("gpu[01-02]"), 4)
    assert dict(_parse_hostfile(text.splitlines())) == {"gpu01": 4, "gpu02": 4}


def test_hosts_from_env_slurm_wins_over_k8s() -> None:
    env = {"SLURM_JOB_NODELIST": "gpu[1-2]", "DAPT_K8S_HOSTS": "ignored-0"}
    assert hosts_from_env(env) == ["gpu1", "gpu2"]


def test_hosts_from_env_k8s() -> None:
    env = {"DAPT_K8S_HOSTS": " job-0.svc, job-1.svc ,", "SLURM_JOB_NODELIST": ""}
    assert hosts_from_env(env) == ["job-0.svc", "job-1.svc"]


def test_hosts_from_env_missing_names_both_variables() -> None:
    with pytest.raises(ValueError, match="SLURM_JOB_NODELIST.*DAPT_K8S_HOSTS"):
        hosts_from_env({"DAPT_K8S_HOSTS": " , "})


def _cli(args: list[str], env_extra: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("SLURM_JOB_NODELIST", "DAPT_K8S_HOSTS")}
    env["PYTHONPATH"] = str(REPO)
    env.update(env_extra)
    return subprocess.run([sys.executable, "-m", "pipeline.stages.pretrain.launch", *args],
                          env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def test_cli_hostfile_stdout_and_out(tmp_path: Path) -> None:
    env = {"SLURM_JOB_NODELIST": "gpu[07-08]"}
    printed = _cli(["hostfile", "--slots", "4"], env, tmp_path)
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == "gpu07 slots=4\ngpu08 slots=4\n"

    out = tmp_path / "sub" / "hostfile"
    written = _cli(["hostfile", "--slots", "2", "--out", str(out)],
                   {"DAPT_K8S_HOSTS": "p-0.s,p-1.s"}, tmp_path)
    assert written.returncode == 0, written.stderr
    assert written.stdout == ""
    assert out.read_text() == "p-0.s slots=2\np-1.s slots=2\n"


def test_cli_hostfile_errors(tmp_path: Path) -> None:
    missing = _cli(["hostfile", "--slots", "8"], {}, tmp_path)
    assert missing.returncode == 2
    assert "error:" in missing.stderr and "SLURM_JOB_NODELIST" in missing.stderr
    bad = _cli(["hostfile", "--slots", "0"], {"DAPT_K8S_HOSTS": "a"}, tmp_path)
    assert bad.returncode == 2 and "slots must be at least 1" in bad.stderr
    no_slots = _cli(["hostfile"], {"DAPT_K8S_HOSTS": "a"}, tmp_path)
    assert no_slots.returncode == 2 and "--slots" in no_slots.stderr


def test_launch_command_single_node_unchanged(tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    assert launch_command(_config(num_gpus=2, hostfile="/ignored"), spec, 29500) == [
        sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2",
        "--master_port", "29500", "--module", "pipeline.stages.pretrain.worker",
        "--spec", str(spec),
    ]


def test_launch_command_multi_node(tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    cfg = _config(num_gpus=8, num_nodes=4, hostfile="/shared/hostfile", master_addr="gpu01")
    assert launch_command(cfg, spec, 29501) == [
        sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "8",
        "--master_port", "29501", "--hostfile", "/shared/hostfile", "--num_nodes", "4",
        "--master_addr", "gpu01", "--module", "pipeline.stages.pretrain.worker",
        "--spec", str(spec),
    ]
    no_addr = launch_command(_config(num_nodes=2, hostfile="/h"), spec, 1)
    assert "--master_addr" not in no_addr
    assert no_addr[no_addr.index("--hostfile"):no_addr.index("--module")] == [
        "--hostfile", "/h", "--num_nodes", "2"]


def test_launch_command_expands_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAPT_HOSTFILE", "/shared/hostfiles/job-42")
    monkeypatch.setenv("MASTER_ADDR", "gpu09")
    cfg = _config(num_nodes=2, hostfile="$DAPT_HOSTFILE", master_addr="${MASTER_ADDR}")
    cmd = launch_command(cfg, tmp_path / "spec.json", 1)
    assert cmd[cmd.index("--hostfile") + 1] == "/shared/hostfiles/job-42"
    assert cmd[cmd.index("--master_addr") + 1] == "gpu09"
    assert cfg.hostfile == "$DAPT_HOSTFILE"  # the config (and the artifact key) keeps the pattern


def test_multi_node_without_hostfile_is_rejected() -> None:
    with pytest.raises(ValidationError, match=r"num_nodes \(2\) > 1 needs hostfile"):
        _config(num_nodes=2)
    with pytest.raises(ValidationError, match="greater than 0"):
        _config(num_nodes=0)
    assert _config().num_nodes == 1 and _config().hostfile is None
