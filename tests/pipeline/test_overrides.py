"""``--set PATH=VALUE`` overrides (pipeline/overrides.py and ``Domain.resolve``): values parsed as
YAML, applied last, validated by the schema with the YAML's messages, and entering the artifact
keys of the stages they touch and of no other."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import domains
from pipeline.overrides import OverrideError, apply, parse, parse_one


def test_paths_and_values_parse_as_yaml() -> None:
    o = parse_one("ingest.sources[1].text_field=body")
    assert o.path == ("ingest", "sources", 1, "text_field") and o.value == "body"
    assert o.dotted == "ingest.sources[1].text_field"
    assert parse_one("ingest.pii.types=[email, phone]").value == ["email", "phone"]
    assert parse_one("evaluate.min_domain_gain=null").value is None
    assert parse_one("pretrain.mixture={general: 0.25}").value == {"general": 0.25}
    assert parse_one("finetune.seeds[0]=7").value == 7
    assert parse_one("description=a=b").value == "a=b"  # the first = splits


@pytest.mark.parametrize(("text", "message"), [
    ("pretrain.lr", "expected PATH=VALUE"),
    ("=3", "expected PATH=VALUE"),
    ("pretrain..lr=3", "is not a field path"),
    ("pretrain.lr[x]=3", "is not a field path"),
    ("profile=small", "use --profile"),
    ("pretrain.lr=[1", "not valid YAML"),
])
def test_bad_syntax_is_an_error_quoting_the_override(text: str, message: str) -> None:
    with pytest.raises(OverrideError, match=message) as err:
        parse_one(text)
    assert repr(text) in str(err.value)


def test_apply_sets_values_and_names_the_path_that_does_not_exist() -> None:
    config = {"pretrain": {"lr": 1.0, "model": {"num_layers": 2}},
              "ingest": {"sources": [{"name": "a"}]}}
    out = apply(config, parse(["pretrain.lr=3e-4", "ingest.sources[0].name=b",
                               "pretrain.model.num_layers=4", "pretrain.lr=0.5"]))
    assert out["pretrain"] == {"lr": 0.5, "model": {"num_layers": 4}}  # the last one wins
    assert out["ingest"]["sources"] == [{"name": "b"}] and config["pretrain"]["lr"] == 1.0
    for text, message in [("pretrain.modle.num_layers=2", r"pretrain has no field 'modle' "
                           r"\(did you mean 'model'\?\)"),
                          ("ingest.sources[3].name=x", r"has 1 item\(s\), so \[3\] is out"),
                          ("pretrain.lr.x=1", r"pretrain.lr is a value \(1.0\)"),
                          ("pretrain[0]=1", "pretrain is not a list")]:
        with pytest.raises(OverrideError, match=message):
            apply(config, parse([text]))


def test_resolve_applies_overrides_after_the_profile() -> None:
    medical = domains.get("medical")
    run = medical.resolve("tiny", ["pretrain.lr=3e-4", "ingest.pii.types=[email, phone]",
                                   "ingest.sources[0].text_field=body"])
    assert run.pretrain.lr == 3e-4 and run.ingest.pii.types == ["email", "phone"]
    assert run.ingest.sources[0].text_field == "body"
    base = medical.resolve("tiny")
    assert base.pretrain.lr == 3e-3  # the tiny profile's, which --set replaced
    assert run.tokenizer == base.tokenizer and run.finetune == base.finetune


@pytest.mark.parametrize(("override", "line"), [
    ("pretrain.lr=-1", "pretrain.lr: Input should be greater than 0 (got -1)"),
    ("pretrain.lrr=1", "pretrain.lrr: unknown field (did you mean 'lr'?)"),
    ("ingest.pii.types=[emial]", "(got 'emial') (did you mean 'email'?)"),
    ("pretrain.zero_stage=5", "pretrain.zero_stage: Input should be 0, 1, 2 or 3 (got 5)"),
    ("ingest.min_chars=300000", "min_chars (300000) must be below max_chars"),
])
def test_a_bad_value_fails_as_in_the_yaml(override: str, line: str) -> None:
    with pytest.raises(domains.DomainError) as err:
        domains.get("medical").resolve("tiny", [override])
    message = str(err.value)
    assert message.startswith("invalid domain config ") and "domains/medical.yaml" in message
    assert f"--set {override}" in message.splitlines()[0] and line in message


def test_the_same_error_from_the_yaml_shows_the_value_too(tmp_path: Path) -> None:
    path = tmp_path / "d.yaml"
    path.write_text("name: d\ningest: {sources: [{name: a, path: a.txt}], min_chars: -5}\n"
                    "finetune: {task: {name: t, path: t.csv}}\n")
    with pytest.raises(domains.DomainError, match=r"ingest.min_chars: Input should be greater "
                       r"than or equal to 0 \(got -5\)"):
        domains.load_file(path)


def test_overrides_change_the_keys_of_the_stages_they_touch(samples_dir: Path) -> None:
    from pipeline.driver import plan

    medical = domains.get("medical")
    work = samples_dir.parent

    def keys(*sets: str) -> dict[str, str]:
        return {s: p.key for s, p in plan(medical, medical.resolve("tiny", list(sets)),
                                          work).items()}

    base = keys()
    assert keys("pretrain.lr=0.003") == base  # the tiny profile's own value: the same run
    lr = keys("pretrain.lr=3e-4")
    assert [s for s in base if lr[s] != base[s]] == ["pretrain", "finetune", "evaluate"]
    pii = keys("ingest.pii.types=[email, phone]")
    assert all(pii[s] != base[s] for s in base)  # ingest, and everything downstream of it
