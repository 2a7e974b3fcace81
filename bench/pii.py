"""Precision and recall of PII redaction, dapt (``pipeline/stages/ingest/pii.py``) beside
Presidio with its default recognisers, on one labelled set (``bench/pii_evalset.py``, written
apart from the patterns), and the throughput of the pattern-only step against the step with NER.

Scoring, per type and overall:

    planted identifier  found (tp) when no part of it (no 4+ character word of it) survives and
                        the output has a new placeholder of its type; else a miss (fn)
    anything else       every other new placeholder (a hard negative, a part of the carrier
                        sentence) is a false positive (fp) of its type
    carrier sentence    what a system finds in the bare corpus sentence is subtracted first;
                        for the pattern types it is also counted as fp (the sentences hold no
                        identifiers we know of: those with '@', 'http' or 'www.' are not used),
                        for person and location only on technical prose (news sentences name
                        real people and places, unlabelled; package documentation without its
                        attribution lines names products, tools and vendors)

Presidio's entities are mapped onto dapt's types (EMAIL_ADDRESS -> email, DATE_TIME ->
person_date, ...); one with no counterpart (NRP, US_DRIVER_LICENSE, ...) is ``other``.

    python -m bench.pii --samples DIR [--seed 1] [--n 2000] [--mb 1] [--baseline COMMIT] [--show]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from collections import Counter
from pathlib import Path

from bench.pii_evalset import DEV_SEED, TEST_SEED, TYPES, labelled_set
from pipeline.config import PiiConfig
from pipeline.stages.ingest import ner, pii

NER = ("person", "location")
PRESIDIO_TYPES = {"EMAIL_ADDRESS": "email", "PHONE_NUMBER": "phone", "IP_ADDRESS": "ip",
                  "CREDIT_CARD": "credit_card", "IBAN_CODE": "iban", "US_SSN": "ssn",
                  "URL": "url", "DATE_TIME": "person_date", "PERSON": "person",
                  "LOCATION": "location", "MEDICAL_LICENSE": "mrn"}
ROWS = (*TYPES, "other")


def placeholders(text: str) -> Counter:
    names = {t.upper(): t for t in ROWS}
    return Counter(names[m] for m in re.findall(r"<([A-Z_]+?)(?:_[0-9a-f]{8})?>", text)
                   if m in names)


def _gone(entity: str, out: str, context: str) -> bool:
    words = [w for w in re.findall(r"\w{4,}", entity) if w not in context]
    return entity not in out and not any(re.search(rf"\b{re.escape(w)}\b", out) for w in words)


def score(rows: list[dict], outs: list[str], bare: list[str]) -> dict[str, dict[str, float]]:
    """Per type and overall: tp, fp, fn, precision, recall."""
    tally: dict[str, Counter] = {t: Counter() for t in ROWS}
    for row, out, carrier_out in zip(rows, outs, bare, strict=True):
        before = placeholders(carrier_out)
        for kind, n in before.items():
            if kind not in NER or row.get("technical"):
                tally[kind]["fp"] += n
        found = placeholders(out) - before
        if row["type"]:
            context = row["text"].replace(row["entity"], " ")  # its cue, the carrier, ...
            ok = _gone(row["entity"], out, context) and found[row["type"]] >= 1
            tally[row["type"]]["tp" if ok else "fn"] += 1
            if ok:
                found[row["type"]] -= 1
        for kind, n in found.items():
            tally[kind]["fp"] += n
    result = {}
    for kind, c in [*tally.items(), ("all", sum(tally.values(), Counter()))]:
        tp, fp, fn = c["tp"], c["fp"], c["fn"]
        result[kind] = {"tp": tp, "fp": fp, "fn": fn,
                        "precision": tp / (tp + fp) if tp + fp else 1.0,
                        "recall": tp / (tp + fn) if tp + fn else 1.0}
    return result


def dapt_config(types: tuple[str, ...] = TYPES) -> PiiConfig:
    # who.int stands for a public reference site a domain would list in url_keep.
    return PiiConfig(types=list(types), url_keep=["who.int"])


def ours(texts: list[str], config: PiiConfig | None = None) -> list[str]:
    """dapt's ingest pass (DuckDB, then Python on the candidates) over ``texts``."""
    import duckdb
    import pyarrow as pa

    con = duckdb.connect()
    con.register("t0", pa.table({"ord": list(range(len(texts))), "text": texts}))
    con.execute("CREATE TABLE t AS SELECT * FROM t0")
    pii.redact(con, "t", config or dapt_config())
    return [r[0] for r in con.execute("SELECT text FROM t ORDER BY ord").fetchall()]


