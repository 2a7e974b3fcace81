"""The DuckDB catalog: runs, the stages they executed, artifacts, lineage, metrics and curves.

``curves`` holds an artifact's per-step training records (``metrics.jsonl``: loss, lr,
grad_norm, tokens_per_s, held-out and general losses), one row per step and name.

One file, ``<workdir>/catalog.duckdb``. DuckDB allows one writing process at a time, so every
operation opens a short-lived connection and retries while another process holds the lock;
two ``dapt run`` processes on one workdir therefore interleave instead of failing.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from pipeline.engine.artifacts import Artifact, Manifest
from pipeline.engine.processes import alive

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY, domain VARCHAR, profile VARCHAR, params JSON,
    status VARCHAR, error VARCHAR, report_path VARCHAR,
    started_at TIMESTAMP, finished_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS stage_runs (
    run_id VARCHAR, stage VARCHAR, artifact_key VARCHAR, cache_hit BOOLEAN, status VARCHAR,
    started_at TIMESTAMP, duration_s DOUBLE, error VARCHAR);
CREATE TABLE IF NOT EXISTS artifacts (
    key VARCHAR, stage VARCHAR, domain VARCHAR, path VARCHAR, config_hash VARCHAR,
    code_version VARCHAR, created_at VARCHAR, counts JSON, metrics JSON,
    PRIMARY KEY (stage, key));
CREATE TABLE IF NOT EXISTS lineage (
    stage VARCHAR, key VARCHAR, input_stage VARCHAR, input_key VARCHAR);
CREATE TABLE IF NOT EXISTS metrics (
    run_id VARCHAR, stage VARCHAR, artifact_key VARCHAR, name VARCHAR, value DOUBLE);
CREATE TABLE IF NOT EXISTS curves (
    stage VARCHAR, artifact_key VARCHAR, step BIGINT, name VARCHAR, value DOUBLE);
CREATE TABLE IF NOT EXISTS promotions (
    domain VARCHAR, seq BIGINT, action VARCHAR, key VARCHAR, previous VARCHAR,
    run_id VARCHAR, reason VARCHAR, recorded_at TIMESTAMP);
ALTER TABLE runs ADD COLUMN IF NOT EXISTS pid INTEGER;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS host VARCHAR;
ALTER TABLE stage_runs ADD COLUMN IF NOT EXISTS step VARCHAR;
"""
# stage_runs.stage is the artifact's kind; step is the step's name in the plan, which differs
# for a fanned-out step ("pretrain[seed1]"; NULL in rows written before steps had names: read
# as the stage). The first variant keeps the kind's name, so `step = 'pretrain'` is the model
# a run promotes however many seeds it trained.
# promotions: the history of each domain's promoted model (a pretrain artifact key), newest
# seq last. action: promoted (gates passed), manual (`dapt models promote`), rollback (key is
# the model restored, previous the one demoted), rejected (gates failed: key is the candidate,
# the pointer does not move). The promoted model is the key of the newest row that is not
# `rejected`; see pipeline.lifecycle.promotion.
MOVES = ("promoted", "manual", "rollback")
STAGE_RUN_COLUMNS = ("run_id, stage, artifact_key, cache_hit, status, started_at, duration_s, "
                     "error, step")


