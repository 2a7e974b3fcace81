"""Precision and recall of PII redaction (``ingest/pii.py``) on a labelled set built from real
text: sentences of the sample corpora carry identifiers inserted after a cue ("Contact:",
"MRN:", ...), and hard negatives that look like identifiers but are not (Luhn-invalid card
numbers, never-issued SSNs, ICD codes, version numbers, dates with no person).

    entity        found when its text is gone and the output has one more placeholder of
                  its type than the carrier sentence alone: a true positive, else a miss
    hard negative a false positive when its text does not survive
    carrier       every placeholder the redactor puts into a bare corpus sentence is a
                  false positive (sentences with '@', 'http' or 'www.' are not used, so the
                  corpus itself holds no identifiers we know of)

    python -m bench.pii --samples /tmp/demo_work/samples [--n 2000]
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections import Counter
from pathlib import Path

from pipeline.ingest import pii

CARRIERS = ("medical/hpo.jsonl", "medical/icd10cm.jsonl", "medical/healthnews.jsonl",
            "finance/bbc_business.jsonl", "general/news.jsonl")
FIRST = ["john", "maria", "wei", "fatima", "olga", "raj", "ana", "peter", "lena", "kwame"]
LAST = ["smith", "garcia", "chen", "khan", "ivanova", "patel", "silva", "muller", "berg", "mensah"]
DOMAINS = ["example.com", "mail.example.org", "hospital-group.net", "uni.ac.uk", "bank.de"]
MONTHS = ["January", "Feb", "March", "Apr.", "June", "Sept", "October", "Dec"]
IBAN_LAYOUT = {"DE": "9" * 18, "GB": "AAAA" + "9" * 14, "FR": "9" * 23, "NL": "AAAA" + "9" * 10,
               "IT": "A" + "9" * 22}  # A: a letter, 9: a digit (ES has inner check digits)


def _luhn_complete(rng: random.Random, prefix: str, length: int) -> str:
    body = prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix) - 1))
    for check in "0123456789":
        if pii.luhn.is_valid(body + check):
            return body + check
    raise AssertionError("unreachable")


def _group(digits: str, sizes: tuple[int, ...], sep: str) -> str:
    out, i = [], 0
    for size in sizes:
        out.append(digits[i:i + size])
        i += size
    return sep.join(out)


def _iban(rng: random.Random) -> str:
    country = rng.choice(sorted(IBAN_LAYOUT))
    bban = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ" if c == "A" else "0123456789")
                   for c in IBAN_LAYOUT[country])
    numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
    iban = f"{country}{98 - int(numeric) % 97:02d}{bban}"
    assert pii.iban.is_valid(iban)
    return " ".join(iban[i:i + 4] for i in range(0, len(iban), 4)) if rng.random() < 0.6 else iban


def _date(rng: random.Random) -> str:
    y, m, d = rng.randint(1930, 2024), rng.randint(1, 12), rng.randint(1, 28)
    return rng.choice([f"{m:02d}/{d:02d}/{y}", f"{m}/{d}/{y % 100:02d}", f"{y}-{m:02d}-{d:02d}",
                       f"{rng.choice(MONTHS)} {d}, {y}", f"{d} {rng.choice(MONTHS)} {y}"])


def entity(rng: random.Random, kind: str) -> tuple[str, str]:
    """(text to insert including its cue, the identifier itself)."""
    name = f"{rng.choice(FIRST)}.{rng.choice(LAST)}"
    if kind == "email":
        value = f"{name}{rng.choice(['', '', str(rng.randint(1, 99)), '+news'])}@" \
                f"{rng.choice(DOMAINS)}"
        value = rng.choice([value, value, value, value.upper(),
                            value.replace("@", " [at] ")])  # obfuscated: not caught
        return rng.choice(["Contact: ", "email ", "write to ", "(", "cc "]) + value, value
    if kind == "phone":
        a, b, c = rng.randint(201, 989), rng.randint(200, 999), rng.randint(0, 9999)
        value = rng.choice([f"({a}) {b}-{c:04d}", f"{a}-{b}-{c:04d}", f"{a}.{b}.{c:04d}",
                            f"+1 {a} {b} {c:04d}", f"+44 20 {rng.randint(7000, 8999)} {c:04d}",
                            f"+49 30 {rng.randint(1000000, 9999999)}", f"{a} {b} {c:04d}",
                            f"1-800-{b}-{c:04d}", f"{a}{b}{c:04d}"])  # digits only: not caught
        return rng.choice(["Tel: ", "call ", "phone ", "fax: ", "ring "]) + value, value
    if kind == "ip":
        value = rng.choice([".".join(str(rng.randint(1, 254)) for _ in range(4)),
                            ".".join(str(rng.randint(1, 254)) for _ in range(4)) + ":8080",
                            ":".join(f"{rng.randint(0, 65535):x}" for _ in range(8)),
                            f"2001:db8::{rng.randint(1, 65535):x}:{rng.randint(1, 65535):x}"])
        return rng.choice(["from ", "host ", "client IP ", "server at "]) + value, value
    if kind == "credit_card":
        digits = rng.choice([_luhn_complete(rng, "4", 16), _luhn_complete(rng, "5" + str(
            rng.randint(1, 5)), 16), _luhn_complete(rng, "37", 15)])
        sizes = (4, 6, 5) if len(digits) == 15 else (4, 4, 4, 4)
        value = _group(digits, sizes, rng.choice([" ", "-", ""]))
        return rng.choice(["card ", "Visa ", "charged to ", "card number: "]) + value, value
    if kind == "iban":
        value = _iban(rng)
        return rng.choice(["IBAN ", "pay to ", "account: "]) + value, value
    if kind == "ssn":
        value = f"{rng.randint(1, 665):03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"
        return rng.choice(["SSN ", "social security number ", "SSN: "]) + value, value
    if kind == "url":
        value = rng.choice(["https://", "http://", "www.", ""]) + \
            f"{rng.choice(DOMAINS)}/{rng.choice(LAST)}?id={rng.randint(1, 99999)}"
        return rng.choice(["see ", "portal: ", "results at "]) + value, value
    if kind == "mrn":
        value = rng.choice([str(rng.randint(10**6, 10**9)), f"MR{rng.randint(10**5, 10**7)}",
                            f"{rng.randint(100, 999)}-{rng.randint(10**4, 10**5)}"])
        return rng.choice(["MRN: ", "MRN ", "medical record number ", "patient ID: ",
                           "chart #"]) + value, value
    if kind == "person_date":
        value = rng.choice([_date(rng), _date(rng), f"{rng.randint(1, 12)}-{rng.randint(1, 28)}-"
                            f"{rng.randint(30, 99)}"])
        return rng.choice(["DOB: ", "date of birth ", "born on ", "admitted on ",
                           "discharged ", "died on "]) + value, value
    raise ValueError(kind)


def hard_negative(rng: random.Random) -> str:
    """Text that looks like an identifier and is not one."""
    digits = _luhn_complete(rng, "4", 16)
    bad_card = digits[:-1] + str((int(digits[-1]) + 1) % 10)
    return rng.choice([
        f"order {_group(bad_card, (4, 4, 4, 4), ' ')}",
        f"ref {rng.choice(['000', '666', '912'])}-{rng.randint(10, 99)}-{rng.randint(1000, 9999)}",
        f"ICD-10 E{rng.randint(10, 14)}.{rng.randint(0, 9)}",
        f"version {rng.randint(1, 9)}.{rng.randint(0, 20)}.{rng.randint(0, 99)}",
        f"{rng.randint(1, 500)} mg twice daily",
        f"in the {rng.randint(1990, 2023)}-{rng.randint(24, 30)} season",
        f"on {_date(rng)} the agency published",
        f"at {rng.randint(1, 12)}:{rng.randint(10, 59)} pm",
        f"ISBN 978-{rng.randint(0, 9)}-{rng.randint(10, 99)}-{rng.randint(100000, 999999)}-"
        f"{rng.randint(0, 9)}",
        f"up {rng.randint(1, 9)}.{rng.randint(0, 9)}% to "
        f"{rng.randint(100, 999)}.{rng.randint(10, 99)}",
        f"case No. {rng.randint(10, 24)}-{rng.randint(1000, 9999)}",
        f"ZIP {rng.randint(10000, 99999)}-{rng.randint(1000, 9999)}",
    ])


def sentences(samples: Path, rng: random.Random, n: int) -> list[str]:
    pool = []
    for rel in CARRIERS:
        with open(samples / rel) as fh:
            texts = [json.loads(line)["text"] for line in fh]
        for text in rng.sample(texts, min(len(texts), 4 * n // len(CARRIERS))):
            for s in re.split(r"(?<=[.!?])\s+", text):
                if 40 <= len(s) <= 400 and not re.search(r"@|http|www\.", s):
                    pool.append(s)
                    break
    return rng.sample(pool, min(n, len(pool)))


def labelled_set(samples: Path, n: int = 2000, seed: int = 0) -> list[dict]:
    """``n`` rows: a real carrier sentence, plus (most rows) one identifier of a random type and
    (a third of rows) one hard negative, each inserted at a word boundary."""
    rng = random.Random(seed)
    rows = []
    for i, carrier in enumerate(sentences(samples, rng, n)):
        words = carrier.split(" ")
        row = {"carrier": carrier, "entity": None, "type": None, "negative": None}
        inserts = []
        if i % 5 != 0:  # every fifth row holds no identifier
            row["type"] = pii.PII_TYPES[i % len(pii.PII_TYPES)]
            text, row["entity"] = entity(rng, row["type"])
            inserts.append(text)
        if i % 3 == 0:
            row["negative"] = hard_negative(rng)
            inserts.append(row["negative"])
        for text in inserts:
            at = rng.randint(0, len(words))
            words[at:at] = [text + ("," if at < len(words) else ".")]
        row["text"] = " ".join(words)
        rows.append(row)
    return rows


def placeholders(text: str) -> Counter:
    names = {f"<{t.upper()}>": t for t in pii.PII_TYPES}
    return Counter(names[m] for m in re.findall(r"<[A-Z_]+>", text) if m in names)


def score(rows: list[dict], redact) -> dict[str, dict[str, float]]:
    """Per type and overall: tp, fp, fn, precision, recall. ``redact(texts) -> texts``."""
    outs = redact([r["text"] for r in rows])
    bare = redact([r["carrier"] for r in rows])
    tally: dict[str, Counter] = {t: Counter() for t in pii.PII_TYPES}
    for row, out, carrier_out in zip(rows, outs, bare, strict=True):
        found = placeholders(out) - placeholders(row["carrier"])
        for kind, n in placeholders(carrier_out).items():
            tally[kind]["fp"] += n  # the corpus sentence alone got a placeholder
        if row["type"]:
            ok = row["entity"] not in out and found[row["type"]] >= 1
            tally[row["type"]]["tp" if ok else "fn"] += 1
            if ok:
                found[row["type"]] -= 1
        # Anything else redacted (a hard negative, part of a missed identifier) is wrong.
        for kind, n in (found - placeholders(carrier_out)).items():
            tally[kind]["fp"] += n
    result = {}
    for kind, c in [*tally.items(), ("all", sum(tally.values(), Counter()))]:
        tp, fp, fn = c["tp"], c["fp"], c["fn"]
        result[kind] = {"tp": tp, "fp": fp, "fn": fn,
                        "precision": tp / (tp + fp) if tp + fp else 1.0,
                        "recall": tp / (tp + fn) if tp + fn else 1.0}
    return result


def ours(texts: list[str]) -> list[str]:
    import duckdb
    import pyarrow as pa

    from pipeline.config import PiiConfig

    con = duckdb.connect()
    con.register("t0", pa.table({"ord": list(range(len(texts))), "text": texts}))
    con.execute("CREATE TABLE t AS SELECT * FROM t0")
    pii.redact(con, "t", PiiConfig(types=list(pii.PII_TYPES)))
    return [r[0] for r in con.execute("SELECT text FROM t ORDER BY ord").fetchall()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=Path, required=True,
                        help="a samples directory from `dapt samples build`")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show", action="store_true", help="print the misses and false alarms")
    args = parser.parse_args()
    rows = labelled_set(args.samples, args.n, args.seed)
    result = score(rows, ours)
    if args.show:
        for row, out in zip(rows, ours([r["text"] for r in rows]), strict=True):
            if row["entity"] and row["entity"] in out or row["negative"] and \
                    row["negative"] not in out or not row["entity"] and "<" in out:
                print(f"- {row['type']}: {row['entity']!r} / {row['negative']!r}\n  {out}")
    print(f"{len(rows)} sentences, {sum(1 for r in rows if r['type'])} identifiers, "
          f"{sum(1 for r in rows if r['negative'])} hard negatives")
    print(f"{'type':<12} {'tp':>5} {'fp':>4} {'fn':>4} {'precision':>9} {'recall':>7}")
    for kind, m in result.items():
        print(f"{kind:<12} {m['tp']:>5} {m['fp']:>4} {m['fn']:>4} {m['precision']:>9.3f} "
              f"{m['recall']:>7.3f}")


if __name__ == "__main__":
    main()
