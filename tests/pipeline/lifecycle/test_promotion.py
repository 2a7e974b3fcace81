"""Promotion without training: the catalog pointer, its history and rollback, the verdict's
rules, the replay mixture of a continued run, and what `pretrain.init` does to the plan."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.config import PretrainConfig
from pipeline.domains import load_file
from pipeline.driver import plan, with_init
from pipeline.engine.artifacts import ArtifactStore, Manifest
from pipeline.engine.catalog import Catalog
from pipeline.lifecycle import promotion
from pipeline.stages.pretrain import packing
from tests.e2e_domain import write_test_domain


def _models(tmp_path: Path, *keys: str) -> tuple[Catalog, ArtifactStore]:
    store = ArtifactStore(tmp_path / "artifacts")
    for key in keys:
        store.build(stage="pretrain", key=key, config_hash="c", code="v", inputs={},
                    fn=lambda out: Manifest(stage="pretrain"))
    return Catalog(tmp_path / "catalog.duckdb"), store


def test_verdicts_move_the_pointer_and_rollback_walks_it_back(tmp_path: Path) -> None:
    catalog, store = _models(tmp_path, "a", "b", "c")
    assert catalog.promoted("med") is None
    assert promotion.decide(catalog, "med", "a", "r1", []).message == "promoted pretrain/a"
    d = promotion.decide(catalog, "med", "b", "r2", [])
    assert d.promoted and d.message == "promoted pretrain/b (replaces pretrain/a)"
    d = promotion.decide(catalog, "med", "c", "r3", ["general bits/byte +4.1% > 3%"])
    assert not d.promoted and catalog.promoted("med") == "b"
    assert d.message == ("not promoted: general bits/byte +4.1% > 3%; the promoted model "
                         "stays pretrain/b")
    assert promotion.decide(catalog, "med", "b", "r4", []).message == (
        "pretrain/b is already the promoted model")
    assert catalog.promoted("other") is None  # per domain

    assert "rolled back from pretrain/b" in promotion.rollback(catalog, store, "med").message
    assert catalog.promoted("med") == "a"
    # a cached rerun of run 2 does not undo the rollback: a model is considered once
    d = promotion.decide(catalog, "med", "b", "r5", [])
    assert not d.promoted and "dapt models promote r5" in d.message
    assert catalog.promoted("med") == "a"
    with pytest.raises(ValueError, match="first model promoted for 'med'"):
        promotion.rollback(catalog, store, "med")

    catalog.start_run("r3", "med", "tiny", {})
    with catalog.connect() as con:
        # a row from before steps were named (step NULL) and another seed's model (ignored)
        con.execute("INSERT INTO stage_runs (run_id, stage, artifact_key, cache_hit, status, "
                    "started_at, duration_s, error) VALUES ('r3', 'pretrain', 'c', FALSE, "
                    "'completed', now(), 1.0, NULL)")
        con.execute("INSERT INTO stage_runs VALUES ('r3', 'pretrain', 'd', FALSE, 'completed', "
                    "now(), 1.0, NULL, 'pretrain[seed1]')")
    assert promotion.promote(catalog, store, "r3").promoted  # the operator overrides the gate
    assert catalog.promoted("med") == "c"
    assert promotion.rollback(catalog, store, "med").message.startswith(
        "med: promoted pretrain/a again")
    actions = [r["action"] for r in catalog.promotions("med")]
    assert actions == ["promoted", "promoted", "rejected", "rollback", "manual", "rollback"]
    lines = promotion.lineage_lines(catalog, store, "med")
    assert lines[0] == "med: promoted model pretrain/a"
    assert any("rejected  pretrain/c not promoted" in line for line in lines)


def test_gate_lines_name_the_value_and_the_limit() -> None:
    assert promotion.gate_text({"gate": "evaluate.max_general_degradation", "limit": 0.03,
                                "value": 0.0412, "passed": False}) == (
        "general bits/byte +4.1% > 3% (evaluate.max_general_degradation)")
    assert promotion.gate_text({"gate": "evaluate.min_domain_gain", "limit": 0.001,
                                "value": -0.02, "passed": False}) == (
        "domain bits/byte gain -0.0200 < 0.001 (evaluate.min_domain_gain)")


def test_a_continued_run_uses_the_new_drop_once_and_replays_earlier_drops() -> None:
    # sources: 0 = notes (domain), 1 = news (general); docs 0-3 the new drop, 4-9 earlier
    enc = packing.Encoded(path=Path("unused"), dtype=np.dtype(np.uint16),
                          lengths=np.array([10, 10, 10, 10, 10, 10, 10, 10, 10, 10]),
                          sources=np.array([0, 0, 0, 1, 0, 0, 0, 0, 1, 1], dtype=np.int16),
                          source_names=["notes", "news"])
    marked = packing.mark_earlier(enc, 4, {"news"})
    assert marked.source_names == ["notes", "news", packing.EARLIER]
    assert marked.sources.tolist() == [0, 0, 0, 1, 2, 2, 2, 2, 1, 1]
    selection, mix = packing.mixture_selection(marked, {"news": 0.2, packing.EARLIER: 0.3},
                                               seed=0)
    # the new drop's 30 domain tokens are half the stream: 60 tokens, 12 news, 18 replayed
    assert sorted(int(i) for i in selection if i < 3) == [0, 1, 2]
    assert mix["notes"]["tokens"] == 30 and mix["notes"]["passes"] == 1.0
    assert mix["news"]["target_share"] == pytest.approx(0.2)
    assert mix[packing.EARLIER]["target_share"] == pytest.approx(0.3)
    assert mix[packing.EARLIER]["tokens"] == 20  # whole documents: the first to reach 18


def test_init_validation_names_the_fields() -> None:
    base = {"model": {"num_layers": 1, "hidden_size": 8, "num_heads": 1,
                      "intermediate_size": 8}, "seq_len": 8, "micro_batch_size": 1,
            "max_steps": 2, "lr": 1e-3}
    with pytest.raises(ValueError, match="plus pretrain.earlier_share .0.5. must stay below 1"):
        PretrainConfig.model_validate({**base, "init": "promoted", "earlier_share": 0.5,
                                       "mixture": {"general": 0.5}})
    PretrainConfig.model_validate({**base, "init": "base", "earlier_share": 0.5,
                                   "mixture": {"general": 0.5}})


def test_init_promoted_with_nothing_promoted_plans_the_same_artifacts(
        samples_dir: Path, tmp_path: Path) -> None:
    domain = load_file(write_test_domain(samples_dir, tmp_path))
    run = domain.resolve("tiny")
    keys = {s: p.key for s, p in plan(domain, run, tmp_path / "work").items()}
    promoted = with_init(run, "promoted")
    assert promoted.pretrain.init == "promoted"
    assert {s: p.key for s, p in plan(domain, promoted, tmp_path / "work").items()} == keys
    with pytest.raises(ValueError, match="init 'latest': allowed: base, promoted"):
        with_init(run, "latest")


def test_a_changed_tokenizer_section_cannot_continue_the_lineage(
        samples_dir: Path, tmp_path: Path) -> None:
    path = write_test_domain(samples_dir, tmp_path)
    domain = load_file(path)
    run = with_init(domain.resolve("tiny"), "promoted")
    catalog, store = _models(tmp_path / "work")
    tok_hash = plan(domain, run, tmp_path / "work")["tokenizer"].config_hash
    tok, _ = store.build(stage="tokenizer", key="t1", config_hash=tok_hash, code="v",
                         inputs={}, fn=lambda out: Manifest(stage="tokenizer"))
    store.build(stage="pretrain", key="m1", config_hash="c", code="v", inputs={"tokenizer": tok},
                fn=lambda out: Manifest(stage="pretrain", extra={"mode": "from_scratch"}))
    catalog.record_promotion("medtest", "promoted", "m1", None, "r1", "gates passed")
    lineage = promotion.continued(catalog, store, "medtest", run)
    assert lineage is not None and lineage.tokenizer.key == "t1"
    planned = plan(domain, run, tmp_path / "work", lineage)
    assert planned["tokenizer"].key == "t1"  # frozen: the lineage's own
    assert planned["pretrain"].inputs["promoted"] == "m1"
    assert planned["evaluate"].inputs["previous"] == "m1"

    doc = yaml.safe_load(path.read_text())
    doc["profiles"]["tiny"]["tokenizer"]["vocab_size"] = 4096
    path.write_text(yaml.safe_dump(doc))
    changed = with_init(load_file(path).resolve("tiny"), "promoted")
    with pytest.raises(ValueError, match=r"the `tokenizer` section differs .* set "
                                         r"pretrain.init: base to start a new lineage"):
        promotion.continued(catalog, store, "medtest", changed)
