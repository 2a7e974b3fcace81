"""The general step: the general sources (``general: true``) through the ingest stage's own
code with one fixed policy (``policy``), so the control run trains on text cleaned as every
domain's held-out general text is, whichever domain asks for it.

The policy is ``IngestConfig``'s defaults (normalisation, mojibake repair, length, quality and
language filters, exact and near dedup) except:

- PII: every type a pattern finds (``GENERAL_PII_TYPES``: no NER), each redacted to its
  placeholder (``<EMAIL>``, ``<URL>``, ...). Domains differ in the types they redact (medical
  adds url, mrn, person_date, address and the NER type person; finance and legal keep the
  defaults): one shared control cannot match them all, so it sees every placeholder a pattern
  can produce. ``person`` and ``location`` stay out: they need the NER model (minutes of CPU
  per thousand news articles) and the domains disagree on them (medical redacts names, finance
  and legal keep them), so the names stay as written, as in the base model's own training.
- The held-out slice is ``HOLD_OUT`` = 0.5 of the documents by ingest's rule
  (``md5(doc_id:seed)``, the domain's ``ingest.seed``): the control trains on the train
  shards (hash >= 0.5) and chooses its checkpoint on the slice's dev part. Ingest's
  ``eval_fraction`` is at most 0.5, so no domain's held-out general document is ever in the
  control's training text, and since a domain's test part is the slice's non-dev part (the
  same second hash), the control's dev documents are never in any domain's test part.
- Decontamination runs against the held-out half only (no domain's test sets: the step is
  domain-independent); so, as in a domain's ingest, no training document shares a 13-gram
  with held-out text.

The artifact is an ingest artifact (same files, read through ``IngestOutput``) stored as
``artifacts/general/<key>/``; its key is the general sources' files, this policy and the
code (ingest's and this module's), never the domain.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from pipeline.config import (
    DecontaminationConfig,
    HeldOutConfig,
    IngestConfig,
    PiiConfig,
    SourceConfig,
)
from pipeline.engine.artifacts import Artifact, Manifest
from pipeline.stages import ingest

STAGE = "general"
HOLD_OUT = 0.5
GENERAL_PII_TYPES = ["email", "phone", "ip", "credit_card", "iban", "ssn", "url", "mrn",
                     "person_date", "address"]


def policy(sources: list[SourceConfig], seed: int) -> IngestConfig:
    """The fixed ingest config of the general text: ``sources`` (paths resolved) and the
    held-out seed; everything else is the same for every domain."""
    return IngestConfig(
        sources=sources, pii=PiiConfig(types=GENERAL_PII_TYPES), eval_fraction=HOLD_OUT,
        decontamination=DecontaminationConfig(test_sets=[]), seed=seed,
        # by id, as every domain holds its general documents out (the control's guarantee)
        held_out=HeldOutConfig(group_by="id"))


def run(config: IngestConfig, inputs: dict[str, Artifact], out_dir: Path,
        map_shards: Callable[[Callable, list[tuple]], list] | None = None) -> Manifest:
    """Ingest ``config`` (``policy``'s) into ``out_dir`` with the ingest stage's ``run``."""
    built = ingest.run(config, {}, out_dir, map_shards=map_shards)
    return dataclasses.replace(built, stage=STAGE, extra={**built.extra, "hold_out": HOLD_OUT,
                                                          "pii_types": GENERAL_PII_TYPES})
