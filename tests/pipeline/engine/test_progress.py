"""pipeline.engine.progress: the line a log or CI reader sees, and how often it comes."""

from __future__ import annotations

import logging

import pytest

from pipeline.engine import progress


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "dapt"]


def test_lines_carry_count_rate_eta_and_loss(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dapt")
    bar = progress.Bar("pretrain", 4, "steps", shown="lines", every_s=0)
    for step in (1, 2, 3):
        bar.update(completed=step, loss=4.0 / step)
    bar.update(completed=4, loss=1.0)  # finished: the closing line says so, once
    bar.close()
    bar.close()
    lines = _lines(caplog)
    assert len(lines) == 4
    assert lines[0] == "pretrain: 1/4 steps 25% | loss 4.0000"  # the rate counts from step 1
    assert lines[1].startswith("pretrain: 2/4 steps 50% | ")
    assert " steps/s | eta " in lines[1] and lines[1].endswith("| loss 2.0000")
    assert lines[-1].startswith("pretrain: 4/4 steps 100% | ") and "| took 0s | loss 1.0000" in \
        lines[-1]
    assert not any(getattr(r, "dapt_progress", False) for r in caplog.records)


def test_one_line_per_interval_and_the_last(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dapt")
    with progress.Bar("ingest: shards", 50, "shards", shown="lines", every_s=3600) as bar:
        for _ in range(50):
            bar.update()
    assert _lines(caplog) == [_lines(caplog)[0]]
    assert _lines(caplog)[0].startswith("ingest: shards: 50/50 shards 100% | ")


def test_unknown_total_and_off(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dapt")
    with progress.Bar("packing: train", None, "docs", shown="lines", every_s=0) as bar:
        bar.update(1000, tokens=52_000)
    with progress.Bar("quiet", 3, "items", shown="off") as bar:
        bar.update(3)
    lines = _lines(caplog)
    assert all("packing" in x for x in lines)  # nothing from the "off" bar
    assert lines[-1].startswith("packing: train: 1000 docs | ") and " docs/s | took " in lines[-1]
    assert lines[-1].endswith("| tokens 52000")


def test_mode_follows_the_terminal_and_the_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DAPT_PROGRESS", raising=False)
    assert progress.mode() == "lines"  # pytest captures stderr: not a TTY
    monkeypatch.setenv("DAPT_PROGRESS", "bars")
    assert progress.mode() == "bars"
    monkeypatch.setenv("DAPT_PROGRESS_INTERVAL_S", "2.5")
    assert progress.interval_s() == 2.5



def test_a_training_process_shows_under_the_step_that_runs_it(
        caplog: pytest.LogCaptureFixture, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The control trains through pretrain's launcher: its progress line says ``control``."""
    import sys

    from pipeline.stages.pretrain import stage
    from pipeline.stages.pretrain.worker_io import WorkerEvent

    monkeypatch.setenv("DAPT_PROGRESS", "lines")
    monkeypatch.setenv("DAPT_PROGRESS_INTERVAL_S", "0")
    caplog.set_level(logging.INFO, logger="dapt")
    events = [WorkerEvent(kind="step", step=s, max_steps=2, loss=1.0).line() for s in (1, 2)]
    script = "; ".join(f"print({e!r})" for e in events)
    stage._stream([sys.executable, "-c", script], tmp_path / "train.log", {},
                  on_event=lambda e: None, label="control seed 1")
    lines = [m for m in _lines(caplog) if "steps" in m]
    assert lines and all(m.startswith("control seed 1: ") for m in lines)
    assert lines[-1].startswith("control seed 1: 2/2 steps 100% | ")
