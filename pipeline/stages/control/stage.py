"""The control run: the base model continued on general text only, with the adapted model's
recipe and budget (the "not DAPT" baseline of Gururangan et al., "Don't Stop Pretraining", 2020).

Continuing a model on *any* text can change its scores (here the base is a dequantised 4-bit
instruction-tuned model, and more training helps it on every text), so the effect of the domain
data is adapted vs control, not only adapted vs base. The control uses no domain data, so its
artifact key is the recipe (every ``PretrainConfig`` field but the mixture), the base model, the
general source files and the held-out rule: every domain with the same recipe and general
sources shares one control artifact (``artifacts/control/<key>/``), built once by the first run
that needs it.

Which general text: the control never trains on a document whose held-out hash (ingest's rule,
``md5(doc_id:seed)``) falls below ``HOLD_OUT`` = 0.5. Ingest's ``eval_fraction`` must be below
0.5, so no domain's held-out general text, dev or test, is ever in the control's training data.
The documents are read as ingest reads them (same ids) but not filtered or deduplicated: the
control is a recipe baseline, and the general sample corpus is clean news.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import PretrainConfig, SourceConfig
from pipeline.engine.artifacts import (
    Artifact,
    DigestCache,
    Manifest,
)
from pipeline.stages.models import stage as models

log = logging.getLogger("dapt")

STAGE = "control"
HOLD_OUT = 0.5
# Fields that do not change what the control learns: which domain sources to replay, and how
# many processes pack.
UNVERSIONED = ("mixture", "num_pack_workers", "select_checkpoint",
               "select_max_general_degradation", "control", "init", "earlier_share")


def recipe(config: PretrainConfig) -> PretrainConfig:
    """The control's own config: the recipe with the domain-only settings at their defaults."""
    defaults = PretrainConfig.model_fields
    return config.model_copy(update={f: defaults[f].get_default(call_default_factory=True)
                                     for f in UNVERSIONED})


def key_inputs(sources: list[tuple[SourceConfig, list[Path]]], ingest_seed: int,
               cache: DigestCache | None = None) -> dict[str, Any]:
    """What the control's key hashes besides the recipe, the code and the base model: the
    general files (by content, through ``cache``) and the held-out rule."""
    from pipeline.domains import source_digest

    return {"hold_out": [HOLD_OUT, ingest_seed],
            **{f"source:{s.name}": [s.model_dump(mode="json", exclude={"path"}),
                                    [source_digest(p, cache) for p in paths]]
               for s, paths in sources}}


def general_text(sources: list[tuple[SourceConfig, list[Path]]], ingest_seed: int
                 ) -> dict[str, pa.Table]:
    """``train`` (held-out hash >= HOLD_OUT) and ``dev`` (below it) documents of the general
    sources, with columns text and source, in the files' order."""
    from pipeline.stages.ingest import read_source_file

    con = duckdb.connect()
    tables = [read_source_file(con, s, p) for s, paths in sources for p in paths]
    con.register("docs", pa.concat_tables(tables))
    split = (f"md5_number(doc_id || ':{ingest_seed}') % 1000000 "
             f"< {round(HOLD_OUT * 1_000_000)}")
    out = {}
    for part, where in (("train", f"NOT ({split})"), ("dev", split)):
        out[part] = con.sql(
            f"SELECT text, source FROM docs WHERE reason IS NULL AND text IS NOT NULL "
            f"AND length(trim(text)) > 0 AND {where}").to_arrow_table()
    return out


def build(config: PretrainConfig, sources: list[tuple[SourceConfig, list[Path]]],
          ingest_seed: int, base_dir: Path, out_dir: Path) -> Manifest:
    from pipeline.stages.pretrain import stage as pretrain

    config = recipe(config)
    text = general_text(sources, ingest_seed)
    names = sorted({s.name for s, _ in sources})

    def pack_fn(data_dir: Path) -> dict[str, Any]:
        data_dir.mkdir(parents=True, exist_ok=True)
        train_file = data_dir / "staging-general.parquet"
        pq.write_table(text["train"], train_file)
        try:
            # every document is "domain" text here: the dev stream is held-out general text
            return pretrain.pack(config, [train_file], text["dev"], names, set(),
                                 base_dir / "tokenizer.json", eos_id, data_dir)
        finally:
            train_file.unlink(missing_ok=True)

    base_config = json.loads((base_dir / "config.json").read_text())
    eos_id = base_config["eos_token_id"]
    packed = pretrain.packed_streams(config, out_dir, pack_fn)
    trained = pretrain.train(config, packed, out_dir, tok_dir=base_dir, base_dir=base_dir,
                             base_tok_dir=None, eos_id=eos_id,
                             pad_id=base_config.get("pad_token_id") or eos_id)
    summary = trained["summary"]
    return Manifest(
        stage=STAGE,
        counts={"train_tokens": packed["train"]["tokens"],
                "train_docs": packed["train"]["documents"], "steps": summary.steps,
                "tokens_trained": summary.tokens_trained, "params": summary.params},
        metrics=summary.metrics(),
        extra={"base_model": config.base_model, "sources": names, "hold_out": HOLD_OUT},
    )


@dataclass(frozen=True)
class ControlJob:
    """What the control step trains on: the recipe, the general sources with their resolved
    files, and ingest's held-out seed."""

    pretrain: PretrainConfig
    sources: list[tuple[SourceConfig, list[Path]]]
    ingest_seed: int


@dataclass(frozen=True)
class Inputs:
    """What the step reads: the base model's HF directory."""

    base: Path

    @classmethod
    def of(cls, inputs: Mapping[str, Artifact]) -> Inputs:
        return cls(models.hf_dir(inputs["models"]))


def run(job: ControlJob, inputs: Mapping[str, Artifact], out_dir: Path) -> Manifest:
    """The step (it trains: minutes to hours)."""
    given = Inputs.of(inputs)
    log.info("control: training the base model on general text only (%d steps); every domain "
             "with this recipe reuses it", job.pretrain.max_steps)
    return build(job.pretrain, job.sources, job.ingest_seed, given.base, out_dir)
