"""Near-twins (one-word edits) and the grouped held-out split: twin keys on planted texts, the
twin and covered rates, groups that never straddle the split, decontamination of one-word
variants of a test set's texts."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import IngestConfig
from pipeline.stages.ingest import twins

# Real ICD-10-CM descriptions (simple-icd-10-cm): the first two differ by one word.
RIGHT = "Acute atopic conjunctivitis, right eye"
LEFT = "Acute atopic conjunctivitis, left eye"
UNSPEC = "Acute atopic conjunctivitis, unspecified eye"
SHORTER = "Acute atopic conjunctivitis"  # LEFT minus two words: not a twin
INSERTED = "Acute atopic conjunctivitis, right eye only"  # RIGHT plus a word: a twin
OTHER = "Cholera due to Vibrio cholerae 01, biovar eltor"


def pairs(texts: list[str]) -> set[tuple[int, int]]:
    return {tuple(sorted(map(int, e))) for e in twins.twin_edges(texts) if e[0] != e[1]}


def test_one_word_edits_link_and_nothing_else() -> None:
    texts = [RIGHT, LEFT, UNSPEC, SHORTER, INSERTED, OTHER, "Cholera", "Typhoid"]
    linked = pairs(texts)
    # substitutions (0-1, 0-2, 1-2 through one bucket) and the insertion (0-4)
    comp = {i: {i} for i in range(len(texts))}
    for a, b in linked:
        merged = comp[a] | comp[b]
        for i in merged:
            comp[i] = merged
    assert comp[0] == {0, 1, 2, 4}
    assert comp[3] == {3} and comp[5] == {5}
    assert comp[6] == {6} and comp[7] == {7}  # one-word texts are not templates


def test_deletions_at_different_places_are_not_twins() -> None:
    # "a b c d" minus "a" and "b c d e" minus "e" are the same 3 words: two edits apart
    assert pairs(["alpha beta gamma delta", "beta gamma delta epsilon"]) == set()
    assert pairs(["alpha beta gamma delta", "alpha beta gamma"]) == {(0, 1)}


def test_index_finds_twins_both_ways() -> None:
    index = twins.TwinIndex([RIGHT, OTHER])
    hit = index.hits([LEFT, SHORTER, "Cholera due to Vibrio cholerae 01, biovar cholerae"])
    assert hit.tolist() == [0, 2]
    assert index.found.tolist() == [True, True]


def test_rates_on_a_planted_split() -> None:
    test = pa.array([RIGHT, OTHER, "Typhoid fever with heart involvement and more"])
    # OTHER plus two words: no twin, but every 3-gram of OTHER is seen
    train = [pa.array([LEFT, f"{OTHER} strain isolated"]),
             pa.array(["fever with heart involvement"])]
    out = twins.rates(test, ["icd", "icd", "other"], iter(train))
    assert out["icd"] == {"docs": 2, "twin_rate": 0.5, "covered_rate": 0.5}
    # 2 of the 5 word 3-grams of the third text are seen: 40% < 90%
    assert out["other"] == {"docs": 1, "twin_rate": 0.0, "covered_rate": 0.0}
    shares = twins.covered(test, iter(train))
    assert shares[2] == pytest.approx(2 / 5)


def test_long_texts_are_not_compared() -> None:
    long = " ".join(f"w{i}" for i in range(twins.MAX_WORDS + 1))
    assert pairs([long, long.replace("w7 ", "x7 ")]) == set()
    short = " ".join(f"w{i}" for i in range(twins.MAX_WORDS))
    assert pairs([short, short.replace("w7 ", "x7 ")]) == {(0, 1)}


def test_group_regex_is_checked() -> None:
    with pytest.raises(ValueError, match="not a regular expression"):
        IngestConfig(sources=[{"name": "a", "path": "x"}],
                     held_out={"group_by": {"id_regex": "^(A"}})
    with pytest.raises(ValueError, match="general source is always held out by id"):
        IngestConfig(sources=[{"name": "g", "path": "x", "general": True}],
                     held_out={"sources": {"g": "auto"}})


def test_contained_short_texts() -> None:
    check = twins.Contained([RIGHT, "Cholera", "Typhoid fever, unspecified"], max_words=13)
    assert sorted(check.by_length) == [5]  # under 4 words: a phrase, not a copy
    hit = check.hits(pa.array([f"{RIGHT}. Includes: vernal conjunctivitis", LEFT,
                               "Typhoid fever, unspecified, with notes", RIGHT.upper()]))
    assert hit.tolist() == [0, 3]


@pytest.fixture(scope="module")
def icd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 3,000 ICD-10-CM codes (real text from simple-icd-10-cm), as a JSONL source."""
    import itertools

    from pipeline import samples

    records = list(itertools.islice(samples._icd10cm(samples._icd10cm_tabular()), 3000))
    path = tmp_path_factory.mktemp("icd") / "icd.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _split(icd: Path, out: Path, group_by: object) -> tuple[pa.Table, pa.Table]:
    from pipeline.stages.ingest import stage as ingest

    out.mkdir()
    config = IngestConfig(sources=[{"name": "icd", "path": str(icd), "id_field": "id"}],
                          min_chars=1, eval_fraction=0.2, min_kept_docs=1,
                          quality={"gopher": {"enabled": False}, "repetition": {"enabled": False}},
                          held_out={"group_by": group_by})
    ingest.run(config, {}, out)
    train = pa.concat_tables([pq.read_table(p) for p in sorted(out.glob("train-*.parquet"))])
    return pq.read_table(out / "eval.parquet"), train


@pytest.mark.parametrize("group_by", ["auto", {"id_regex": r"^([A-Z][0-9][0-9A-Z])"}])
def test_grouped_split_keeps_twins_and_groups_on_one_side(icd: Path, tmp_path: Path,
                                                          group_by: object) -> None:
    held, train = _split(icd, tmp_path / "out", group_by)
    by_id = _split(icd, tmp_path / "by_id", "id")
    before = twins.rates(by_id[0].column("text"), by_id[0].column("source").to_pylist(),
                         iter([by_id[1].column("text")]))["icd"]
    after = twins.rates(held.column("text"), held.column("source").to_pylist(),
                        iter([train.column("text")]))["icd"]
    assert before["twin_rate"] > 0.3  # "... right eye" / "... left eye" straddle a hash split
    assert after["twin_rate"] == 0.0 and after["docs"] > 100
    groups = dict(zip(held.column("doc_id").to_pylist(), held.column("group").to_pylist(),
                      strict=True))
    if isinstance(group_by, dict):  # a category's codes are held out together
        cats = {d.split(":")[1][:3] for d in groups}
        assert not cats & {d.split(":")[1][:3] for d in train.column("doc_id").to_pylist()}
    # a dev/test split of the held-out slice keeps each group on one side too
    from pipeline.stages.ingest.artifact import split_dev_test

    parts = split_dev_test(held)
    assert not (set(parts["dev"].column("group").to_pylist())
                & set(parts["test"].column("group").to_pylist()))
    assert len(set(groups.values())) < len(groups)  # some groups have several documents
