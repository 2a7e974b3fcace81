"""The sweep against the control: a control proxy per learning rate (the control step with the
point's proxy budget), scored on the points' own dev sequences, and the pick gated on the
general change vs that control within ``evaluate.max_general_degradation``.

The rule is tested on synthetic points; the proxies are real runs of a tiny local base model
(``tests/pipeline/stages/test_control.py``'s) on a small slice of the test domain."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pipeline import domains
from pipeline.config import SweepConfig
from pipeline.driver import Session
from pipeline.engine.catalog import Catalog
from pipeline.lifecycle import sweep, sweep_control
from pipeline.stages.pretrain import dev_scores
from pipeline.stages.pretrain.output import PretrainOutput
from tests.pipeline.stages.test_control import RECIPE, domain_file, tiny_base


def point(lr: float, replay: float, domain: float, general: float, vs_control: float
          ) -> dict[str, Any]:
    return {"lr": lr, "replay": replay, "domain_change": domain, "general_change": general,
            "general_change_vs_control": vs_control}


def test_the_pick_is_gated_on_the_general_change_vs_the_control() -> None:
    points = [point(1e-4, 0.0, -0.20, -0.01, 0.095),  # best domain gain, forgets vs control
              point(1e-4, 0.25, -0.15, -0.03, 0.02),
              point(3e-5, 0.0, -0.08, -0.02, 0.01)]
    # against the base, every point is within 3%: the first wins
    assert sweep.pick(points, 0.03) is points[0]
    # against the control, the first is over the limit: the next best domain gain
    assert sweep.pick(points, 0.03, "general_change_vs_control") is points[1]
    # none within: the least forgetting vs the control
    assert sweep.pick(points, 0.005, "general_change_vs_control") is points[2]
    # the Pareto front on the same axes
    assert sweep.pareto(points, "general_change_vs_control") == [True, True, True]
    assert sweep.pareto([*points, point(1e-5, 0.0, -0.05, 0.0, 0.03)],
                        "general_change_vs_control")[-1] is False


def test_no_point_within_the_limit_is_said(monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    """The whole sweep with synthetic proxies: every point forgets more than the limit vs the
    control; the pick is the least forgetting and every output says what it was gated on."""
    forgetting = {0.0: 0.09, 0.25: 0.05}

    def train_point(domain: Any, base_run: Any, workdir: Path, grid: SweepConfig,
                    sweep_id: str, source: str, lr: float, replay: float) -> dict[str, Any]:
        return {"lr": lr, "replay": replay, "run_id": "r", "key": "k", "cached": False,
                "seconds": 0.0, "domain_change": -0.2 + replay, "general_change": -0.01,
                "domain_dev_loss": 2.0, "general_dev_loss": 3.0}

    def compare(self: Any, p: dict[str, Any], proxy: Any) -> None:
        p["general_change_vs_control"] = forgetting[p["replay"]]

    monkeypatch.setattr(sweep, "train_point", train_point)
    monkeypatch.setattr(sweep_control.Controls, "compare", compare)
    medical = domains.get("medical")
    run = medical.resolve("cpu")
    out = sweep.run_sweep(medical, run, tmp_path, SweepConfig(lrs=[1e-4], replay=[0.0, 0.25],
                                                              max_steps=4))
    limit = run.evaluate.max_general_degradation
    assert out["gate"] == {"reference": "control", "field": "general_change_vs_control",
                           "limit": limit, "setting": "evaluate.max_general_degradation",
                           "met": False}
    assert out["limit"] == limit and out["reference"] == "control"
    assert out["pick"] == {"lr": 1e-4, "replay": 0.25}  # least forgetting, less domain gain
    saved = json.loads((Path(out["dir"]) / "sweep.json").read_text())
    assert saved["gate"] == out["gate"]
    table = (Path(out["dir"]) / "sweep.md").read_text()
    assert "`evaluate.max_general_degradation`" in table and "No point met that limit" in table
    assert "| general vs control |" in table and "| +9.00% |" in table
    rows = Catalog(tmp_path / "catalog.duckdb").query(
        "SELECT name, value FROM metrics WHERE run_id = ?", [out["sweep_id"]])
    got = {r["name"]: r["value"] for r in rows}
    assert got["lr=0.0001,replay=0.general_change_vs_control"] == pytest.approx(0.09)
    assert got["pick_within_limit"] == 0.0 and "lr=0.0001,replay=0.25.general_change" in got
    # without a control: today's rule, vs the base within the checkpoint choice's limit
    off = run.model_copy(update={"pretrain": run.pretrain.model_copy(update={"control": False})})
    out = sweep.run_sweep(medical, off, tmp_path, SweepConfig(lrs=[1e-4], replay=[0.0, 0.25],
                                                              max_steps=4))
    assert out["gate"]["reference"] == "base" and out["gate"]["met"] is True
    assert out["limit"] == run.pretrain.select_max_general_degradation
    assert out["pick"] == {"lr": 1e-4, "replay": 0.0} and out["controls"] == []
    assert "general_change_vs_control" not in out["points"][0]


def test_one_control_proxy_per_learning_rate(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    """The grid's learning rates and the edge extension's each get one control proxy, however
    many replay shares share it (the training and the scoring are stubbed here; the real ones
    are the test below)."""
    trained: list[float] = []

    def train_point(domain: Any, base_run: Any, workdir: Path, grid: SweepConfig,
                    sweep_id: str, source: str, lr: float, replay: float) -> dict[str, Any]:
        return {"lr": lr, "replay": replay, "run_id": "r", "key": "k", "cached": False,
                "path": "p", "seconds": 0.0, "domain_change": -lr * 1e3, "general_change": 0.0,
                "domain_dev_loss": 2.0 - lr * 1e3, "general_dev_loss": 3.0 + replay}

    def train_control(domain: Any, proxy: Any, workdir: Path, sweep_id: str, lr: float
                      ) -> dict[str, Any]:
        assert proxy.pretrain.lr == lr and proxy.pretrain.max_steps == 4
        trained.append(lr)
        return {"lr": lr, "run_id": f"c{len(trained)}", "key": f"c{lr:g}", "cached": False,
                "path": "c"}

    monkeypatch.setattr(sweep, "train_point", train_point)
    monkeypatch.setattr(sweep_control, "train_control", train_control)
    # the points trained with the base tokenizer and scored general dev text: comparable
    monkeypatch.setattr(sweep_control, "PretrainOutput", lambda path: SimpleNamespace(
        tokenizer="base", spec=SimpleNamespace(general_eval=True)))
    monkeypatch.setattr(sweep_control, "control_losses", lambda control, path, workdir: {
        "losses": {"general": 3.0, "domain": 2.0}, "scored_on": "k", "cached": False})
    medical = domains.get("medical")
    out = sweep.run_sweep(medical, medical.resolve("cpu"), tmp_path,
                          SweepConfig(lrs=[2e-5, 1e-4], replay=[0.0, 0.25], max_steps=4))
    assert out["edge"]["lr"] == 5e-4 and trained == [2e-5, 1e-4, 5e-4]
    assert [c["key"] for c in out["controls"]] == ["c2e-05", "c0.0001", "c0.0005"]
    replayed = next(p for p in out["points"] if p["replay"] == 0.25)
    assert replayed["general_change_vs_control"] == pytest.approx(3.25 / 3.0 - 1)
    assert replayed["domain_change_vs_control"] == pytest.approx(
        replayed["domain_dev_loss"] / 2.0 - 1)


@pytest.mark.slow  # two tiny DeepSpeed runs (the point and its control) and their inputs
def test_control_proxy_scored_on_the_points_dev_text(
        samples_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAPT_TRACKING", "off")  # MLflow is not what this tests
    news = [json.loads(line)["text"] for line in
            (samples_dir / "general/news.jsonl").read_text().splitlines()[:300]]
    base = tiny_base(news, tmp_path / "base")
    path = domain_file(samples_dir, tmp_path, base, "medtest")
    for name in ("hpo", "icd10cm", "healthnews"):  # a smaller slice: ingest in seconds
        data = path.parent / "data" / f"{name}.jsonl"
        data.write_text("".join(data.read_text().splitlines(keepends=True)[:400]))
    session = Session.open(None, "tiny", workdir=tmp_path / "work", domain_file=path)
    # 3 steps: DeepSpeed's warmup from 0 leaves the first at lr 0
    grid = SweepConfig(lrs=[RECIPE["lr"]], replay=[0.2], max_steps=3, extend_edge=False)
    out = sweep.run_sweep(session.domain, session.run, session.workdir, grid)
    assert len(out["controls"]) == 1 and not out["controls"][0]["cached"]
    control = out["controls"][0]
    built = [d for d in (session.workdir / "artifacts/control").iterdir()
             if not d.name.startswith(".")]
    assert [d.name for d in built] == [control["key"]]
    ctrl = PretrainOutput(Path(control["path"]))
    # the control step with the point's proxy budget and lr, its final weights exported
    assert ctrl.steps == 3 and ctrl.spec.config.lr == RECIPE["lr"] and ctrl.selection is None
    assert out["gate"]["reference"] == "control" and out["control_note"] is None
    p = out["points"][0]
    assert p["domain_change"] < 0  # trained: the changes are not trivially zero
    # the vs-control changes are the ratios of the recorded dev losses
    assert p["general_change_vs_control"] == pytest.approx(
        p["general_dev_loss"] / control["general_dev_loss"] - 1, rel=1e-12)
    assert p["domain_change_vs_control"] == pytest.approx(
        p["domain_dev_loss"] / control["domain_dev_loss"] - 1, rel=1e-12)
    # the control was scored as the worker scores: the point's exported model, scored the
    # same way on its own dev sequences, gives the losses its worker recorded for it
    point = PretrainOutput(Path(p["path"]))
    again = dev_scores.dev_losses(point.hf_dir, dev_scores.dev_sequences(point),
                                  point.spec.config.micro_batch_size, bf16=False)
    assert again["general"] == pytest.approx(point.summary.general_eval_loss, rel=1e-4)
    assert again["domain"] == pytest.approx(point.summary.eval_loss, rel=1e-4)
    # a rerun trains and scores nothing again
    rerun = sweep.run_sweep(session.domain, session.run, session.workdir, grid)
    assert rerun["controls"][0]["cached"] and rerun["controls"][0]["scores_cached"]
    assert rerun["points"][0]["cached"] and rerun["controls"][0]["key"] == control["key"]
    assert rerun["points"][0]["general_change_vs_control"] == p["general_change_vs_control"]
    assert (Path(rerun["dir"]) / "sweep.png").stat().st_size > 1000
