"""What a person watching ``dapt run`` in a log (not a TTY) sees: a progress line per interval
for every long stage, from real stage events, and the closing summary table."""

from __future__ import annotations

import re

from tests.flows.conftest import SERVED_PROFILE


def _progress(stderr: str, label: str) -> list[str]:
    """The progress lines of one bar, message part only (Prefect's console prefixes a time)."""
    return [line.split(" - ", 1)[1] for line in stderr.splitlines()
            if f" - {label}: " in line and "|" in line.split(" - ", 1)[1]]


def test_progress_lines_for_every_long_stage(served_run: dict) -> None:
    err = served_run["result"].stderr
    steps = SERVED_PROFILE["pretrain"]["max_steps"]
    shards = _progress(err, "ingest: shards")
    assert shards and re.match(r"ingest: shards: (\d+)/\1 shards 100% \| .* \| took ", shards[-1])
    for stream in ("train", "eval"):
        lines = _progress(err, f"packing: {stream}")
        assert lines and re.match(r"packing: \w+: (\d+)/\1 docs 100% \| [\d.,]+ docs/s \| took ",
                                  lines[-1]), lines
        assert int(lines[-1].rsplit("tokens ", 1)[1]) > 0
    pretrain = _progress(err, "pretrain")
    # one line per logged step (log_every 2), with loss and tokens/s; the last says what it took
    assert [int(re.match(r"pretrain: (\d+)/", x)[1]) for x in pretrain] == \
        list(range(2, steps + 1, 2))
    assert re.search(r"\| eta \S+ \| loss [\d.]+ \| tok/s \d+$", pretrain[1]), pretrain[1]
    assert "| took " in pretrain[-1]
    for task in ("icd10_chapter", "organ_system"):
        for seed in (0, 1):
            lines = _progress(err, f"finetune {task} adapted seed {seed}")
            assert lines and re.match(r"finetune .*: (\d+)/\1 batches 100% \|", lines[-1])
            assert re.search(r"\| epoch 1 \| loss [\d.]+$", lines[-1]), lines[-1]
    scoring = _progress(err, "evaluate: scoring")
    assert scoring and re.search(r"(\d+)/\1 batches 100% .*\| loss [\d.]+$", scoring[-1])


def test_summary_table_closes_the_run(served_run: dict) -> None:
    out = served_run["result"].stdout.splitlines()
    start = next(i for i, line in enumerate(out) if line.split()[:2] == ["stage", "result"])
    rows = [line.split() for line in out[start + 2:start + 7]]
    assert [r[0] for r in rows] == ["ingest", "tokenizer", "pretrain", "finetune", "evaluate"]
    assert all(r[1] == "built" and float(r[2]) > 0 for r in rows)
    assert " ".join(rows[0][3:]).startswith("docs kept ")
    assert " ".join(rows[2][3:]).startswith("held-out loss ")
    assert " ".join(rows[4][3:]).startswith("held-out perplexity ")


def test_the_log_carries_no_library_noise(served_run: dict) -> None:
    """Off a terminal the log is for reading: no redraws of transformers' weight-loading bar,
    no Prefect warning about a dapt record logged outside a run's context, no deprecation of
    a keyword dapt passes."""
    err = served_run["result"].stderr
    for noise in ("Loading weights", "without a flow run id", "`torch_dtype` is deprecated"):
        assert noise not in err, noise
