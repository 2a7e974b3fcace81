"""The Gopher quality and repetition filters on literal strings, one failing document per
filter, and through the ingest stage (counts, exclusion log, in = kept + excluded)."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import IngestConfig, QualityConfig
from pipeline.stages import ingest
from pipeline.stages.ingest import quality

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
    con.register("features", quality.features(con, "source", config))
    reason, detail = quality.reason_sql(config)
    return con.sql(f"SELECT {reason}, {detail} FROM features ORDER BY ord").fetchall()


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
                          near_dup={"enabled": False},
                          held_out={"group_by": "id"}, decontamination={"enabled": False})
    counts = ingest.run(config, {}, out).counts
    assert counts["docs_in"] == 34 == counts["kept"] + counts["excluded"]
    assert counts["excluded_gopher_min_words"] == 3  # filtered before dedup: all three
    assert counts["excluded_gopher_max_bullet_lines"] == 1 and counts["kept"] == 30
    log = pq.read_table(out / "excluded.parquet").to_pylist()
    assert sorted(r["reason"] for r in log) == ["gopher_max_bullet_lines"] + [
        "gopher_min_words"] * 3
    assert all(r["text"] and r["detail"] for r in log)


# --- C4 line filters ---------------------------------------------------------------------------

C4_PAGE = "\n".join([
    "Home | News | Contact",  # no terminal punctuation
    "The council approved the new budget on Tuesday after a long debate.",
    "It will fund two schools and a clinic.[1]",  # citation stripped, then kept
    "Enable JavaScript to view this page.",
    "This site uses cookies to improve your experience.",
    "Read our privacy policy.",
    "Ok.",  # fewer than 3 words
    "",
    "Residents welcomed the decision at the meeting.",
    "The mayor said work would start in spring.",
    "Critics warned that costs could rise...",  # an ellipsis is not an ending
    "Officials will publish the full plan next month.",
])


def c4(texts: list[str], **kw) -> list[tuple]:
    from pipeline.config import C4Config

    con = duckdb.connect()
    con.register("source", pa.table({"ord": list(range(len(texts))), "text": texts}))
    return con.sql(f"SELECT c4_text, n_lines, n_kept, reason, detail FROM "
                   f"({quality.c4_sql(C4Config(enabled=True, **kw))}) ORDER BY ord").fetchall()


def test_c4_removes_failing_lines_and_keeps_paragraphs() -> None:
    [(text, n_lines, n_kept, reason, _)] = c4([C4_PAGE])
    assert text == ("The council approved the new budget on Tuesday after a long debate.\n"
                    "It will fund two schools and a clinic.\n\n"
                    "Residents welcomed the decision at the meeting.\n"
                    "The mayor said work would start in spring.\n"
                    "Officials will publish the full plan next month.")
    assert (n_lines, n_kept, reason) == (11, 5, None)


def test_c4_document_reasons() -> None:
    rows = c4([C4_PAGE + "\nLorem ipsum dolor sit amet.", C4_PAGE + "\nvar x = {a: 1};",
               "One sentence here. Two sentences here.", C4_PAGE])
    assert [r[3] for r in rows] == ["c4_lorem_ipsum", "c4_curly_bracket", "c4_min_sentences",
                                    None]
    assert rows[2][4] == "2 sentences left < 5"
    relaxed = c4([C4_PAGE], terminal_punctuation=False, policy_lines=False,
                 javascript_lines=False, min_words_per_line=None)
    assert relaxed[0][2] == 11 and "[1]" not in relaxed[0][0]
    [long_word] = c4([C4_PAGE + "\nThis line holds " + "y" * 1001 + " in it."])
    assert long_word[1:3] == (12, 5)


def test_c4_through_ingest_logs_removed_lines(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text("".join(
        json.dumps({"id": str(i), "text": C4_PAGE.replace("Tuesday", f"day {i}")}) + "\n"
        for i in range(6)))
    out = tmp_path / "out"
    out.mkdir()
    config = IngestConfig(
        sources=[{"name": "a", "path": str(tmp_path / "a.jsonl"), "id_field": "id"}],
        min_kept_docs=1, eval_fraction=0.4, near_dup={"enabled": False},
        held_out={"group_by": "id"},
        decontamination={"enabled": False}, pii={"enabled": False},
        quality={"c4": {"enabled": True}, "gopher": {"enabled": False},
                 "repetition": {"enabled": False}})
    counts = ingest.run(config, {}, out).counts
    modified = pq.read_table(out / "modified.parquet").to_pylist()
    assert {(m["stage"], m["reason"], m["detail"]) for m in modified} == {
        ("quality", "c4_lines_removed", "removed 6 of 11 lines")}
    assert len(modified) == counts["kept"] == 6
    kept = [r["text"] for n in ("train-00000.parquet", "eval.parquet")
            for r in pq.read_table(out / n).to_pylist()]
    assert all("cookies" not in t and t.endswith("next month.") for t in kept)


# --- n-gram repetition -------------------------------------------------------------------------


def ngram(texts: list[str], **repetition) -> list[tuple]:
    from pipeline.config import RepetitionConfig

    con = duckdb.connect()
    con.register("source", pa.table({"ord": list(range(len(texts))), "text": texts}))
    out = quality.ngram_repetition(con, "source", RepetitionConfig(**repetition))
    found = {r["ord"]: (r["reason"], r["detail"]) for r in out.to_pylist()}
    return [found.get(i, (None, None)) for i in range(len(texts))]


def test_top_ngram_share() -> None:
    # "of the" 10 times: 50 word characters of 180 = 0.278 > 0.2; each 3-gram is rarer
    text = " ".join(f"word{i:02d} of the" for i in range(10)) + " " + " ".join(
        f"other{i:02d}" for i in range(10))
    assert ngram([text, CLEAN]) == [
        ("repetition_top_2gram", "top_2gram_chars 0.2778 > 0.2"), (None, None)]
    assert ngram([text], max_top_ngram_chars={2: 0.3}) == [(None, None)]


def test_duplicate_ngram_share_and_order() -> None:
    sentence = "the quick brown fox jumps over the lazy dog near the river bank today"
    repeated = CLEAN + " " + " ".join([sentence] * 3)
    [(reason, detail)] = ngram([repeated], max_top_ngram_chars=None)
    assert reason == "repetition_dup_5gram" and detail.startswith("dup_5gram_chars 0.")
    # with n = 5 off, the next threshold that fails names it
    [(reason, _)] = ngram([repeated], max_top_ngram_chars=None,
                          max_duplicate_ngram_chars={7: 0.13, 10: 0.1})
    assert reason == "repetition_dup_7gram"
    # characters covered by repeated 5-grams, worked by hand: two copies of 8 words in 24
    doc = " ".join(["alpha beta gamma delta epsilon zeta eta theta"] * 2 + [
        f"w{i:03d}" for i in range(8)])
    [(reason, detail)] = ngram([doc], max_top_ngram_chars=None,
                               max_duplicate_ngram_chars={5: 0.5})
    covered = 2 * len("alphabetagammadeltaepsilonzetaetatheta")
    share = covered / (covered + 8 * 4)
    assert (reason, detail) == ("repetition_dup_5gram", f"dup_5gram_chars {share:.4f} > 0.5")


def test_ngram_filters_pass_clean_text_and_switch_off() -> None:
    assert ngram([CLEAN]) == [(None, None)]
    [(reason, _)] = ngram([CLEAN + " " + CLEAN])  # the whole text twice
    assert reason == "repetition_dup_5gram"
    assert ngram([" ".join(["spam eggs"] * 40)], enabled=False) == [(None, None)]
