"""A sweep grid that finds its edge: when the pick's learning rate is the largest or smallest
tried, the sweep runs one more proxy one step past it and picks again.

The proxy training (``sweep.train_point``, a DeepSpeed run of SmolLM2: minutes, covered by
tests/pipeline/stages/test_cpu_profile.py) is replaced by a known dev-loss landscape with its
optimum at ``best_lr``, and the control proxies (tests/pipeline/lifecycle/test_sweep_control.py)
by no forgetting; everything after it (pick, edge, table, catalog) is the real code."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from pipeline import domains
from pipeline.config import SweepConfig
from pipeline.engine.catalog import Catalog
from pipeline.lifecycle import sweep


def landscape(monkeypatch: pytest.MonkeyPatch, best_lr: float) -> list[tuple[float, float]]:
    """Proxies whose domain change is lowest at ``best_lr`` (and rises 1% per replay 0.1); the
    (lr, replay) of every proxy run, in order."""
    trained: list[tuple[float, float]] = []

    def train_point(domain: Any, base_run: Any, workdir: Path, grid: SweepConfig,
                    sweep_id: str, source: str, lr: float, replay: float) -> dict[str, Any]:
        trained.append((lr, replay))
        return {"lr": lr, "replay": replay, "run_id": f"r{len(trained)}", "key": "k",
                "cached": False, "seconds": 0.0,
                "domain_change": -0.1 + 0.05 * math.log10(lr / best_lr) ** 2 + 0.1 * replay,
                "general_change": 0.0, "domain_dev_loss": 1.0, "general_dev_loss": 1.0}

    def compare(self: Any, point: dict[str, Any], proxy: Any) -> None:
        point["general_change_vs_control"] = 0.0  # every point within the forgetting limit

    monkeypatch.setattr(sweep, "train_point", train_point)
    monkeypatch.setattr(sweep.sweep_control.Controls, "compare", compare)
    return trained


@pytest.mark.parametrize(("lrs", "best_lr", "side", "tried", "final", "still"), [
    ([2e-5, 1e-4], 3e-4, "high", 5e-4, 5e-4, True),   # beyond the edge and further
    ([2e-5, 1e-4], 1.5e-4, "high", 5e-4, 1e-4, False),  # the edge was the best after all
    ([1e-4, 3e-4], 1e-5, "low", 3.33e-5, 3.33e-5, True),
])
def test_a_pick_on_the_grid_edge_extends_it_once(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, lrs: list[float], best_lr: float,
        side: str, tried: float, final: float, still: bool) -> None:
    trained = landscape(monkeypatch, best_lr)
    run = domains.get("medical").resolve("cpu")
    out = sweep.run_sweep(domains.get("medical"), run, tmp_path,
                          SweepConfig(lrs=lrs, replay=[0.0, 0.2], max_steps=4))
    # the grid, then one proxy past the edge, at the picked replay share
    assert trained == [(lr, r) for lr in lrs for r in (0.0, 0.2)] + [(tried, 0.0)]
    assert out["edge"] == {"side": side, "lr": tried, "ratio": pytest.approx(tried / out[
        "edge"]["grid_pick"]["lr"]), "grid_pick": {"lr": lrs[-1 if side == "high" else 0],
                                                   "replay": 0.0}, "still_on_edge": still}
    assert out["pick"] == {"lr": final, "replay": 0.0}
    saved = json.loads((Path(out["dir"]) / "sweep.json").read_text())
    assert saved["edge"] == out["edge"] and len(saved["points"]) == 5
    table = (Path(out["dir"]) / "sweep.md").read_text()
    assert f"lr {tried:g} (x" in table and f"| {tried:g} | 0 |" in table
    assert ("still on the edge" in table) == still
    rows = Catalog(tmp_path / "catalog.duckdb").query(
        "SELECT name, value FROM metrics WHERE run_id = ?", [out["sweep_id"]])
    got = {r["name"]: r["value"] for r in rows}
    assert got["edge_lr"] == tried and got["pick_lr"] == final


def test_a_pick_inside_the_grid_or_a_switched_off_edge_runs_the_grid_alone(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    trained = landscape(monkeypatch, 1e-4)
    medical = domains.get("medical")
    run = medical.resolve("cpu")
    out = sweep.run_sweep(medical, run, tmp_path, SweepConfig(lrs=[2e-5, 1e-4, 5e-4],
                                                              replay=[0.0], max_steps=4))
    assert out["edge"] is None and len(trained) == 3 and out["pick"]["lr"] == 1e-4
    trained.clear()
    out = sweep.run_sweep(medical, run, tmp_path, SweepConfig(
        lrs=[2e-5, 1e-4], replay=[0.0], max_steps=4, extend_edge=False))
    assert out["edge"] is None and len(trained) == 2
    # one learning rate has no grid ratio to step by: nothing to extend
    assert sweep.edge_step([1e-4], 1e-4) is None
    assert sweep.edge_step([1e-5, 1e-4, 1e-3], 1e-3) == ("high", 1e-2)
