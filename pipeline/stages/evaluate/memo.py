"""Each model's scores kept for reuse, the way lm-evaluation-harness's ``--use_cache`` keeps a
model's answers: scoring a 135M model on the held-out text and the zero-shot tasks takes minutes
per model on a CPU, and a rerun that changes only the adapted model (a new replay share, one
more seed, an evaluate setting that is not a scoring one) scores the same base model and control
on the same text again.

Every evaluate build writes each model's scores under ``memo/`` of its own directory, named by
a key over everything the scores depend on:

- the model's *content*: the digests of every file of its HF directory (weights, config,
  tokenizer) except Markdown (the model card), so a path or a rebuild never fools it;
- the exact input (the texts, the context token, the window; the tasks' prompts and choices)
  and the scoring parameters (batch size, device);
- the scoring code: the import closure of the module that scores (``code_version``), and the
  torch and transformers versions.

A later build looks for the key in its own ``memo/`` and then in every other build of the
evaluate step in the same store (published artifacts and the kept outputs of failed builds,
e.g. a run whose forgetting gate failed), copies a hit into its own ``memo/`` (so each artifact
holds every score it used) and reports which models it reused (``evaluation["reused_scores"]``).
A file is written whole or not at all (``write_atomic``), so a build killed while scoring
leaves nothing that a later one could half-read.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
import transformers

from pipeline.engine.artifacts import file_digest, stable_hash
from pipeline.engine.versions import code_version
from pipeline.files import write_atomic

MEMO = "memo"
T = TypeVar("T")


def model_fingerprint(model_dir: Path) -> str:
    """A hash over the relative name and content digest of every file in ``model_dir`` but
    Markdown."""
    return stable_hash({str(p.relative_to(model_dir)): file_digest(p)
                        for p in sorted(Path(model_dir).rglob("*"))
                        if p.is_file() and p.suffix != ".md"}, length=64)


def digest(value: Any) -> str:
    """The full-length ``stable_hash`` of ``value`` (a memo key is a file name, not a prefix)."""
    return stable_hash(value, length=64)


class Memo:
    """The scores of one evaluate build (``out_dir``), found in or added to the step's memo."""

    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)
        self.reused: dict[str, str] = {}  # "<kind> <label>" -> the build it came from
        self._fingerprints: dict[Path, str] = {}

    def key(self, kind: str, model_dir: Path, inputs: Any, module: str) -> str:
        """The key of ``kind`` scores of the model in ``model_dir`` on ``inputs`` by the code
        of ``module``."""
        model_dir = Path(model_dir).resolve()
        if model_dir not in self._fingerprints:
            self._fingerprints[model_dir] = model_fingerprint(model_dir)
        return digest({"kind": kind, "model": self._fingerprints[model_dir],
                       "inputs": digest(inputs), "code": code_version(module),
                       "torch": torch.__version__, "transformers": transformers.__version__})

    @staticmethod
    def label(model_dir: Path) -> str:
        """A model's name in ``reused``: its artifact (``pretrain/<key>``) for an HF export."""
        return f"{model_dir.parent.parent.name}/{model_dir.parent.name}"

    def note(self) -> str:
        """The report's words on the reused scores (empty when every model was scored)."""
        if not self.reused:
            return ""
        return (" Scores reused from earlier evaluate builds (same model files, same text, same "
                "scoring code): " + "; ".join(f"{what} from {build}"
                                               for what, build in self.reused.items()) + ".")

    def _found(self, name: str) -> Path | None:
        own = self.out_dir / MEMO / name
        if own.is_file():
            return own
        return next((p for p in sorted(self.out_dir.parent.glob(f"*/{MEMO}/{name}"))
                     if p.parent.parent != self.out_dir), None)

    def recall(self, kind: str, label: str, model_dir: Path, inputs: Any, module: str,
               compute: Callable[[], T], encode: Callable[[T], Any],
               decode: Callable[[Any], T]) -> T:
        """The scores under their key (reused, and copied into this build's memo) or
        ``compute()``d and written there; ``encode``/``decode`` map them to and from JSON."""
        name = f"{kind}-{self.key(kind, model_dir, inputs, module)}.json"
        found = self._found(name)
        if found is not None:
            text = found.read_text(encoding="utf-8")
            value = decode(json.loads(text))
            if found.parent.parent != self.out_dir:
                self.reused[f"{kind} {label}"] = found.parent.parent.name
                self._write(name, text)
            return value
        value = compute()
        self._write(name, json.dumps(encode(value)))
        return value

    def _write(self, name: str, text: str) -> None:
        (self.out_dir / MEMO).mkdir(parents=True, exist_ok=True)
        write_atomic(self.out_dir / MEMO / name, text)
