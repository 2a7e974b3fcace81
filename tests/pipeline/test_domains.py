from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline import domains
from pipeline.config import PROFILE_NAMES
from pipeline.domains import DomainError

SHIPPED = sorted(p.stem for p in (Path(__file__).parents[2] / "domains").glob("*.yaml")
                 if not p.name.startswith("_"))  # _template.yaml is the scaffold


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_every_shipped_domain_resolves(name: str, profile: str) -> None:
    domain = domains.get(name)
    assert domain.origin == "built-in"
    run = domain.resolve(profile)
    assert run.domain == name and run.profile == profile
    assert run.ingest.sources and run.finetune.tasks[0].path.startswith("${samples}/")


def test_shipped_domains_are_discovered() -> None:
    assert {"medical", "legal", "finance"} <= set(domains.discover())


def _write(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / "d.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _valid() -> dict:
    return yaml.safe_load(domains.get("finance").path.read_text())


def test_unknown_key_names_file_and_field(tmp_path: Path) -> None:
    doc = _valid()
    doc["ingest"]["min_char"] = 5
    path = _write(tmp_path, doc)
    with pytest.raises(DomainError) as err:
        domains.load_file(path)
    assert str(path) in str(err.value)
    assert "ingest.min_char: unknown field" in str(err.value)


def test_wrong_type_names_field(tmp_path: Path) -> None:
    doc = _valid()
    doc["pretrain"] = {"zero_stage": "two"}
    with pytest.raises(DomainError, match=r"pretrain\.zero_stage: Input should be 0, 1, 2 or 3"):
        domains.load_file(_write(tmp_path, doc))


def test_missing_data_file_names_field(tmp_path: Path) -> None:
    doc = _valid()
    doc["ingest"]["sources"][0]["path"] = "nowhere/*.jsonl"
    path = _write(tmp_path, doc)
    domain = domains.load_file(path)
    with pytest.raises(DomainError) as err:
        domains.check_paths(domain.resolve("tiny"), domain, tmp_path)
    assert "ingest.sources[0].path: no file matches 'nowhere/*.jsonl'" in str(err.value)
    assert str(tmp_path / "nowhere") in str(err.value)  # relative to the YAML's folder


def test_samples_placeholder_resolves_under_workdir(tmp_path: Path) -> None:
    domain = domains.get("medical")
    resolved = domains.resolve_path("${samples}/medical/hpo.jsonl", domain, tmp_path)
    assert resolved == str(tmp_path / "samples/medical/hpo.jsonl")


def test_url_sources_are_globbed_by_fsspec_and_not_anchored(tmp_path: Path) -> None:
    import fsspec

    domain = domains.get("medical")
    assert domains.resolve_path("s3://bucket/med/*.jsonl", domain, tmp_path) == \
        "s3://bucket/med/*.jsonl"
    assert domains.resolve_path(f"file://{tmp_path}/x.jsonl", domain, tmp_path) == \
        f"{tmp_path}/x.jsonl"
    fs = fsspec.filesystem("memory")
    fs.pipe(f"memory://dom-{tmp_path.name}/part-0.jsonl", b'{"text": "x"}\n')
    doc = _valid()
    doc["ingest"]["sources"] = doc["ingest"]["sources"][:1]
    doc["pretrain"]["mixture"] = {}
    doc["profiles"]["cpu"]["pretrain"].pop("mixture", None)  # it names the general source
    (tmp_path / "task.jsonl").write_text('{"id": "1", "text": "x", "label": "a"}\n')
    doc["finetune"]["task"]["path"] = str(tmp_path / "task.jsonl")
    doc["ingest"]["sources"][0]["path"] = f"memory://dom-{tmp_path.name}/part-*.jsonl"
    domain = domains.load_file(_write(tmp_path, doc))
    files = domains.check_paths(domain.resolve("tiny"), domain, tmp_path)
    assert files["ingest.sources[0].path"] == [f"memory:///dom-{tmp_path.name}/part-0.jsonl"]
    doc["ingest"]["sources"][0]["path"] = f"memory://dom-{tmp_path.name}/none-*.jsonl"
    domain = domains.load_file(_write(tmp_path, doc))
    with pytest.raises(DomainError, match=r"ingest.sources\[0\].path: no file matches"):
        domains.check_paths(domain.resolve("tiny"), domain, tmp_path)


def test_name_clash_is_an_error_naming_both(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    clash = domains.Domain(domains.get("finance").spec, "entry point finance (acme-domains)",
                           tmp_path / "finance.yaml")
    monkeypatch.setattr(domains, "_entry_points", lambda: [clash])
    with pytest.raises(DomainError, match="defined twice: by built-in .* and by entry point"):
        domains.discover()


def test_not_a_mapping_and_bad_yaml(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(DomainError, match="expected a mapping"):
        domains.load_file(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("name: [unclosed\n")
    with pytest.raises(DomainError, match="invalid YAML"):
        domains.load_file(tmp_path / "b.yaml")
