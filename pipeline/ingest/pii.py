"""PII redaction as DuckDB passes: each identifier type is a pattern replaced by a typed
placeholder (``<EMAIL>``, ``<PHONE>``, ...), with a count per type and per document.

Types whose matches need a checksum or validity rule (credit cards: Luhn; IBANs: ISO 7064
mod 97; US SSNs: the SSA's never-issued ranges) are checked with ``python-stdnum`` on the
few documents whose text matches the candidate pattern; every other type is one vectorised
``regexp_replace`` (RE2) over the table. Patterns are written so RE2 and Python's ``re``
read them the same way (the tests run both).

Which types apply is the domain's policy (``ingest.pii.types``). The medical domain adds the
HIPAA identifiers a pattern can find: medical record numbers after their cue ("MRN: ..."),
dates tied to a person ("DOB: ...", "admitted on ...": the cue stays, the date goes) and URLs.
Names, addresses and free-text identifiers need a model (e.g. Presidio with a spaCy NER
model) and are not caught here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import duckdb
import pyarrow as pa
from stdnum import iban, luhn
from stdnum.us import ssn

from pipeline.config import PII_TYPES, PiiConfig

__all__ = ["PII_TYPES", "TYPES", "redact", "redact_text"]

MONTH = (r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|"
         r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)\.?")
DATE = (rf"(?:\d{{1,2}}[/.-]\d{{1,2}}[/.-](?:\d{{4}}|\d{{2}})\b|\d{{4}}-\d{{2}}-\d{{2}}\b|"
        rf"{MONTH} \d{{1,2}}(?:st|nd|rd|th)?,? \d{{4}}\b|\d{{1,2}}(?:st|nd|rd|th)? {MONTH},? "
        rf"\d{{4}}\b)")
DATE_CUE = (r"(?i)(\b(?:DOB|D\.O\.B\.|date of birth|birth ?date|born(?: on)?|admitted(?: on)?|"
            r"admission date|discharged(?: on)?|discharge date|died(?: on)?|date of death|"
            r"deceased(?: on)?|date of service|DOS|visit date|seen on)\s*[:#]?\s*)")
MRN_CUE = (r"(?i)(\b(?:MRN|MR#|medical record(?: number| no\.?| #)?|record (?:number|no\.?|#)|"
           r"patient (?:id|number|no\.?)|chart (?:number|no\.?|#))\s*[:#]?\s*)")


@dataclass(frozen=True)
class PiiType:
    name: str  # the config's name for it; the placeholder is <NAME>
    pattern: str  # RE2 and Python re
    replacement: str  # may keep group 1 (a cue) as \1
    valid: Callable[[str], bool] | None = None  # checked per match, in Python

    @property
    def placeholder(self) -> str:
        return f"<{self.name.upper()}>"


# Issuer prefixes and lengths of Visa, Mastercard, Amex, Diners, JCB, Discover and UnionPay: a
# Luhn-valid number that fits none (an ISBN-13 passes Luhn one time in ten) is not a card.
CARD_ISSUER = re.compile(r"(?:4\d{12}(?:\d{3}){0,2}|5[1-5]\d{14}|2[2-7]\d{14}|3[47]\d{13}|"
                         r"3[0689]\d{12,17}|35\d{14,17}|6(?:011|5\d\d|4[4-9]\d|2\d\d)\d{12,15})")


def _digits(text: str) -> str:
    return re.sub(r"\D", "", text)


TYPES: dict[str, PiiType] = {t.name: t for t in (
    # Validated types run first, so that a card number is not taken for a phone number.
    PiiType("iban", r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b", "<IBAN>",
            iban.is_valid),
    # Digits right after '/', '=' or '#' are an id in a URL (a Pinterest pin), not a card.
    PiiType("credit_card", r"[/=#]?\b\d(?:[ -]?\d){12,18}\b", "<CREDIT_CARD>",
            lambda m: m[0] not in "/=#" and bool(CARD_ISSUER.fullmatch(_digits(m)))
            and luhn.is_valid(_digits(m))),
    PiiType("ssn", r"\b\d{3}-\d{2}-\d{4}\b", "<SSN>", ssn.is_valid),
    PiiType("url", r"\b(?:https?://|www\.)[^\s<>\"']*[^\s<>\"'.,;:!?)\]]|\b(?:[A-Za-z0-9-]+\.)+"
            r"(?:com|org|net|edu|gov|io|info|co|uk|de|fr|nl|eu|us|ca|au)/[^\s<>\"']*"
            r"[^\s<>\"'.,;:!?)\]]", "<URL>"),
    PiiType("email", r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b",
            "<EMAIL>"),
    PiiType("mrn", MRN_CUE + r"[A-Z]{0,3}-?\d[\d-]{4,}\d\b", r"\1<MRN>"),
    PiiType("person_date", DATE_CUE + DATE, r"\1<PERSON_DATE>"),
    PiiType("phone", r"(?:\+?1[ .-]?)?(?:\([2-9]\d{2}\) ?|\b[2-9]\d{2}[ .-])[2-9]\d{2}[ .-]\d{4}\b|"
            r"\+[1-9]\d{0,2}[ -]\(?\d{1,4}\)?(?:[ -]\d{2,8}){1,4}\b", "<PHONE>"),
    # "EC 3.2.1.50" is an enzyme number, not an address: matched with its prefix and kept.
    PiiType("ip", r"(?:\bE\.? ?C\.?:? ?)?(?:\b(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}"
            r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\b|\b(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}\b|"
            r"\b(?:[0-9A-Fa-f]{1,4}:){1,6}:(?:[0-9A-Fa-f]{1,4}:){0,5}[0-9A-Fa-f]{1,4}\b)", "<IP>",
            lambda m: not m.startswith("E")),
)}


def redact_text(text: str, types: list[str]) -> tuple[str, dict[str, int]]:
    """The same redaction on one string, in Python (for tests and for the checked types)."""
    counts: dict[str, int] = {}
    for name in ordered(types):
        kind = TYPES[name]
        pattern = re.compile(kind.pattern)
        n = 0

        def sub(m: re.Match, kind: PiiType = kind) -> str:
            nonlocal n
            if kind.valid is not None and not kind.valid(m.group(0)):
                return m.group(0)
            n += 1
            return m.expand(kind.replacement)

        text = pattern.sub(sub, text)
        if n:
            counts[name] = n
    return text, counts


def ordered(types: list[str]) -> list[str]:
    return [name for name in TYPES if name in types]


def redact(con: duckdb.DuckDBPyConnection, table: str, config: PiiConfig) -> dict[str, int]:
    """Redact ``table.text`` (columns ord, text) in place and add a ``pii`` column: a
    ``{type: count}`` map for the documents that changed. Returns the counts per type.

    One scan with every type's pattern as alternatives finds the documents that hold any
    (a few percent, usually); the per-type passes run on those alone."""
    con.execute(f"ALTER TABLE {table} ADD COLUMN pii MAP(VARCHAR, INTEGER)")
    names = ordered(config.types)
    if not names:
        return {}
    any_type = "|".join(f"(?:{TYPES[name].pattern})" for name in names).replace("'", "''")
    con.execute(f"""CREATE OR REPLACE TEMP TABLE pii_docs AS
                    SELECT ord, text, pii FROM {table}
                    WHERE text IS NOT NULL AND regexp_matches(text, '{any_type}')""")
    totals = _redact_types(con, "pii_docs", names)
    con.execute(f"""UPDATE {table} SET text = p.text, pii = p.pii FROM pii_docs p
                    WHERE {table}.ord = p.ord AND p.pii IS NOT NULL;
                    DROP TABLE pii_docs""")
    return totals


def _redact_types(con: duckdb.DuckDBPyConnection, table: str, names: list[str]
                  ) -> dict[str, int]:
    totals: dict[str, int] = {}
    for name in names:
        kind = TYPES[name]
        pattern = kind.pattern.replace("'", "''")
        if kind.valid is None:
            con.execute(f"""
                UPDATE {table} SET
                    pii = map_concat(coalesce(pii, MAP {{}}::MAP(VARCHAR, INTEGER)),
                        MAP {{'{name}': len(regexp_extract_all(text, '{pattern}'))::INTEGER}}),
                    text = regexp_replace(text, '{pattern}', '{kind.replacement}', 'g')
                WHERE regexp_matches(text, '{pattern}')""")
        else:  # Python checks each candidate on the few documents that have one
            rows = con.execute(f"SELECT ord, text FROM {table} "
                               f"WHERE regexp_matches(text, '{pattern}')").fetchall()
            changed = {"ord": [], "text": [], "n": []}
            for ord_, text in rows:
                new, counts = redact_text(text, [name])
                if counts:
                    changed["ord"].append(ord_)
                    changed["text"].append(new)
                    changed["n"].append(counts[name])
            if not changed["ord"]:
                continue
            con.register("pii_changed", pa.table(changed, schema=pa.schema(
                [("ord", pa.int64()), ("text", pa.string()), ("n", pa.int32())])))
            con.execute(f"""
                UPDATE {table} SET text = c.text,
                    pii = map_concat(coalesce(pii, MAP {{}}::MAP(VARCHAR, INTEGER)),
                                     MAP {{'{name}': c.n}})
                FROM pii_changed c WHERE {table}.ord = c.ord""")
            con.unregister("pii_changed")
        total = con.execute(f"SELECT coalesce(sum(pii['{name}']), 0) FROM {table}").fetchall()[0][0]
        if total:
            totals[name] = int(total)
    return totals
