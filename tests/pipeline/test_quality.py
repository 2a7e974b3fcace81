"""The Gopher quality and repetition filters on literal strings, one failing document per
filter, and through the ingest stage (counts, exclusion log, in = kept + excluded)."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import ingest, quality
from pipeline.config import IngestConfig, QualityConfig

# 60 words, 5 stop words, mean word length ~5: passes every default filter
CLEAN = ("The committee reviewed the annual report and found that the revenue of the company "
         "grew with the expansion into new markets. Analysts said the results were better than "
         "expected, and the board approved a dividend increase for shareholders. The chief "
         "executive told reporters that the outlook for the coming year remains positive, "
         "although costs have risen with inflation and higher interest rates across Europe.")

BULLETS = "\n".join(f"- Redistributions of the source code must retain the notices, number {i}"
                    for i in range(12))


def reasons(texts: list[str], config: QualityConfig | None = None) -> list[tuple]:
    config = config or QualityConfig()
    con = duckdb.connect()
    con.register("source", pa.table({"ord": list(range(len(texts))), "text": texts}))
    reason, detail = quality.reason_sql(config)
    return con.sql(f"SELECT {reason}, {detail} FROM ({quality.features_sql(config)}) "
                   "ORDER BY ord").fetchall()


@pytest.mark.parametrize(("text", "reason", "detail"), [
    (CLEAN, None, None),
    ("The cat and the dog sat with the owner.", "gopher_min_words", "n_words 9 < 50"),
    (CLEAN + " " + " ".join(["a"] * 200), "gopher_min_mean_word_length",
     "mean_word_length"),
    (CLEAN + " " + " ".join(["#tag"] * 10), "gopher_max_symbol_word_ratio", "hash_ratio"),
    (CLEAN + " ... ... ... ... ... ... ... ...", "gopher_max_symbol_word_ratio",
     "ellipsis_ratio"),
    (CLEAN + "\nand then...\nmore of that...\nthe rest of it...", "gopher_max_ellipsis_lines",
     "ellipsis_lines 0.75 > 0.3"),
    (BULLETS, "gopher_max_bullet_lines", "bullet_lines 1.0 > 0.9"),
    (CLEAN + " " + " ".join(str(i) for i in range(40)), "gopher_min_alpha_words",
     "alpha_words"),
    (" ".join(["Revenue grew strongly during recent quarters"] * 12), "gopher_min_stop_words",
     "stop_words 0 < 2"),
    ("\n".join([CLEAN[:80]] * 4 + [CLEAN]), "repetition_max_duplicate_lines",
     "duplicate_lines 0.6 > 0.3"),
])
def test_each_filter_fires_on_its_case(text: str, reason: str | None, detail: str | None
                                       ) -> None:
    (got_reason, got_detail), = reasons([text])
    assert got_reason == reason
    if detail:
        assert got_detail.startswith(detail.split(" ")[0]) and detail in got_detail


def test_duplicate_paragraphs_and_characters() -> None:
    para = CLEAN[:200]
    text = "\n\n".join([para, para, CLEAN])  # one of three paragraphs repeats an earlier one
    config = QualityConfig.model_validate({"repetition": {"max_duplicate_lines": None}})
    (reason, detail), = reasons([text], config)
    assert reason == "repetition_max_duplicate_paragraphs"
    assert detail == "duplicate_paragraphs 0.3333 > 0.3"
    off = QualityConfig.model_validate({"repetition": {
        "max_duplicate_lines": None, "max_duplicate_paragraphs": None}})
    (reason, detail), = reasons([text], off)
    # 200 of len(text) characters are a repeated line
    assert reason == "repetition_max_duplicate_line_chars"
    assert detail == f"duplicate_line_chars {round(200 / len(text), 4)} > 0.2"


def test_thresholds_and_switches_come_from_the_config() -> None:
    short = "The cat and the dog sat with the owner."
    relaxed = QualityConfig.model_validate({"gopher": {"min_words": 5}})
    assert reasons([short], relaxed) == [(None, None)]
    off = QualityConfig.model_validate({"gopher": {"enabled": False}})
    assert reasons([short], off) == [(None, None)]
    german = QualityConfig.model_validate({"gopher": {"min_words": 3,
                                                      "stop_words": ["der", "die", "und"]}})
    assert reasons(["Der Hund und die Katze schlafen."], german) == [(None, None)]
    assert reasons([short], german)[0][0] == "gopher_min_stop_words"


def test_ingest_excludes_logs_and_counts_by_filter(tmp_path: Path) -> None:
    docs = [CLEAN + f" Item {i}." for i in range(30)] + ["The cat and the dog sat."] * 3 + [
        BULLETS]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    out = tmp_path / "out"
    out.mkdir()
    config = IngestConfig(sources=[{"name": "a", "path": str(tmp_path / "a.jsonl")}],
                          min_kept_docs=1, eval_fraction=0.2,
                          # the 30 clean ones are near-copies, and overlap the held-out ones
                          near_dup={"enabled": False}, decontamination={"enabled": False})
    counts = ingest.run(config, {}, out).counts
    assert counts["docs_in"] == 34 == counts["kept"] + counts["excluded"]
    assert counts["excluded_gopher_min_words"] == 3  # filtered before dedup: all three
    assert counts["excluded_gopher_max_bullet_lines"] == 1 and counts["kept"] == 30
    log = pq.read_table(out / "excluded.parquet").to_pylist()
    assert sorted(r["reason"] for r in log) == ["gopher_max_bullet_lines"] + [
        "gopher_min_words"] * 3
    assert all(r["text"] and r["detail"] for r in log)
