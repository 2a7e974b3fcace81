"""PII redaction as DuckDB passes: each identifier type is a pattern whose matches become a typed
placeholder (``<EMAIL>``, ``<PHONE>``, ...), with a count per type and per document; names and
places are found by a spaCy NER model through Presidio.

How each type is found:

- Plain patterns (``email``, ``mrn``, ``person_date``, ``address``) are one vectorised
  ``regexp_replace`` (RE2) over the table when their policy is ``redact``.
- Checked types run Python on the few documents whose text matches the candidate pattern:
  credit cards (issuer prefix, Luhn), IBANs (ISO 7064 mod 97), US SSNs (never-issued ranges;
  9 bare digits only after a label), phone numbers (``phonenumbers``: international, North
  American and the national formats of ``PHONE_REGIONS``), IP addresses (``ipaddress``; OIDs,
  versions and the special-purpose ranges in ``KEPT_IPS`` stay), URLs (only a personal one goes:
  a query string, a personal path, a social site or a link shortener, unless its host is in
  ``pii.url_keep``).
- A value's context decides when the value alone cannot: a cue before it ("DOB:", "was born
  on", "Acct #", "Tel.") stays and makes a date, a number or a bare digit run personal, and a
  negative cue ("version", "ISBN", "EC") makes it a look-alike.
- ``person_date`` also takes a date with no cue before it when its sentence tells of a clinical
  event ("admitted on <date> and seen for follow-up on <date>", "On <date> she was
  discharged"): Python, on the documents holding a date.
- ``person`` and ``location`` run a spaCy NER model (``en_core_web_sm`` as packaged on PyPI,
  loaded from the installed package: nothing is downloaded) on candidate windows around
  gazetteer names, titles and places, in worker processes, after the patterns (``ner.py``),
  on the documents inside ``pii.ner_share`` (``ner_share.py``).
  The method, the measured figures and what is not caught: docs/pii.md.

The policy (``ingest.pii.policy``) says what becomes of a found value: ``redact`` (the
placeholder), ``mask`` (every letter and digit becomes ``X``, the layout stays), ``keep``
(the type is not looked for) or ``hash`` (``<PERSON_1f2e3d4c>``: HMAC-SHA256 of the salt and
the normalised value, so a value maps to one token across a corpus and runs). ``mask`` and
``hash`` run in Python on the documents the pattern matches.

Patterns are written so that RE2 and Python's ``re`` read them the same way (the tests run
both on the same texts).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import duckdb
import phonenumbers
import pyarrow as pa
from stdnum import iban, luhn
from stdnum.us import ssn

from pipeline.config import PII_NER_TYPES, PII_TYPES, PiiConfig
from pipeline.stages.ingest import ner, ner_share
from pipeline.stages.ingest.ner import SPACY_MODEL

__all__ = ["KEPT_IPS", "PII_TYPES", "SPACY_MODEL", "TYPES", "Redactor", "redact", "redact_text"]

MONTH = (r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|"
         r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)\.?")
DAY = r"\d{1,2}(?:st|nd|rd|th)?"
DATE = (rf"(?:\d{{1,2}}[/.-]\d{{1,2}}[/.-](?:\d{{4}}|\d{{2}})\b|\d{{4}}[-/.]\d{{1,2}}[-/.]"
        rf"\d{{1,2}}\b|{MONTH} {DAY},? \d{{4}}\b|{DAY}(?: of)? {MONTH},? \d{{4}}\b|"
        rf"\d{{1,2}}-{MONTH}-\d{{2,4}}\b|{MONTH} \d{{4}}\b)")
# A label, or a verb that ties the date to a person ("was admitted to hospital on").
DATE_CUE = (r"(?P<cue>(?i:\b(?:DOB|D\.O\.B\.?|DOD|date of (?:birth|death|admission|"
            r"discharge|service|visit|surgery|injury)|birth ?date|admission date|"
            r"discharge date|visit date|surgery date|DOS|(?:born|admitted|readmitted|"
            r"discharged|died|deceased|passed away|hospitali[sz]ed|examined|operated on|"
            r"vaccinated|diagnosed|married|seen)(?: (?:to|at|in|into|from|by) [\w'. -]{1,40}? "
            r"(?:on|in))?(?:,? on|,? in)?)\s*[:#]?\s*))")
# "MRN", "MRN#", "M.R.N.", "MR No.", "Med. Rec. No.", "Med Rec #", "medical record no.", ...
MRN_CUE = (r"(?P<cue>(?i:\b(?:MRN\b|MR#|M\.R\.N\.?|MR No\.?|med(?:ical|\.)? ?rec(?:ord|\.)?(?: ?"
           r"(?:number|num\.?|no\.?|#))?|(?:record|chart|"
           r"patient|member|encounter|beneficiary|subscriber|insurance|health plan|policy|"
           r"account|acct\.?) ?(?:id|number|no\.?|#)|acct\.?)\s*[:#]?\s*))")
SSN_CUE = (r"(?P<cue>(?i:\b(?:SSN|SS#|SS No\.?|social security(?: number| no\.?| #)?)"
           r"\s*[:#]?\s*))")
PHONE_CUE = (r"(?P<cue>(?i:\b(?:tel(?:ephone)?|phone|ph|mobile|mob|cell|fax|call|ring|text|"
             r"hotline|contact|telefon|handy|t[ée]l[ée]phone|portable)\.?(?: (?:no\.?|number|"
             r"#))?\s*[:.]?\s*))")
PHONE_NEG = r"(?P<neg>(?i:\bISBN(?:-1[03])?:? ?|\bISSN:? ?))"
# What looks like an IPv4 address but is an enzyme number, an OID, a version or a product/version
# token ("Chrome/120.0.0.1") is matched with its cue and kept.
IP_NEG = (r"(?P<neg>\bE\.? ?C\.?:? ?|(?i:\b(?:v|ver|version|release|build|firmware|OID|"
          r"oid)\.?:? ?)|[A-Za-z]/)")

# Issuer prefixes and lengths of Visa, Mastercard, Amex, Diners, JCB, Discover and UnionPay: a
# Luhn-valid number that fits none (an ISBN-13 passes Luhn one time in ten) is not a card.
CARD_ISSUER = re.compile(r"(?:4\d{12}(?:\d{3}){0,2}|5[1-5]\d{14}|2[2-7]\d{14}|3[47]\d{13}|"
                         r"3[0689]\d{12,17}|35\d{14,17}|6(?:011|5\d\d|4[4-9]\d|2\d\d)\d{12,15})")
NANP = re.compile(r"(?:\+?1[ .-]?)?(?:\([2-9]\d{2}\) ?|[2-9]\d{2}[ .-])[2-9]\d{2}[ .-]\d{4}")
# National formats are tried in these regions (a '+' number carries its own country).
PHONE_REGIONS = ("GB", "FR", "DE", "IT", "ES", "NL", "BE", "CH", "AT", "IE", "AU", "IN", "US")
# Special-purpose addresses that identify no person: kept unless listed here as not.
PUBLIC_RESOLVERS = frozenset(ipaddress.ip_address(a) for a in (
    "8.8.8.8", "8.8.4.4", "1.1.1.1", "1.0.0.1", "9.9.9.9", "149.112.112.112", "208.67.222.222",
    "208.67.220.220", "4.2.2.1", "4.2.2.2", "64.6.64.6", "2001:4860:4860::8888",
    "2001:4860:4860::8844", "2606:4700:4700::1111", "2606:4700:4700::1001", "2620:fe::fe"))
KEPT_IPS = ("loopback (127.0.0.0/8, ::1), unspecified and 'this network' (0.0.0.0/8, ::), "
            "netmasks (255.255.255.0, ...), multicast, reserved (240.0.0.0/4), public DNS "
            "resolvers (8.8.8.8, 1.1.1.1, 9.9.9.9, ...)")
SHORTENERS = frozenset(("t.co", "bit.ly", "ow.ly", "goo.gl", "tinyurl.com", "buff.ly", "fb.me",
                        "dlvr.it", "ift.tt", "is.gd", "lnkd.in", "tiny.cc", "trib.al", "wp.me",
                        "shar.es", "j.mp", "su.pr", "ht.ly", "po.st", "youtu.be", "rebrand.ly"))
SOCIAL = frozenset(("twitter.com", "x.com", "facebook.com", "instagram.com", "linkedin.com",
                    "tiktok.com", "pinterest.com", "tumblr.com", "myspace.com", "flickr.com",
                    "reddit.com", "github.com", "gitlab.com", "medium.com", "vk.com", "fb.com",
                    "twimg.com", "fbcdn.net", "cdninstagram.com", "imgur.com", "youtube.com",
                    "instagr.am", "snapchat.com", "threads.net", "bsky.app"))
PERSONAL_PATH = re.compile(r"/(?:~|@)|/(?:users?|u|profiles?|people|persons?|members?|accounts?|"
                           r"authors?|staff|home|in|pub|customers?|patients?|employees?)/[^/]",
                           re.IGNORECASE)
OPAQUE = re.compile(r"(?=[A-Za-z0-9_-]*[0-9])(?=[A-Za-z0-9_-]*[A-Za-z])[A-Za-z0-9_-]{5,12}|"
                    r"(?=[a-z0-9]*[A-Z][a-z0-9]*[A-Z])(?=[A-Za-z0-9]*[a-z])[A-Za-z0-9]{5,12}")
# The documents NER may run on (a first scan, in RE2): a capitalised word that does not open
# a sentence, two in a row, or a title and a name; ``ner.windows`` then picks the windows.
NER_PREFILTER = r"[^\s.!?]\s+[A-Z][a-z]|[A-Z][a-z]+\s+[A-Z][a-z]|" + ner.TITLED_NAME.pattern
# A clinical event in a date's sentence makes the date a person's ("admitted on <date> and
# seen for follow-up on <date>", "On <date> the patient was discharged").
CLINICAL_EVENT = re.compile(
    r"\b(?:DOS|DOB|D\.O\.B)\b|(?i:\b(?:(?:re)?admi(?:tted|ssion)|discharged?|transferred|"
    r"(?:was|were|been|is|be|being) seen|seen (?:for|in|at|by|on)|follow[- ]?ups?|f/u|"
    r"date of (?:birth|death|service|admission|discharge|surgery|visit)|born|died|"
    r"hospitali[sz](?:ed|ation)|operated on|underwent|diagnosed)\b)")
# Where a sentence ends: '.', '!' or '?' and a space, not after a title, an initial, a month or
# a cue's abbreviation ("Dr.", "J.", "Jan.", "Rec. No."); or a line break.
_ABBREV = ("Dr", "Mr", "Mrs", "Ms", "Mx", "Prof", "St", "No", "Rec", "Med", "Pt", "vs", "approx",
           "Jan", "Feb", "Mar", "Apr", "Jun", "Jul", "Aug", "Sep", "Sept", "Oct", "Nov", "Dec")
SENTENCE_END = re.compile(r"(?<!\b[A-Za-z])" + "".join(rf"(?<!\b{a})" for a in _ABBREV) +
                          r"[.!?](?=\s)|\n")


def _digits(text: str) -> str:
    return re.sub(r"\D", "", text)


# A check gets (value, cue, config) and returns the part of the value that is the identifier
# (a prefix of it) or None: the match is left as it is.
Check = Callable[[str, str, PiiConfig], "str | None"]


def _card(value: str, cue: str, config: PiiConfig) -> str | None:
    d = _digits(value)
    ok = value[0] not in "/=#" and CARD_ISSUER.fullmatch(d) and luhn.is_valid(d)
    return value if ok else None


def _iban(value: str, cue: str, config: PiiConfig) -> str | None:
    return value if iban.is_valid(value) else None


def _ssn(value: str, cue: str, config: PiiConfig) -> str | None:
    seps = re.sub(r"\d", "", value)
    if not cue and seps not in ("--", "  "):  # 9 bare or mixed digits need a label
        return None
    return value if ssn.is_valid(_digits(value)) else None


def _phone(value: str, cue: str, config: PiiConfig) -> str | None:
    digits = _digits(value)
    if not 7 <= len(digits) <= 15:
        return None
    if value.startswith("+"):
        try:
            number = phonenumbers.parse(value, None)
        except phonenumbers.NumberParseException:
            return None
        return value if phonenumbers.is_possible_number(number) else None
    if NANP.fullmatch(value):  # the North American layout is a phone number, assigned or not
        return value
    if not cue and (len(digits) < 9 or not re.match(r"\(?0", value)):
        return None  # without a cue only a national format with its trunk 0 is a phone number
    test = phonenumbers.is_possible_number if cue else phonenumbers.is_valid_number
    for region in PHONE_REGIONS:
        try:
            if test(phonenumbers.parse(value, region)):
                return value
        except phonenumbers.NumberParseException:
            continue
    return None


def _kept_ip(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if addr.version == 6 and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    if addr in PUBLIC_RESOLVERS or addr.is_loopback or addr.is_unspecified or \
            addr.is_multicast:
        return True
    if addr.version == 4:  # (IPv6's "reserved" is all but 2000::/3, fc00::/7 and fe80::/10)
        if addr.is_reserved:
            return True
        n = int(addr)
        inverted = ~n & 0xFFFFFFFF
        if n >> 24 == 0 or n >> 24 == 255 and inverted & (inverted + 1) == 0:  # 0/8, netmask
            return True
    return False


def _ip(value: str, cue: str, config: PiiConfig) -> str | None:
    core = value[:-1] if value.endswith(":") and not value.endswith("::") else value
    if "." in core and ":" not in core and (core.count(".") != 3 or
                                            any(len(p) > 3 for p in core.split("."))):
        return None  # an OID or a longer dotted run
    try:
        addr = ipaddress.ip_address(core)
    except ValueError:
        return None
    return None if _kept_ip(addr) else core


def _host_kept(host: str, keep: list[str]) -> bool:
    return any(host == k or host.endswith("." + k) for k in keep)


def _url(value: str, cue: str, config: PiiConfig) -> str | None:
    try:
        parts = urlsplit(value if "://" in value else "http://" + value)
        host = (parts.hostname or "").lower().removeprefix("www.")
    except ValueError:  # a malformed URL ("http://[x"): where it leads cannot be told
        return value
    if _host_kept(host, config.url_keep):
        return None
    segments = [x for x in parts.path.split("/") if x]
    personal = (parts.query or parts.username or host in SHORTENERS or
                _host_kept(host, list(SOCIAL)) or PERSONAL_PATH.search(parts.path + "/") or
                "@" in parts.path or
                # a branded short link ("ti.me/1yzKTeL"): where it leads cannot be told
                len(segments) in (1, 2) and OPAQUE.fullmatch(segments[-1]))
    return value if personal else None


def _clinical_sentence(text: str, start: int, end: int) -> bool:
    """True when the sentence around ``text[start:end]`` tells of a clinical event."""
    left = max((m.end() for m in SENTENCE_END.finditer(text, max(0, start - 200), start)),
               default=max(0, start - 200))
    right = SENTENCE_END.search(text, end, end + 200)
    right_end = right.start() if right else min(len(text), end + 200)
    return bool(CLINICAL_EVENT.search(text[left:start]) or
                CLINICAL_EVENT.search(text[end:right_end]))


@dataclass(frozen=True)
class PiiType:
    name: str  # the config's name for it; the placeholder is <NAME>
    pattern: str  # RE2 and Python re; (?P<neg>...) marks a look-alike, (?P<cue>...) stays
    check: Check | None = None  # checked per match, in Python
    # A match without a cue counts only where this says so (text, start, end), in Python.
    context: Callable[[str, int, int], bool] | None = None

    @property
    def placeholder(self) -> str:
        return f"<{self.name.upper()}>"


DOT = r" ?[\[(](?i:dot)[\])] ?"
V4 = r"\b\d{1,3}(?:\.\d{1,3}){3}(?:\.\d+)*\b"
V6 = (r"(?:\b[0-9A-Fa-f]{1,4}|\B:)(?::(?:[0-9A-Fa-f]{1,4}\b)?){1,7}"
      r"(?:\.\d{1,3}\.\d{1,3}\.\d{1,3}\b)?")
STREET = (r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Place|Pl|"
          r"Square|Sq|Terrace|Way|Parkway|Pkwy|Highway|Hwy|Close|Crescent|Gardens|Row|Mews)")

TYPES: dict[str, PiiType] = {t.name: t for t in (
    # Checked types run first, so that a card number is not taken for a phone number.
    PiiType("iban", r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b", _iban),
    # Digits right after '/', '=' or '#' are an id in a URL (a Pinterest pin), not a card.
    PiiType("credit_card", r"[/=#]?\b\d(?:[ -]?\d){12,18}\b", _card),
    PiiType("ssn", SSN_CUE + r"?\b\d{3}[ -]?\d{2}[ -]?\d{4}\b", _ssn),
    PiiType("url", r"\b(?:https?://|www\.)[^\s<>\"']*[^\s<>\"'.,;:!?)\]]|\b(?:[A-Za-z0-9-]+\.)+"
            r"(?:com|org|net|edu|gov|io|info|co|uk|de|fr|nl|eu|us|ca|au|ly|gl|me)/[^\s<>\"']*"
            r"[^\s<>\"'.,;:!?)\]]", _url),
    # Also obfuscated: "name [at] host [dot] com", "first [dot] last (at) host.org".
    PiiType("email", r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b|"
            r"\b[A-Za-z0-9._%+-]+(?:" + DOT + r"[A-Za-z0-9_%+-]+)* ?[\[(](?i:at)[\])] ?"
            r"[A-Za-z0-9-]+(?:(?:\.|" + DOT + r")[A-Za-z0-9-]+)*(?:\.|" + DOT + r")[A-Za-z]{2,}\b"),
    PiiType("mrn", MRN_CUE + r"[A-Za-z]{0,3}[-#]?\d[\d-]{2,}\d\b"),
    PiiType("person_date", DATE_CUE + "?" + DATE, context=_clinical_sentence),
    PiiType("phone", PHONE_NEG + "?" + PHONE_CUE + r"?(?:(?:\+?1[ .-]?)?(?:\([2-9]\d{2}\) ?|\b[2-9]"
            r"\d{2}[ .-])[2-9]\d{2}[ .-]\d{4}\b|\+[1-9]\d{0,2}(?:[ .-]?\(0?\d{1,4}\))?(?:[ .-]?"
            r"\d{1,6}){1,6}\b|\(?\b0\d{1,4}\)?(?:[ ./-]?\d{2,8}){1,5}\b|"
            # a run of 3+ digit groups is taken whole, so that no phone number is read into
            # the tail of a longer one ("4596 0784 5704 0441")
            r"\b[1-9]\d{0,4}(?:[ ./-]\d{2,8}){2,5}\b|\b[1-9]\d{6,14}\b)",
            _phone),
    PiiType("ip", IP_NEG + "?(?:" + V4 + "|" + V6 + ")", _ip),
    PiiType("address", r"\b\d{1,5}[A-Za-z]?,? (?:[A-Z][a-z]+\.? ){1,4}" + STREET +
            r"\b\.?(?: [NS][EW]\b| [NSEW]\b)?(?:,? (?:Apt|Apartment|Suite|Unit|Flat)\.? ?#?"
            r"\w+)?|\b[Pp]\.? ?[Oo]\.? Box \d+\b|"
            r"\b[A-Z][a-zäöü]+(?:straße|strasse|weg|gasse|platz|allee) \d{1,4}[a-z]?\b|"
            r"\b\d{1,4}(?: bis)?,? (?:rue|avenue|boulevard|place|chemin|allée|impasse) "
            r"(?:(?:de|du|des|la|le|l'|d')\s?){0,2}[A-Z][\w'-]+\b"),
)}


def _context(m: re.Match) -> tuple[str, str]:
    """(negative cue, cue) of a match: the text before its value."""
    index = m.re.groupindex
    return ((m.group("neg") or "") if "neg" in index else "",
            (m.group("cue") or "") if "cue" in index else "")


class Redactor:
    """A policy compiled: ``text()`` redacts one string in Python, the reference that the
    DuckDB passes of ``redact()`` equal."""

    def __init__(self, config: PiiConfig) -> None:
        self.config = config
        self.names = [n for n in TYPES if n in config.types and self.mode(n) != "keep"]
        self.ner_names = [n for n in PII_NER_TYPES
                          if n in config.types and self.mode(n) != "keep"]
        self.compiled = {n: re.compile(TYPES[n].pattern) for n in self.names}
        self.prefilter = re.compile(NER_PREFILTER)
        self.rules = ner.Rules(person="person" in self.ner_names,
                               location="location" in self.ner_names,
                               location_min_level=config.location_min_level,
                               allow=tuple(config.allow))

    def mode(self, name: str) -> str:
        return self.config.policy.get(name, "redact")

    def vectorised(self, name: str) -> bool:
        """True when RE2's regexp_replace does this type alone (no check, no mask or hash)."""
        kind = TYPES[name]
        return kind.check is None and kind.context is None and self.mode(name) == "redact"

    def render(self, name: str, value: str) -> str:
        mode = self.mode(name)
        if mode == "mask":
            return re.sub(r"[^\W_]", "X", value)
        if mode == "hash":
            key = re.sub(r"[\W_]", "", value.casefold())
            digest = hmac.new(self.config.salt.encode(), f"{name}:{key}".encode(),
                              hashlib.sha256).hexdigest()
            return f"<{name.upper()}_{digest[:8]}>"
        return f"<{name.upper()}>"

    def apply(self, name: str, text: str) -> tuple[str, int]:
        """One pattern type over ``text``: (new text, matches replaced)."""
        kind = TYPES[name]
        n = 0

        def sub(m: re.Match) -> str:
            nonlocal n
            neg, cue = _context(m)
            if neg:
                return m.group(0)
            value = m.group(0)[len(neg) + len(cue):]
            if not cue and kind.context and not kind.context(m.string, m.start(), m.end()):
                return m.group(0)
            found = value if kind.check is None else kind.check(value, cue, self.config)
            if not found:
                return m.group(0)
            n += 1
            return cue + self.render(name, found) + value[len(found):]

        return self.compiled[name].sub(sub, text), n

    def ner(self, texts: list[str]) -> list[tuple[str, dict[str, int]]]:
        """Names and places in each text (NER on its candidate windows), replaced per the
        policy."""
        windows = [ner.windows(text, self.rules) for text in texts]
        found = iter(ner.run([t[a:b] for t, ws in zip(texts, windows, strict=True)
                              for a, b in ws], self.config.ner_workers))
        out = []
        for text, ws in zip(texts, windows, strict=True):
            entities = [(a + s, a + e, label) for a, _ in ws for s, e, label in next(found)]
            counts: dict[str, int] = {}
            new, end = [], len(text)
            for start, stop, name in reversed(ner.spans(text, entities, self.rules)):
                new += [text[stop:end], self.render(name, text[start:stop])]
                end = start
                counts[name] = counts.get(name, 0) + 1
            new.append(text[:end])
            out.append(("".join(reversed(new)), counts))
        return out

    def text(self, text: str) -> tuple[str, dict[str, int]]:
        counts: dict[str, int] = {}
        for name in self.names:
            text, n = self.apply(name, text)
            if n:
                counts[name] = n
        if self.ner_names and self.prefilter.search(text):
            [(text, found)] = self.ner([text])
            counts.update(found)
        return text, counts