def presidio(texts: list[str]) -> list[str]:
    """Presidio 2.2 with its default recognisers (over the same spaCy model), every entity
    replaced by ``<TYPE>``."""
    import tldextract.tldextract as tld
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import SpacyNlpEngine
    from presidio_anonymizer import AnonymizerEngine
    from presidio_anonymizer.entities import OperatorConfig

    tld.TLD_EXTRACTOR = tld.TLDExtract(suffix_list_urls=(), cache_dir=None)  # offline
    engine = SpacyNlpEngine(models=[{"lang_code": "en", "model_name": pii.SPACY_MODEL}])
    engine.load()
    analyzer, anonymizer = AnalyzerEngine(nlp_engine=engine), AnonymizerEngine()
    operators = {e: OperatorConfig("replace", {"new_value": f"<{t.upper()}>"})
                 for e, t in PRESIDIO_TYPES.items()}
    operators["DEFAULT"] = OperatorConfig("replace", {"new_value": "<OTHER>"})
    out = []
    for text in texts:
        found = analyzer.analyze(text, language="en")
        out.append(anonymizer.anonymize(text, found, operators).text)
    return out


def medical_texts(samples: Path, mb: float) -> tuple[list[str], int]:
    """The first ``mb`` MB of the medical corpora, one document of each in turn."""
    texts, size = [], 0
    # split on "\n" only: str.splitlines() also splits at U+2028 inside a JSON string
    corpora = [[line for line in (samples / f"medical/{n}.jsonl").read_text().split("\n") if line]
               for n in ("healthnews", "hpo", "icd10cm")]
    for lines in zip(*corpora, strict=False):
        if size >= mb * 1e6:
            break
        for line in lines:
            texts.append(json.loads(line)["text"])
            size += len(texts[-1].encode())
    return texts, size


def _cpu_seconds() -> float:
    """CPU time of this process and its live children (the NER workers)."""
    import psutil

    me = psutil.Process()
    procs = [me, *me.children(recursive=True)]
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            continue
    return total


BASELINE = """
import json, sys, time
import duckdb, pyarrow as pa
from pipeline.config import PiiConfig
from pipeline.stages.ingest import ner, pii
texts, types = json.load(open(sys.argv[1])), sys.argv[2].split(",")
def run(texts):
    con = duckdb.connect()
    con.register("t0", pa.table({"ord": list(range(len(texts))), "text": texts}))
    con.execute("CREATE TABLE t AS SELECT * FROM t0")
    pii.redact(con, "t", PiiConfig(types=types))
run(texts[:50])
start = time.perf_counter()
run(texts)
print(time.perf_counter() - start)
"""


def baseline_seconds(commit: str, texts: list[str], types: list[str]) -> tuple[float, float]:
    """(seconds, CPU seconds) of ``redact()`` of ``pipeline/`` as it was at ``commit`` (its
    shared-model NER path), in a subprocess over the same texts; the CPU seconds include its
    model load and warm-up."""
    import resource
    import subprocess
    import sys
    import tempfile

    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "-C", str(root), "archive", commit, "pipeline"],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        (Path(tmp) / "texts.json").write_text(json.dumps(texts))
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = subprocess.run([sys.executable, "-c", BASELINE, str(Path(tmp) / "texts.json"),
                              ",".join(types)], env={**os.environ, "PYTHONPATH": tmp},
                             check=True, capture_output=True, text=True).stdout
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return float(out.split()[-1]), cpu


