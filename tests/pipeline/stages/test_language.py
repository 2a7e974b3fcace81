"""Language identification: lingua on literal sentences, the allowed-language test, the short
documents it leaves unjudged, and the ingest stage's exclusions and counts."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from pipeline.config import IngestConfig, LanguageConfig
from pipeline.stages import ingest
from pipeline.stages.ingest import language

TEXTS = {
    "en": "The committee reviewed the annual report and approved the budget for next year.",
    "de": "Der Ausschuss hat den Jahresbericht geprüft und den Haushalt für das nächste Jahr "
          "genehmigt.",
    "fr": "Le comité a examiné le rapport annuel et a approuvé le budget de l'année prochaine.",
    "es": "El comité revisó el informe anual y aprobó el presupuesto para el próximo año.",
    "ja": "委員会は年次報告書を審査し、来年度の予算を承認した。議長は会議の後で記者団に対し、"
          "結果に満足していると述べた。",
}


def test_detects_each_language() -> None:
    assert language.detect(list(TEXTS.values()), LanguageConfig()) == list(TEXTS)


def test_short_medical_english_is_still_english() -> None:
    """The reason for 'most likely language' over a confidence threshold: lingua gives English
    about 0.14 for this HPO definition, yet English is its most likely language."""
    texts = ["Hypoplasia of the uterus: Underdevelopment of the uterus.",
             "Type 2 diabetes mellitus with diabetic chronic kidney disease"]
    assert language.detect(texts, LanguageConfig()) == ["en", "en"]


def test_identify_allows_configured_languages_and_skips_short_text() -> None:
    texts = [*TEXTS.values(), "Kurz."]
    con = duckdb.connect()
    con.register("source", pa.table({"ord": list(range(len(texts))), "text": texts}))
    table, counts = language.identify(con, "source", LanguageConfig(languages=["en", "de"]))
    assert table.to_pylist() == [
        {"ord": 2, "reason": "language", "detail": "detected fr (allowed: en, de)"},
        {"ord": 3, "reason": "language", "detail": "detected es (allowed: en, de)"},
        {"ord": 4, "reason": "language", "detail": "detected ja (allowed: en, de)"}]
    assert counts == {"de": 1, "en": 1, "es": 1, "fr": 1, "ja": 1}  # "Kurz." is not judged


def test_config_rejects_unknown_codes() -> None:
    with pytest.raises(ValidationError, match=r"unknown ISO 639-1 language code\(s\) \['xx'\]"):
        LanguageConfig(languages=["xx"])
    with pytest.raises(ValidationError, match="must be among candidates"):
        LanguageConfig(languages=["en", "fi"], candidates=["en", "de"])


def test_ingest_excludes_other_languages_and_counts_them(tmp_path: Path) -> None:
    docs = [{"id": f"{lang}{i}", "text": f"{text} ({i})"} for lang, text in TEXTS.items()
            for i in range(4)]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    out = tmp_path / "out"
    out.mkdir()
    config = IngestConfig(
        sources=[{"name": "a", "path": str(tmp_path / "a.jsonl"), "id_field": "id"}],
        min_kept_docs=1, eval_fraction=0.3, quality={"gopher": {"enabled": False},
                                                     "repetition": {"enabled": False}},
        near_dup={"enabled": False}, decontamination={"enabled": False})
    counts = ingest.run(config, {}, out).counts
    excluded = pq.read_table(out / "excluded.parquet").to_pylist()
    assert {(r["doc_id"][2:4], r["stage"], r["reason"]) for r in excluded} == {
        ("de", "language", "language"), ("fr", "language", "language"),
        ("es", "language", "language"), ("ja", "language", "language")}
    assert counts["excluded_language"] == 16 and counts["kept"] == 4
    assert (counts["language_en"], counts["language_de"], counts["language_ja"]) == (4, 4, 4)
