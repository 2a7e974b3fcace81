"""Multi-node training for real: DeepSpeed's own multi-node path (hostfile, ssh via pdsh, one
launcher per node) on this machine, with an sshd on localhost and two host names that resolve
here. Two "nodes" of one rank each must end with the weights of two ranks on one node."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.driver import Session
from pipeline.stages.pretrain.launch import render_hostfile
from pipeline.stages.pretrain.stage import free_port
from tests.e2e_domain import write_test_domain
from tests.pipeline.conftest import BASE, pretrain_outputs

pytestmark = [pytest.mark.slow, pytest.mark.integration]  # sshd, pdsh and two DeepSpeed ranks

REPO = Path(__file__).resolve().parents[3]
SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)
NEEDS = {"sshd": SSHD, "ssh": shutil.which("ssh"), "ssh-keygen": shutil.which("ssh-keygen"),
         "pdsh": shutil.which("pdsh")}


@pytest.fixture
def sshd(tmp_path: Path):
    """An sshd on 127.0.0.1 at a private port, key-based, everything in ``tmp_path/ssh``; yields
    the environment in which ``ssh HOST`` (DeepSpeed's check, pdsh) reaches it."""
    missing = [name for name, path in NEEDS.items() if path is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: apt-get install openssh-server "
                    "openssh-client pdsh")
    d = tmp_path / "ssh"
    (d / "bin").mkdir(parents=True)
    for key in ("host_key", "user_key"):
        subprocess.run([NEEDS["ssh-keygen"], "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)],
                       check=True)
    shutil.copy(d / "user_key.pub", d / "authorized_keys")
    port = free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPidFile {d / 'sshd.pid'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "StrictModes no\nPermitRootLogin prohibit-password\nLogLevel ERROR\n")
    (d / "ssh_config").write_text(
        f"Host *\n  Port {port}\n  IdentityFile {d / 'user_key'}\n  IdentitiesOnly yes\n"
        "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  BatchMode yes\n"
        "  LogLevel ERROR\n")
    # DeepSpeed's runner and pdsh call plain `ssh`: this one reads the test's config
    wrapper = d / "bin" / "ssh"
    wrapper.write_text(f"#!/bin/sh\nexec {NEEDS['ssh']} -F {d / 'ssh_config'} \"$@\"\n")
    wrapper.chmod(0o755)
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
    with open(d / "sshd.log", "w") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stdout=log,
                                stderr=subprocess.STDOUT)
    env = {**os.environ, "PATH": f"{d / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    try:
        deadline = time.monotonic() + 30
        while True:
            probe = subprocess.run(["ssh", "127.0.0.1", "true"], env=env, capture_output=True)
            if probe.returncode == 0:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"sshd could not be started here: {probe.stderr.decode()[-300:]} "
                            f"{(d / 'sshd.log').read_text()[-500:]}")
            time.sleep(0.3)
        yield env
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_two_nodes_over_ssh_match_two_ranks_on_one_node(sshd: dict, two_ranks: Session,
                                                        samples_dir: Path, tmp_path: Path
                                                        ) -> None:
    work = two_ranks.workdir  # its ingest and tokenizer are this run's too
    single = pretrain_outputs(two_ranks.artifacts["pretrain"].path)

    hostfile = tmp_path / "hostfile"
    hostfile.write_text(render_hostfile(["localhost", "127.0.0.1"], slots=1))
    two_nodes = write_test_domain(
        samples_dir, tmp_path / "two", tokenizer={"vocab_size": 1024},
        pretrain={**BASE, "num_gpus": 1, "num_nodes": 2, "hostfile": str(hostfile),
                  "master_addr": "127.0.0.1", "grad_accum_steps": 1})
    env = {k: v for k, v in sshd.items() if k != "PREFECT_API_URL"}
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", "--domain-file", str(two_nodes), "--only",
         "pretrain", "--workdir", str(work)],
        # ephemeral Prefect on a fresh database: give it time on a loaded machine (90 s was
        # not enough under a load of 12 on 2 CPUs)
        cwd=REPO, env={**env, "PREFECT_HOME": str(tmp_path / "prefect"),
                       "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "600"}, text=True,
        capture_output=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    key = Session.open(None, "tiny", workdir=work, domain_file=two_nodes).plan["pretrain"].key
    multi = pretrain_outputs(work / "artifacts/pretrain" / key)
    assert "--hostfile" in multi["launch"] and "--num_nodes 2" in multi["launch"]
    assert "pdsh" in (work / "artifacts/pretrain" / key / "train.log").read_text()
    assert multi["summary"]["world_size"] == single["summary"]["world_size"] == 2
    digests = multi["summary"]["param_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]  # both nodes hold the same weights
    assert digests == single["summary"]["param_digests"]  # ... and those of one node
    assert multi["losses"] == single["losses"]