def redact_text(text: str, types: list[str] | PiiConfig) -> tuple[str, dict[str, int]]:
    """The same redaction on one string, in Python (for tests and for the checked types)."""
    config = types if isinstance(types, PiiConfig) else PiiConfig(types=types)
    return _redactor(config).text(text)


def _redactor(config: PiiConfig) -> Redactor:
    return _redactor_for(config.model_dump_json())


@functools.lru_cache(maxsize=16)
def _redactor_for(config_json: str) -> Redactor:
    return Redactor(PiiConfig.model_validate_json(config_json))


def redact(con: duckdb.DuckDBPyConnection, table: str, config: PiiConfig) -> dict[str, int]:
    """Redact ``table.text`` (ord, text; doc_id for a ner_share < 1) in place, add ``pii``: a
    ``{type: count}`` map for the documents that changed. Returns the counts per type.

    One scan with every type's pattern (and the NER prefilter) as alternatives finds the
    documents that may hold any (a few percent, usually); the per-type passes run on those
    alone, and NER on those its prefilter keeps inside ``pii.ner_share`` (``ner_share.py``)."""
    con.execute(f"ALTER TABLE {table} ADD COLUMN pii MAP(VARCHAR, INTEGER)")
    red = _redactor(config)
    if not red.names and not red.ner_names:
        return {}
    alternatives = [TYPES[n].pattern for n in red.names]
    if red.ner_names:
        alternatives.append(NER_PREFILTER)
    any_type = _sql("|".join(f"(?:{p})" for p in alternatives))
    con.execute(f"""CREATE OR REPLACE TEMP TABLE pii_docs AS
                    SELECT ord, text, pii, {ner_share.scope(con, table, config)} AS ner
                    FROM {table}
                    WHERE text IS NOT NULL AND regexp_matches(text, '{any_type}')""")
    for name in red.names:
        _redact_type(con, "pii_docs", red, name)
    if red.ner_names:
        _redact_ner(con, "pii_docs", red)
    con.execute(f"""UPDATE {table} SET text = p.text, pii = p.pii FROM pii_docs p
                    WHERE {table}.ord = p.ord AND p.pii IS NOT NULL""")
    totals = {}
    for name in [*red.names, *red.ner_names]:
        total = con.execute(f"SELECT coalesce(sum(pii['{name}']), 0) FROM pii_docs"
                            ).fetchall()[0][0]
        if total:
            totals[name] = int(total)
    con.execute("DROP TABLE pii_docs")
    return totals