def run_status(row: Mapping[str, Any]) -> str:
    """A run's status as recorded, except that a ``running`` run started on this host by a
    process that no longer exists is ``crashed`` (killed, out of memory, power lost). A run of
    another host is taken at its word: its process cannot be seen from here."""
    if (row.get("status") == "running" and row.get("pid") is not None
            and row.get("host") == socket.gethostname() and not alive(row["pid"])):
        return "crashed"
    return row.get("status")


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Catalog:
    def __init__(self, path: Path, lock_timeout_s: float = 120.0):
        self.path = Path(path)
        self.lock_timeout_s = lock_timeout_s
        self._held: duckdb.DuckDBPyConnection | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.connect() as con:
            con.execute(SCHEMA)

    @contextmanager
    def held(self) -> Iterator[Catalog]:
        """One connection for every call inside the block (each call otherwise opens its own,
        ~20 ms, and lets go of the file lock at once). Hold it only for a few quick calls:
        another process waits for the lock meanwhile."""
        if self._held is not None:
            yield self
            return
        with self._open() as con:
            self._held = con
            try:
                yield self
            finally:
                self._held = None

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        if self._held is not None:
            yield self._held
            return
        with self._open() as con:
            yield con

    @contextmanager
    def _open(self) -> Iterator[duckdb.DuckDBPyConnection]:
        deadline = time.monotonic() + self.lock_timeout_s
        while True:
            try:
                con = duckdb.connect(str(self.path))
                break
            except duckdb.IOException as exc:  # another process holds the write lock
                if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        try:
            yield con
        finally:
            con.close()

    # --- writes ---------------------------------------------------------------------------

    def start_run(self, run_id: str, domain: str, profile: str, params: Mapping[str, Any],
                  pid: int | None = None, host: str | None = None) -> None:
        """A run starts ``running``; ``pid`` and ``host`` (the process that runs it) let a
        reader tell a run whose process is gone (``crashed``, see ``runs``)."""
        with self.connect() as con:
            con.execute(
                "INSERT INTO runs (run_id, domain, profile, params, status, started_at, pid, "
                "host) VALUES (?, ?, ?, ?, 'running', ?, ?, ?)",
                [run_id, domain, profile, json.dumps(params, default=str), _now(), pid, host],
            )

    def finish_run(
        self, run_id: str, status: str, error: str | None = None, report_path: str | None = None
    ) -> None:
        with self.connect() as con:
            con.execute(
                "UPDATE runs SET status = ?, error = ?, report_path = ?, finished_at = ? "
                "WHERE run_id = ?",
                [status, error, report_path, _now(), run_id],
            )

    def record_stage(
        self,
        run_id: str,
        domain: str,
        artifact: Artifact,
        *,
        cache_hit: bool,
        started_at: datetime,
        duration_s: float,
        input_kinds: Mapping[str, str] | None = None,
        step: str | None = None,
    ) -> None:
        """One step's row, its artifact, the artifact's inputs (``input_kinds``: the kind of
        each input not named for its kind, e.g. the promoted model a run continues) and its
        metrics and curve. ``step``: the step's name in the plan (default: the kind)."""
        kinds = input_kinds or {}
        m: Manifest = artifact.manifest
        with self.connect() as con:
            con.begin()  # one commit (and one WAL flush) for the stage's rows
            con.execute(
                f"INSERT INTO stage_runs ({STAGE_RUN_COLUMNS}) "
                "VALUES (?, ?, ?, ?, 'completed', ?, ?, NULL, ?)",
                [run_id, m.stage, m.key, cache_hit, started_at, duration_s, step or m.stage],
            )
            con.execute(
                "INSERT OR REPLACE INTO artifacts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [m.key, m.stage, domain, str(artifact.path), m.config_hash, m.code_version,
                 m.created_at, json.dumps(m.counts), json.dumps(m.metrics)],
            )
            con.execute("DELETE FROM lineage WHERE stage = ? AND key = ?", [m.stage, m.key])
            for name, input_key in m.inputs.items():
                con.execute(
                    "INSERT INTO lineage VALUES (?, ?, ?, ?)",
                    [m.stage, m.key, kinds.get(name, name), input_key],
                )
            rows = [[run_id, m.stage, m.key, k, float(v)] for k, v in sorted(m.metrics.items())]
            if rows:
                con.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?, ?)", rows)
            curve = artifact.path / "metrics.jsonl"
            # an artifact never changes under its key: a cache hit whose curve is stored
            # already has nothing to add (a rebuild at the same key, `--only`, rewrites it)
            stored = cache_hit and con.execute(
                "SELECT 1 FROM curves WHERE stage = ? AND artifact_key = ? LIMIT 1",
                [m.stage, m.key]).fetchone() is not None
            if curve.exists() and not stored:
                con.execute("DELETE FROM curves WHERE stage = ? AND artifact_key = ?",
                            [m.stage, m.key])
                points = [[m.stage, m.key, r["step"], k, float(v)]
                          for r in map(json.loads, curve.read_text().splitlines())
                          for k, v in r.items() if k != "step"]
                if points:
                    con.executemany("INSERT INTO curves VALUES (?, ?, ?, ?, ?)", points)
            con.commit()

    def record_stage_failure(
        self, run_id: str, stage: str, key: str, started_at: datetime, error: str,
        step: str | None = None,
    ) -> None:
        with self.connect() as con:
            con.execute(
                f"INSERT INTO stage_runs ({STAGE_RUN_COLUMNS}) "
                "VALUES (?, ?, ?, FALSE, 'failed', ?, ?, ?, ?)",
                [run_id, stage, key, started_at, (_now() - started_at).total_seconds(), error,
                 step or stage],
            )

    def record_metrics(self, run_id: str, stage: str, key: str,
                       metrics: Mapping[str, float]) -> None:
        """Metrics of a run that are not an artifact's (a sweep's table)."""
        rows = [[run_id, stage, key, k, float(v)] for k, v in sorted(metrics.items())]
        if rows:
            with self.connect() as con:
                con.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?, ?)", rows)

    def record_promotion(self, domain: str, action: str, key: str, previous: str | None,
                         run_id: str | None, reason: str) -> None:
        if action not in (*MOVES, "rejected"):
            raise ValueError(f"unknown promotion action {action!r}")
        with self.connect() as con:
            con.execute(
                "INSERT INTO promotions SELECT ?, coalesce(max(seq), 0) + 1, ?, ?, ?, ?, ?, ? "
                "FROM promotions WHERE domain = ?",
                [domain, action, key, previous, run_id, reason, _now(), domain])

    # --- reads ----------------------------------------------------------------------------

    def promoted(self, domain: str) -> str | None:
        """The pretrain artifact key of the domain's promoted model, or None."""
        rows = self.query(
            "SELECT key FROM promotions WHERE domain = ? AND action IN ? "
            "ORDER BY seq DESC LIMIT 1", [domain, list(MOVES)])
        return rows[0]["key"] if rows else None

    def promotions(self, domain: str | None = None) -> list[dict[str, Any]]:
        """The promotion history, oldest first (every domain's when ``domain`` is None)."""
        where, params = ("WHERE domain = ?", [domain]) if domain else ("", [])
        return self.query(f"SELECT * FROM promotions {where} ORDER BY domain, seq", params)

    def query(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        with self.connect() as con:
            cur = con.execute(sql, params or [])
            if cur.description is None:  # a statement without a result set
                return []
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]

    def runs(self, domain: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        """The newest runs; a ``running`` run whose process is gone reads ``crashed``."""
        where, params = ("WHERE domain = ?", [domain]) if domain else ("", [])
        rows = self.query(
            f"SELECT * FROM runs {where} ORDER BY started_at DESC LIMIT {int(limit)}", params
        )
        for r in rows:
            r["status"] = run_status(r)
        return rows

    def stage_runs(self, run_id: str) -> list[dict[str, Any]]:
        rows = self.query(
            "SELECT s.*, a.metrics FROM stage_runs s LEFT JOIN artifacts a "
            "ON a.stage = s.stage AND a.key = s.artifact_key WHERE run_id = ? "
            "ORDER BY started_at",
            [run_id],
        )
        # The metrics this run recorded win: an artifact rebuilt at the same key (`--only`)
        # replaces the artifact's row, not what an earlier run measured.
        own: dict[tuple[str, str], dict[str, float]] = {}
        for m in self.query("SELECT stage, artifact_key, name, value FROM metrics "
                            "WHERE run_id = ? ORDER BY name", [run_id]):
            own.setdefault((m["stage"], m["artifact_key"]), {})[m["name"]] = m["value"]
        for r in rows:
            r["step"] = r.get("step") or r["stage"]
            if (r["stage"], r["artifact_key"]) in own:
                r["metrics"] = json.dumps(own[r["stage"], r["artifact_key"]])
        return rows
