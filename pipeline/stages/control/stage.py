"""The control run: the base model continued on general text only, with the adapted model's
recipe and budget (the "not DAPT" baseline of Gururangan et al., "Don't Stop Pretraining", 2020).

Continuing a model on *any* text can change its scores (here the base is a dequantised 4-bit
instruction-tuned model, and more training helps it on every text), so the effect of the domain
data is adapted vs control, not only adapted vs base. The control is on the same footing as the
adapted model in three ways:

- **Text**: it reads the ``general`` step's artifact (``IngestOutput``), the general sources
  cleaned by ingest's own code with one fixed policy (``pipeline/stages/general/stage.py``):
  the same normalisation and PII placeholders as the held-out text it is scored on.
- **Checkpoint**: with ``select_checkpoint`` it chooses its eval point on its own dev text by
  the adapted model's rule (``worker_io.choose``; without general replay text the rule is the
  lowest dev loss); the manifest names the chosen step.
- **Document starts**: the documents are cut into passages (``passages.py``), so it sees
  document starts at a rate comparable with the domains'; ``document_starts`` in its manifest
  and in pretrain's counts the starts in the sequences each trained on.

Which general text: the ``general`` artifact's train shards (held-out hash ``md5(doc_id:seed)``
>= ``HOLD_OUT`` = 0.5; checked here on every document) and the dev part of its held-out half.
Ingest's ``eval_fraction`` is at most 0.5, so no domain's held-out general text, dev or test, is
ever in the control's training data.

Its key is the recipe (every ``PretrainConfig`` field but the domain-only ones), the base model
and the ``general`` artifact, which is keyed by the general files, its policy and code, not the
domain: every domain with the same recipe and general sources shares one control artifact.
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

from pipeline.config import PretrainConfig
from pipeline.engine.artifacts import Artifact, Manifest
from pipeline.stages.control import passages
from pipeline.stages.general.stage import HOLD_OUT
from pipeline.stages.ingest.artifact import IngestOutput
from pipeline.stages.models import stage as models

log = logging.getLogger("dapt")

STAGE = "control"
# Fields that do not change what the control learns: which domain sources to replay, how many
# processes pack, the general-loss limit of the checkpoint choice (the control has no separate
# general stream), and the domain's lineage settings.
UNVERSIONED = ("mixture", "num_pack_workers", "select_max_general_degradation", "control",
               "init", "earlier_share")


def recipe(config: PretrainConfig) -> PretrainConfig:
    """The control's own config: the recipe with the domain-only settings at their defaults."""
    defaults = PretrainConfig.model_fields
    return config.model_copy(update={f: defaults[f].get_default(call_default_factory=True)
                                     for f in UNVERSIONED})


def check_hold_out(con: duckdb.DuckDBPyConnection, docs: str, seed: int) -> None:
    """Raise if a training document of ``docs`` could be in a domain's held-out slice."""
    bad = con.execute(
        f"SELECT count(*), min(doc_id) FROM {docs} WHERE md5_number(doc_id || ':{seed}') "
        f"% 1000000 < {round(HOLD_OUT * 1_000_000)}").fetchall()[0]
    if bad[0]:
        raise RuntimeError(f"control: {bad[0]} training document(s) (e.g. {bad[1]!r}) hash "
                           f"below HOLD_OUT {HOLD_OUT}: a domain may hold them out")


def general_text(general: IngestOutput, seed: int, data_dir: Path) -> dict[str, Path]:
    """``train`` and ``dev`` passages of the general artifact as Parquet files in
    ``data_dir`` (doc_id, source, text): train from its train shards (checked against the
    held-out rule), dev from its held-out half's dev part."""
    columns = ["doc_id", "source", "text"]
    parts = {"train": pa.concat_tables(pq.read_table(f, columns=columns)
                                       for f in general.train_shards),
             "dev": general.held_out_parts(columns)["general"]["dev"]}
    con = duckdb.connect()
    out = {}
    for part, table in parts.items():
        con.register(f"{part}_docs", table.append_column(
            "ord", pa.array(range(table.num_rows), pa.int64())))
        if part == "train":
            check_hold_out(con, "train_docs", seed)
        out[part] = data_dir / f"staging-control-{part}.parquet"
        passages.cut(con, f"{part}_docs", out[part])
    con.close()
    return out


def build(config: PretrainConfig, general: IngestOutput, ingest_seed: int, base_dir: Path,
          out_dir: Path) -> Manifest:
    from pipeline.stages.pretrain import stage as pretrain

    config = recipe(config)
    names = general.source_names
    base_config = json.loads((base_dir / "config.json").read_text())
    eos_id = base_config["eos_token_id"]

    def pack_fn(data_dir: Path) -> dict[str, Any]:
        data_dir.mkdir(parents=True, exist_ok=True)
        text = general_text(general, ingest_seed, data_dir)
        try:
            # every passage is "domain" text here: the dev stream is held-out general text
            return pretrain.pack(config, [text["train"]], pq.read_table(text["dev"]), names,
                                 set(), base_dir / "tokenizer.json", eos_id, data_dir)
        finally:
            for path in text.values():
                path.unlink(missing_ok=True)

    packed = pretrain.packed_streams(config, out_dir, pack_fn)
    trained = pretrain.train(config, packed, out_dir, tok_dir=base_dir, base_dir=base_dir,
                             base_tok_dir=None, eos_id=eos_id,
                             pad_id=base_config.get("pad_token_id") or eos_id, step="control")
    summary = trained["summary"]
    selection = summary.selection
    return Manifest(
        stage=STAGE,
        counts={"train_tokens": packed["train"]["tokens"],
                "train_docs": packed["train"]["documents"],
                "train_seqs": packed["train"]["sequences"],
                "document_starts": packed.get("document_starts", 0),
                "steps": summary.steps, "tokens_trained": summary.tokens_trained,
                "params": summary.params, "world_size": summary.world_size,
                **({"chosen_step": selection.chosen_step} if selection else {})},
        metrics=summary.metrics(),
        extra={"base_model": config.base_model, "mode": config.mode, "sources": names,
               "hold_out": HOLD_OUT, "passage_chars": passages.PASSAGE_CHARS,
               "precision": "bf16" if trained["bf16"] else "fp32", "tokenizer": "base",
               "checkpoint": (f"step {selection.chosen_step}" if selection
                              else f"step {summary.steps} (the last)"),
               "selection": selection.model_dump() if selection else None},
    )


@dataclass(frozen=True)
class ControlJob:
    """What the control step trains with: the recipe and ingest's held-out seed (the rule its
    training text is checked against)."""

    pretrain: PretrainConfig
    ingest_seed: int


@dataclass(frozen=True)
class Inputs:
    """What the step reads: the base model's HF directory and the general text."""

    base: Path
    general: IngestOutput

    @classmethod
    def of(cls, inputs: Mapping[str, Artifact]) -> Inputs:
        return cls(models.hf_dir(inputs["models"]), IngestOutput(inputs["general"]))


def run(job: ControlJob, inputs: Mapping[str, Artifact], out_dir: Path) -> Manifest:
    """The step (it trains: minutes to hours)."""
    given = Inputs.of(inputs)
    log.info("control: training the base model on general text only (%d steps); every domain "
             "with this recipe reuses it", job.pretrain.max_steps)
    return build(job.pretrain, given.general, job.ingest_seed, given.base, out_dir)