def _sql(pattern: str) -> str:
    return pattern.replace("'", "''")


def _add_counts(con: duckdb.DuckDBPyConnection, table: str, changed: dict[str, list],
                names: list[str]) -> None:
    """Write the changed texts back, and add each type's count to their ``pii`` map."""
    if not changed["ord"]:
        return
    schema = pa.schema([("ord", pa.int64()), ("text", pa.string())] +
                       [(f"n_{n}", pa.int32()) for n in names])
    con.register("pii_changed", pa.table(changed, schema=schema))
    con.execute(f"UPDATE {table} SET text = c.text FROM pii_changed c WHERE {table}.ord = c.ord")
    for name in names:
        con.execute(f"""
            UPDATE {table} SET pii = map_concat(coalesce(pii, MAP {{}}::MAP(VARCHAR, INTEGER)),
                                                MAP {{'{name}': c.n_{name}}})
            FROM pii_changed c WHERE {table}.ord = c.ord AND c.n_{name} > 0""")
    con.unregister("pii_changed")


def _redact_type(con: duckdb.DuckDBPyConnection, table: str, red: Redactor, name: str) -> None:
    kind = TYPES[name]
    pattern = _sql(kind.pattern)
    if red.vectorised(name):
        # A vectorised type's cue, if any, is its first group.
        replacement = (r"\1" if "(?P<cue>" in kind.pattern else "") + kind.placeholder
        con.execute(f"""
            UPDATE {table} SET
                pii = map_concat(coalesce(pii, MAP {{}}::MAP(VARCHAR, INTEGER)),
                    MAP {{'{name}': len(regexp_extract_all(text, '{pattern}'))::INTEGER}}),
                text = regexp_replace(text, '{pattern}', '{replacement}', 'g')
            WHERE regexp_matches(text, '{pattern}')""")
        return
    # Python checks (or masks, or hashes) each candidate on the few documents that have one.
    rows = con.execute(f"SELECT ord, text FROM {table} WHERE regexp_matches(text, '{pattern}')"
                       ).fetchall()
    changed: dict[str, list] = {"ord": [], "text": [], f"n_{name}": []}
    for ord_, text in rows:
        new, n = red.apply(name, text)
        if n:
            changed["ord"].append(ord_)
            changed["text"].append(new)
            changed[f"n_{name}"].append(n)
    _add_counts(con, table, changed, [name])


def _redact_ner(con: duckdb.DuckDBPyConnection, table: str, red: Redactor) -> None:
    rows = con.execute(f"SELECT ord, text FROM {table} WHERE ner AND regexp_matches(text, "
                       f"'{_sql(NER_PREFILTER)}') ORDER BY ord").fetchall()
    changed: dict[str, list] = {"ord": [], "text": [], **{f"n_{n}": [] for n in red.ner_names}}
    for (ord_, _), (new, counts) in zip(rows, red.ner([t for _, t in rows]), strict=True):
        if counts:
            changed["ord"].append(ord_)
            changed["text"].append(new)
            for name in red.ner_names:
                changed[f"n_{name}"].append(counts.get(name, 0))
    _add_counts(con, table, changed, red.ner_names)