def throughput(samples: Path, mb: float, baseline: str | None
               ) -> list[tuple[str, float, float, float, float]]:
    """(what, seconds, MB/s, cores busy, CPU seconds) of ``redact()`` on the first ``mb`` MB of
    the medical corpora: the pattern types, then with NER, on every core and on one, and
    (``baseline``) the code of that commit. Cores busy is CPU seconds over wall seconds: on a
    shared machine it shows how much of the machine the run got."""
    texts, size = medical_texts(samples, mb)
    medical = ["email", "phone", "ip", "credit_card", "iban", "ssn", "url", "mrn",
               "person_date", "address"]
    runs = [("pattern types (medical)", medical, 0),
            ("+ person (NER), workers: all cores", [*medical, "person"], 0),
            ("+ person (NER), 1 worker", [*medical, "person"], 1),
            ("+ person, location (NER), all cores", [*medical, "person", "location"], 0)]
    # Load the model here and in the workers before timing (an ingest run does it once).
    ours(texts[:2000], PiiConfig(types=runs[-1][1]))
    ner.entities(["Warm up the model in this process, for the one-worker row."])
    result = []
    for what, types, workers in runs:
        cpu, start = _cpu_seconds(), time.perf_counter()
        ours(texts, PiiConfig(types=types, ner_workers=workers))
        seconds = time.perf_counter() - start
        cpu = _cpu_seconds() - cpu
        result.append((what, seconds, size / 1e6 / seconds, cpu / seconds, cpu))
    if baseline:
        for what, types in (("+ person (NER)", [*medical, "person"]),):
            seconds, cpu = baseline_seconds(baseline, texts, types)
            result.append((f"{what} at {baseline} (shared model, whole documents; CPU "
                           "includes its model load)", seconds, size / 1e6 / seconds,
                           float("nan"), cpu))
    red = pii.Redactor(PiiConfig(types=[*medical, "person"]))
    docs = [t for t in texts if re.search(pii.NER_PREFILTER, t)]
    spans = [(a, b) for t in docs for a, b in ner.windows(t, red.rules)]
    chars = sum(b - a for a, b in spans)
    in_docs = sum(1 for t in docs if ner.windows(t, red.rules))
    share = chars / sum(map(len, texts))
    result.append((f"person windows: {len(spans)} in {in_docs} of {len(texts)} documents, "
                   f"{share:.1%} of the text", 0.0, 0.0, 0.0, 0.0))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=Path, required=True,
                        help="a samples directory from `dapt samples build`")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=DEV_SEED,
                        help=f"{DEV_SEED}: the dev set; {TEST_SEED}: the reported test set")
    parser.add_argument("--mb", type=float, default=1.0, help="corpus MB for the speed rows")
    parser.add_argument("--no-presidio", action="store_true")
    parser.add_argument("--baseline", default=None, metavar="COMMIT",
                        help="also time redact() of pipeline/ at this commit (e.g. the one "
                        "before NER windows and workers) on the same texts")
    parser.add_argument("--show", action="store_true", help="print dapt's misses and false alarms")
    args = parser.parse_args()
    if args.n:
        evaluate(args)
    if args.mb:
        print("\n| dapt redact() on the medical corpora | seconds | MB/s | cores busy | "
              "CPU seconds |\n|---|---|---|---|---|")
        for what, secs, rate, busy, cpu in throughput(args.samples, args.mb, args.baseline):
            print(f"| {what} | {secs:.1f} | {rate:.3f} | {busy:.2f} | {cpu:.1f} |" if secs else
                  f"| {what} | | | | |")


def evaluate(args: argparse.Namespace) -> None:
    """Precision and recall per type on the labelled set, dapt beside Presidio."""
    rows = labelled_set(args.samples, args.n, args.seed)
    texts, carriers = [r["text"] for r in rows], [r["carrier"] for r in rows]
    systems = {"dapt": ours} if args.no_presidio else {"dapt": ours, "presidio": presidio}
    results, seconds = {}, {}
    for name, run in systems.items():
        start = time.perf_counter()
        outs, bare = run(texts), run(carriers)
        seconds[name] = time.perf_counter() - start
        results[name] = score(rows, outs, bare)
        if args.show and name == "dapt":
            for row, out, b in zip(rows, outs, bare, strict=True):
                found = placeholders(out) - placeholders(b)
                extra = sum(n for k, n in found.items() if k not in NER) - \
                    (1 if row["type"] and row["type"] not in NER else 0)
                if row["entity"] and (row["entity"] in out or not found[row["type"]]) or extra:
                    print(f"- {row['type']}: {row['entity']!r} / {row['negative']!r}\n  "
                          + out.replace("\n", " "))
    print(f"seed {args.seed}: {len(rows)} sentences, {sum(1 for r in rows if r['type'])} "
          f"identifiers, {sum(1 for r in rows if r['negative'])} hard negatives; "
          + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))
    names = list(results)
    print("| type | " + " | ".join(f"{n} P | {n} R | {n} tp/fp/fn" for n in names) + " |")
    print("|---|" + "---|---|---|" * len(names))
    for kind in (*ROWS, "all"):
        cells = []
        for n in names:
            m = results[n][kind]
            cells += [f"{m['precision']:.3f}", f"{m['recall']:.3f}",
                      f"{m['tp']}/{m['fp']}/{m['fn']}"]
        label = f"**{kind}**" if kind == "all" else kind
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
