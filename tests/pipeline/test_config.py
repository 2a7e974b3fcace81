from __future__ import annotations

import pytest
from pydantic import ValidationError

from pipeline.config import PROFILES, DomainSpec, IngestConfig, PretrainConfig, deep_merge

MINIMAL = {
    "name": "toy",
    "ingest": {"sources": [{"name": "a", "path": "a.jsonl"}]},
    "finetune": {"task": {"name": "t", "path": "t.jsonl"}},
}


def test_profile_defaults_then_domain_then_profile_override() -> None:
    spec = DomainSpec.model_validate({
        **MINIMAL,
        "pretrain": {"lr": 1e-4, "zero_stage": 2},
        "profiles": {"tiny": {"pretrain": {"max_steps": 7, "warmup_steps": 1}}},
    })
    tiny, small = spec.resolve("tiny"), spec.resolve("small")
    assert tiny.pretrain.lr == 1e-4 and small.pretrain.lr == 1e-4  # domain beats profile default
    assert tiny.pretrain.max_steps == 7  # the domain's profile override beats both
    assert small.pretrain.max_steps == PROFILES["small"]["pretrain"]["max_steps"]
    assert tiny.pretrain.model.num_layers == 2 and small.pretrain.model.num_layers == 6
    assert tiny.pretrain.zero_stage == 2


def test_deep_merge_recurses_and_copies() -> None:
    base = {"a": {"b": 1, "c": 2}, "d": [1]}
    out = deep_merge(base, {"a": {"c": 3}})
    assert out == {"a": {"b": 1, "c": 3}, "d": [1]}
    out["a"]["b"] = 9
    assert base["a"]["b"] == 1


def test_unknown_key_is_rejected() -> None:
    with pytest.raises(ValidationError, match="lrr"):
        PretrainConfig.model_validate({**PROFILES["tiny"]["pretrain"], "lrr": 1.0})


def test_conflicting_settings_name_both() -> None:
    with pytest.raises(ValidationError, match=r"warmup_steps \(30\) must be below max_steps"):
        PretrainConfig.model_validate({**PROFILES["tiny"]["pretrain"], "max_steps": 10})
    with pytest.raises(ValidationError, match="min_chars"):
        IngestConfig.model_validate({"sources": [{"name": "a", "path": "x"}],
                                     "min_chars": 10, "max_chars": 5})


def test_unknown_profile_section_and_profile() -> None:
    with pytest.raises(ValidationError, match="unknown section"):
        DomainSpec.model_validate({**MINIMAL, "profiles": {"tiny": {"pretrian": {}}}})
    with pytest.raises(ValueError, match="allowed: tiny, small, base"):
        DomainSpec.model_validate(MINIMAL).resolve("huge")


def _with_mixture(mixture: dict, general: bool = True) -> DomainSpec:
    doc = {**MINIMAL, "ingest": {"sources": [
        {"name": "a", "path": "a.jsonl"}, {"name": "news", "path": "n.jsonl", "general": general}
    ]}, "pretrain": {"mixture": mixture}}
    return DomainSpec.model_validate(doc)


def test_mixture_is_checked_against_the_sources() -> None:
    run = _with_mixture({"news": 0.1}).resolve("tiny")
    assert run.pretrain.mixture == {"news": 0.1} and run.ingest.sources[1].general
    with pytest.raises(ValidationError, match=r"unknown source\(s\) \['nwes'\]; ingest.sources "
                                              r"are: a, news"):
        _with_mixture({"nwes": 0.1}).resolve("tiny")
    with pytest.raises(ValidationError, match="leaving nothing for the source.*: a"):
        _with_mixture({"news": 1.0}).resolve("tiny")
    with pytest.raises(ValidationError, match=r"shares must be in \[0, 1\] \(0: not trained on\)"):
        _with_mixture({"news": 1.5}).resolve("tiny")
    assert _with_mixture({"a": 2 / 3, "news": 1 / 3}).resolve("tiny").pretrain.mixture


def test_tokenizer_special_tokens_must_be_distinct() -> None:
    from pipeline.config import TokenizerConfig

    with pytest.raises(ValidationError, match="special tokens must be distinct"):
        TokenizerConfig(special_tokens=["<|pad|>"])
    with pytest.raises(ValidationError, match="model"):
        TokenizerConfig(model="wordpiece")


def test_vocabulary_extension_needs_continue_mode() -> None:
    doc = {**MINIMAL, "tokenizer": {"extend": {"num_new_tokens": 100}}}
    with pytest.raises(ValidationError, match=r"needs pretrain.mode: continue \(got from_scr"):
        DomainSpec.model_validate(doc).resolve("tiny")
    assert DomainSpec.model_validate(doc).resolve("base").tokenizer.extend.num_new_tokens == 100
