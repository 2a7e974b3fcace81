"""Experiment tracking in MLflow: every run of the driver, logged when it ends.

When a run ends (completed, not promoted, up to date or failed: ``pipeline.driver.Session``),
it is logged as one MLflow run in the experiment ``dapt-<domain>``: its params (the resolved
config, flattened to dotted keys, plus the CLI's parameters), each step's metrics as
``<step>.<metric>`` with its key and cache hit as tags, the pretraining curves (every point of
the model step's ``metrics.jsonl``, by step), and the report files. The model step's HF export
is registered as a version of the registered model ``dapt-<domain>`` whose source is the
artifact's own ``hf/`` folder (no second copy of the weights), tagged with its artifact key;
promotion sets the alias ``champion`` on the version of the promoted key (``set_champion``).

The store: ``MLFLOW_TRACKING_URI`` when set (a team's server), else a SQLite store in the
workdir (``<workdir>/mlflow/mlflow.db``, artifacts beside it): no server needed.
``DAPT_TRACKING=off`` turns tracking off. dapt installs ``mlflow-skinny`` (the client): the
full ``mlflow`` package, which has the UI server, pins ``pyarrow<26`` and dapt pins 26.0.1, so
the UI runs from a separate environment over the same store (``ui_command``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("dapt")
MAX_PARAM = 6000  # MLflow's limit on a param value


def enabled() -> bool:
    return os.environ.get("DAPT_TRACKING", "on").lower() not in ("off", "0", "false", "no")


def tracking_uri(workdir: Path) -> str:
    if uri := os.environ.get("MLFLOW_TRACKING_URI"):
        return uri
    return f"sqlite:///{workdir / 'mlflow' / 'mlflow.db'}"


def ui_command(workdir: Path) -> str:
    """A command that opens this workdir's runs in MLflow's UI."""
    uri = tracking_uri(workdir)
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return f"open your MLflow server ({uri})"
    return (f"mlflow server --backend-store-uri {uri} --port 5000  (the full `mlflow` package, "
            "in its own venv: its pyarrow<26 pin does not sit beside dapt's)")


def flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """Dotted keys and string values of a nested config (lists as JSON)."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            yield from flatten(v, f"{prefix}{k}.")
    else:
        text = json.dumps(value, default=str) if isinstance(value, list) else str(value)
        yield prefix.rstrip("."), text[:MAX_PARAM]


def _client(workdir: Path):
    from mlflow import MlflowClient

    uri = tracking_uri(workdir)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(uri, uri)


def _experiment(client: Any, workdir: Path, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        location = (workdir / "mlflow" / "artifacts").as_uri()
    return client.create_experiment(name, artifact_location=location)


def model_name(domain: str) -> str:
    return f"dapt-{domain}"


def step_label(step: str) -> str:
    """A step's name as MLflow takes it in a key (no brackets): pretrain[seed1] ->
    pretrain.seed1; a step that did not fan out keeps its name."""
    return step.replace("[", ".").replace("]", "")


def log_run(workdir: Path, *, domain: str, run_id: str, status: str, config: dict[str, Any],
            params: Mapping[str, Any], steps: list[dict[str, Any]], curve: Path | None,
            report_dir: Path | None, model: tuple[str, Path] | None) -> str | None:
    """Log one finished run; returns the MLflow run id (None when tracking is off or fails:
    a tracking store that cannot be reached never fails the pipeline run)."""
    if not enabled():
        return None
    try:
        return _log_run(workdir, domain, run_id, status, config, params, steps, curve,
                        report_dir, model)
    except Exception as exc:  # the run's own outcome stands; say why it is not in MLflow
        log.warning("MLflow: run %s not logged: %s: %s", run_id, type(exc).__name__, exc)
        return None


def _log_run(workdir: Path, domain: str, run_id: str, status: str, config: dict[str, Any],
             params: Mapping[str, Any], steps: list[dict[str, Any]], curve: Path | None,
             report_dir: Path | None, model: tuple[str, Path] | None) -> str:
    from mlflow.entities import Metric, Param, RunTag

    client = _client(workdir)
    run = client.create_run(_experiment(client, workdir, f"dapt-{domain}"), run_name=run_id,
                            tags={"dapt.run_id": run_id, "dapt.status": status})
    rid = run.info.run_id
    values = dict(flatten(config))
    values.update({f"run.{k}": str(v) for k, v in params.items() if v is not None})
    items = [Param(k, v) for k, v in sorted(values.items())]
    for i in range(0, len(items), 100):  # MLflow takes 100 params a call
        client.log_batch(rid, params=items[i:i + 100])
    metrics, tags = [], []
    for s in steps:
        step = step_label(s.get("step") or s["stage"])
        tags += [RunTag(f"dapt.{step}.key", s["artifact_key"]),
                 RunTag(f"dapt.{step}.cache_hit", str(bool(s["cache_hit"])))]
        for name, value in json.loads(s.get("metrics") or "{}").items():
            metrics.append(Metric(f"{step}.{name}", float(value), 0, 0))
    if curve is not None and curve.exists():
        for line in curve.read_text().splitlines():
            point = json.loads(line)
            metrics += [Metric(f"curve.{k}", float(v), 0, int(point["step"]))
                        for k, v in point.items() if k != "step" and isinstance(v, (int, float))]
    for i in range(0, len(metrics), 1000):  # MLflow's limits a call: 1000 metrics, 100 tags
        client.log_batch(rid, metrics=metrics[i:i + 1000])
    for i in range(0, len(tags), 100):
        client.log_batch(rid, tags=tags[i:i + 100])
    if report_dir is not None and report_dir.is_dir():
        for f in sorted(report_dir.glob("*.md")) + sorted(report_dir.glob("*.html")):
            client.log_artifact(rid, str(f), artifact_path="report")
    if model is not None:
        _register(client, domain, rid, *model)
    client.set_terminated(rid, "FAILED" if status == "failed" else "FINISHED")
    return rid


def _register(client: Any, domain: str, rid: str, key: str, hf_dir: Path) -> None:
    """A version of ``dapt-<domain>`` whose source is the export itself (once per key)."""
    name = model_name(domain)
    try:
        client.get_registered_model(name)
    except Exception:
        client.create_registered_model(name, description=f"dapt's {domain} models")
    if _version_of(client, name, key) is None:
        client.create_model_version(name, source=str(hf_dir), run_id=rid,
                                    tags={"artifact_key": key},
                                    description=f"pretrain/{key}")


def _version_of(client: Any, name: str, key: str) -> str | None:
    found = client.search_model_versions(f"name = '{name}' and tag.artifact_key = '{key}'")
    return found[0].version if found else None


def set_champion(workdir: Path, domain: str, key: str) -> str | None:
    """Point the alias ``champion`` at the version of pretrain/<key> (promotion, rollback);
    the version, or None when tracking is off or the model was never registered."""
    if not enabled():
        return None
    try:
        client = _client(workdir)
        version = _version_of(client, model_name(domain), key)
        if version is not None:
            client.set_registered_model_alias(model_name(domain), "champion", version)
        return version
    except Exception as exc:
        log.warning("MLflow: alias champion not set: %s: %s", type(exc).__name__, exc)
        return None
