"""PII redaction: literal strings per type (and the look-alikes it must leave), RE2 (DuckDB) and
Python agreeing, precision/recall on the labelled set built from the real sample corpora, and
the ingest stage's modification log."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import ingest
from pipeline.config import IngestConfig, PiiConfig
from pipeline.ingest import pii

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.pii import labelled_set, ours, score  # noqa: E402

ALL = list(pii.PII_TYPES)

CASES = [
    ("Write to Jane.Roe+lists@mail.example.org today.", "Write to <EMAIL> today.", "email"),
    ("Call (555) 234-5678 or 555.234.5678.", "Call <PHONE> or <PHONE>.", "phone"),
    ("Hotline 1-800-555-0199.", "Hotline <PHONE>.", "phone"),
    ("Tel +44 20 7946 0958.", "Tel <PHONE>.", "phone"),
    ("from 192.168.10.4 and 2001:db8::8a2e:370:7334", "from <IP> and <IP>", "ip"),
    ("paid with 4111 1111 1111 1111.", "paid with <CREDIT_CARD>.", "credit_card"),
    ("Amex 3782-822463-10005", "Amex <CREDIT_CARD>", "credit_card"),
    ("IBAN DE89 3704 0044 0532 0130 00 please", "IBAN <IBAN> please", "iban"),
    ("IBAN GB82WEST12345698765432.", "IBAN <IBAN>.", "iban"),
    ("SSN 123-45-6789.", "SSN <SSN>.", "ssn"),
    ("see https://example.org/a?b=1.", "see <URL>.", "url"),
    ("MRN: 00482913, chart #A-123456", "MRN: <MRN>, chart #<MRN>", "mrn"),
    ("DOB: 03/14/1962; admitted on March 3, 2021.",
     "DOB: <PERSON_DATE>; admitted on <PERSON_DATE>.", "person_date"),
]

UNTOUCHED = [
    "order 4111 1111 1111 1112",  # fails Luhn
    "ISBN 978-3-16-148410-0 and 9780306406157",  # Luhn-valid ISBN: no card issuer prefix
    "http://pinterest.com/pin/4111111111111111/",  # an id in a URL (url type off here)
    "SSN 666-12-3456, 000-12-3456, 123-00-4567",  # never issued
    "enzyme activity (EC 3.2.1.50), E. C. 3.2.1.1 and EC:2.3.3.1",  # enzyme numbers
    "ICD-10 E11.9, 2.5 mg, version 1.2.3, the 2019-2020 season, up 2.5% to 1.3",
    "DE89 3704 0044 0532 0130 01",  # wrong IBAN check digits
    "The trial ran from 03/14/1962 to 2021-01-05.",  # dates with no person cue
]


@pytest.mark.parametrize(("text", "expected", "kind"), CASES)
def test_each_type_is_replaced_by_its_placeholder(text: str, expected: str, kind: str) -> None:
    out, counts = pii.redact_text(text, ALL)
    assert out == expected
    assert set(counts) == {kind}


@pytest.mark.parametrize("text", UNTOUCHED)
def test_look_alikes_are_left_alone(text: str) -> None:
    types = [t for t in ALL if t != "url"]
    assert pii.redact_text(text, types) == (text, {})


def test_policy_selects_types() -> None:
    text = "mail a@b.com, call 555-234-5678, see www.example.com/x"
    assert pii.redact_text(text, ["email"]) == (
        "mail <EMAIL>, call 555-234-5678, see www.example.com/x", {"email": 1})


def test_duckdb_and_python_agree() -> None:
    texts = [t for t, _, _ in CASES] + UNTOUCHED + [
        " ".join(t for t, _, _ in CASES), "no identifiers at all", ""]
    con = duckdb.connect()
    con.register("t0", pa.table({"ord": list(range(len(texts))), "text": texts}))
    con.execute("CREATE TABLE t AS SELECT * FROM t0")
    totals = pii.redact(con, "t", PiiConfig(types=ALL))
    rows = con.execute("SELECT text, pii FROM t ORDER BY ord").fetchall()
    expected = [pii.redact_text(t, ALL) for t in texts]
    assert [r[0] for r in rows] == [e[0] for e in expected]
    assert [dict(r[1] or {}) for r in rows] == [e[1] for e in expected]
    assert totals == {k: sum(e[1].get(k, 0) for e in expected) for k in ALL
                      if any(k in e[1] for e in expected)}


def test_precision_and_recall_on_labelled_real_text(samples_dir: Path) -> None:
    """bench/pii.py's set: identifiers inserted into real corpus sentences, plus hard negatives.
    Measured: precision 1.000, recall 0.959 (seed 0); the misses are the formats documented as
    out of reach (obfuscated emails, phone numbers written as bare digits)."""
    rows = labelled_set(samples_dir, n=1000, seed=0)
    result = score(rows, ours)
    assert result["all"]["tp"] + result["all"]["fn"] == sum(1 for r in rows if r["type"])
    assert result["all"]["precision"] >= 0.99
    assert result["all"]["recall"] >= 0.93
    for kind in ("iban", "credit_card", "ssn", "url", "mrn", "person_date", "ip"):
        assert result[kind]["recall"] >= 0.98, (kind, result[kind])
    missed = [r["entity"] for r, out in zip(rows, ours([r["text"] for r in rows]), strict=True)
              if r["entity"] and r["entity"] in out]
    assert missed and all(" [at] " in m or m.isdigit() for m in missed)


def test_ingest_redacts_repairs_and_logs_every_change(tmp_path: Path) -> None:
    docs = [
        {"id": "1", "text": "Reach the clinic at 555-234-5678 or front.desk@clinic.example.com "
                            "for the results of the test."},
        {"id": "2", "text": "The patient doesnâ€™t report pain after the procedure at the cafÃ©."},
        {"id": "3", "text": "A plain sentence about anatomy that needs no change at all."},
        {"id": "4", "text": "short 555-234-5678"},  # excluded (too short): its log is redacted
    ]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    out = tmp_path / "out"
    out.mkdir()
    config = IngestConfig(
        sources=[{"name": "a", "path": str(tmp_path / "a.jsonl"), "id_field": "id"}],
        min_kept_docs=1, eval_fraction=0.49, min_chars=25,
        quality={"gopher": {"enabled": False}, "repetition": {"enabled": False}},
        near_dup={"enabled": False}, decontamination={"enabled": False})
    counts = ingest.run(config, {}, out).counts
    kept = {r["doc_id"]: r["text"] for name in ("train-00000.parquet", "eval.parquet")
            for r in pq.read_table(out / name).to_pylist()}
    assert kept["a:1"] == ("Reach the clinic at <PHONE> or <EMAIL> for the results of the "
                           "test.")
    assert kept["a:2"] == "The patient doesn’t report pain after the procedure at the café."
    [excluded] = pq.read_table(out / "excluded.parquet").to_pylist()
    assert (excluded["doc_id"], excluded["stage"], excluded["reason"], excluded["text"]) == (
        "a:4", "length", "too_short", "short <PHONE>")
    modified = pq.read_table(out / "modified.parquet").to_pylist()
    assert [(m["doc_id"], m["stage"], m["reason"], m["detail"]) for m in modified] == [
        ("a:1", "pii", "pii_redacted", "email 1, phone 1"),
        ("a:2", "normalise", "mojibake_repaired", "ftfy re-decoded the text"),
        ("a:4", "pii", "pii_redacted", "phone 1")]
    assert (counts["pii_docs"], counts["pii_phone"], counts["pii_email"],
            counts["mojibake_repaired"]) == (2, 2, 1, 1)
    assert counts["docs_in"] == counts["kept"] + counts["excluded"] == 4


def test_ingest_with_pii_and_mojibake_off_changes_nothing(tmp_path: Path) -> None:
    texts = [f"Call 555-234-5678 about cafÃ© order {i}, which is long enough to keep."
             for i in range(8)]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    out = tmp_path / "out"
    out.mkdir()
    config = IngestConfig(
        sources=[{"name": "a", "path": str(tmp_path / "a.jsonl")}], min_kept_docs=1,
        eval_fraction=0.49, fix_mojibake=False, pii={"enabled": False},
        quality={"gopher": {"enabled": False}, "repetition": {"enabled": False}},
        near_dup={"enabled": False}, decontamination={"enabled": False})
    counts = ingest.run(config, {}, out).counts
    rows = [r for name in ("train-00000.parquet", "eval.parquet")
            for r in pq.read_table(out / name).to_pylist()]
    assert sorted(r["text"] for r in rows) == texts
    assert pq.read_table(out / "modified.parquet").num_rows == 0
    assert counts["pii_docs"] == counts["mojibake_repaired"] == 0
