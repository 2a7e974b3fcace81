"""Scoring held-out documents: each document's NLL under a model, in full and with the spans a
model can predict from format alone masked out, after a context token chosen on the dev part.

``score_documents`` runs a model over each document on its own: the document's tokens after one
context token, in windows of the training sequence length, every token predicted once.

**Masked scoring.** Ingest's PII redaction writes typed placeholders (``<EMAIL>``, ``<PERSON>``,
``<PERSON_1f2e3d4c>`` under the ``hash`` policy; pipeline/stages/ingest/pii.py) and keeps
non-personal URLs. A model continued on the corpus learns these strings' format: a real gain on
the corpus, but not knowledge of the domain. So every document is also scored with those spans
masked. A token is *masked* when at least half of its characters (the tokenizer's offset
mapping) lie inside a placeholder or URL span; ties are masked, so the " <" of " <EMAIL>" goes
with its placeholder. A masked token contributes no NLL, and the spans' UTF-8 bytes leave the
byte count. A token mostly outside a span counts whole (its few characters inside a span are
not in the byte count), so a span's edges can move a fraction of a token between the two;
placeholders and URLs start and end at word boundaries, where byte-level BPE splits anyway.
The ``mask`` policy's ``XXXX`` keeps the layout of the value and is not masked here.

**Context token.** A document's first token is predicted from one context token. Today's was
the tokenizer's EOS, which for SmolLM2 is ``<|im_end|>`` (a chat turn's end), not its
end-of-text. ``choose_context`` tries the EOS, the BOS and ``<|endoftext|>`` (each in the
vocabulary, each id once) with the adapted model on the first window of a capped sample of
*dev* documents and keeps the one with the lowest total NLL; the test documents are then scored
after it by every model. The choice is never made on test text.

**Precision.** ``evaluate.precision: bf16`` runs every forward pass under ``torch.autocast``
with bfloat16 (matrix products in bf16; the logits are cast to fp32 before log-softmax and the
sums are fp32). The precision is part of each memo key, so fp32 scores never answer for bf16.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, NamedTuple, get_args

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from pipeline.config import PII_TYPES, Precision
from pipeline.engine import progress
from pipeline.stages.evaluate.memo import Memo, digest

# <TYPE> (redact) or <TYPE_xxxxxxxx> (hash), as pipeline/stages/ingest/pii.py renders them
PLACEHOLDER = re.compile(r"<(?:" + "|".join(t.upper() for t in PII_TYPES) + r")(?:_[0-9a-f]{8})?>")
# ingest's URL pattern (pii.TYPES["url"], kept equal by a test): importing pii here would put
# the redaction code (and its NER) into evaluate's code version
URL = re.compile(r"\b(?:https?://|www\.)[^\s<>\"']*[^\s<>\"'.,;:!?)\]]|\b(?:[A-Za-z0-9-]+\.)+"
                 r"(?:com|org|net|edu|gov|io|info|co|uk|de|fr|nl|eu|us|ca|au|ly|gl|me)/[^\s<>\"']*"
                 r"[^\s<>\"'.,;:!?)\]]")
ENDOFTEXT = "<|endoftext|>"


def autocast(device: torch.device, precision: str) -> AbstractContextManager[Any]:
    """The context every scoring forward pass runs in: nothing for fp32, bf16 autocast for
    ``bf16`` (``evaluate.precision``)."""
    if precision not in get_args(Precision):
        raise ValueError(f"evaluate.precision must be one of {', '.join(get_args(Precision))}, "
                         f"got {precision!r}")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


class DocScore(NamedTuple):
    """One document's score; ``(nll, tokens)`` first, so it reads as the old pair."""

    nll: float  # nats, every token
    tokens: int
    nll_masked: float  # nats, the tokens outside placeholder and URL spans
    tokens_masked: int  # how many tokens the masked figures score
    bytes: int  # UTF-8 bytes of the document
    bytes_masked: int  # UTF-8 bytes outside placeholder and URL spans
    first_nll: float  # the first token's NLL, predicted from the context token alone


def masked_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the placeholders and URLs in ``text``, merged, in order."""
    found = sorted((m.start(), m.end()) for rx in (PLACEHOLDER, URL) for m in rx.finditer(text))
    merged: list[tuple[int, int]] = []
    for start, end in found:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def token_kept(offsets: Sequence[Sequence[int]], spans: list[tuple[int, int]]) -> np.ndarray:
    """True for each token the masked figures score: less than half of its characters inside
    ``spans`` (a token without characters is kept)."""
    off = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    inside = np.zeros(len(off), dtype=np.int64)
    for start, end in spans:
        inside += np.clip(np.minimum(off[:, 1], end) - np.maximum(off[:, 0], start), 0, None)
    width = off[:, 1] - off[:, 0]
    return ~((width > 0) & (2 * inside >= width))


@torch.no_grad()
def score_documents(model: torch.nn.Module, tok: PreTrainedTokenizerBase, texts: list[str],
                    window: int, batch_size: int, context: int | None = None,
                    max_windows: int | None = None, precision: str = "fp32") -> list[DocScore]:
    """Each document's score after token id ``context`` (None: the EOS); every token of the
    first ``max_windows`` windows (None: all) is predicted once; forward passes in
    ``precision`` (``autocast``)."""
    ctx = tok.eos_token_id if context is None else context
    enc = tok(texts, add_special_tokens=False, return_offsets_mapping=True)
    kept = [token_kept(o, masked_spans(t)) for t, o in zip(texts, enc["offset_mapping"],
                                                           strict=True)]
    pieces: list[tuple[int, int, list[int]]] = []  # (doc, first token, [context] + tokens)
    for d, ids in enumerate(enc["input_ids"]):
        seq = [ctx, *ids]
        pieces += [(d, s, seq[s:s + window + 1]) for s in range(0, len(ids), window)[:max_windows]]
    pieces.sort(key=lambda p: len(p[2]))  # similar lengths per batch: less padding
    acc = np.zeros((len(texts), 4))  # nll, tokens, masked nll, masked tokens
    first = np.zeros(len(texts))
    device = next(model.parameters()).device
    model.eval()
    bar = progress.track("evaluate: scoring", -(-len(pieces) // batch_size), "batches")
    for i in range(0, len(pieces), batch_size):
        chunk = pieces[i:i + batch_size]
        width = max(len(p) for _, _, p in chunk)
        ids = torch.full((len(chunk), width), tok.pad_token_id)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (_, _, p) in enumerate(chunk):
            ids[row, :len(p)] = torch.tensor(p)
            mask[row, :len(p)] = 1
        ids, mask = ids.to(device), mask.to(device)
        with autocast(device, precision):
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        # over the flattened (tokens x vocabulary) logits: the log-softmax runs along
        # contiguous rows (over a transposed view it took twice as long on a CPU)
        nll = (torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none"
        ).view(len(chunk), -1) * mask[:, 1:]).cpu()
        for row, (d, start, p) in enumerate(chunk):
            n = len(p) - 1
            keep = torch.from_numpy(kept[d][start:start + n])
            acc[d] += (nll[row].sum().item(), n, nll[row, :n][keep].sum().item(),
                       int(keep.sum()))
            if start == 0:
                first[d] = nll[row, 0].item()
        bar.update(loss=nll.sum().item() / max(1, mask[:, 1:].sum().item()))
    bar.close()
    out = []
    for d, text in enumerate(texts):
        size = len(text.encode("utf-8"))
        hidden = sum(len(text[s:e].encode("utf-8")) for s, e in masked_spans(text))
        out.append(DocScore(float(acc[d, 0]), int(acc[d, 1]), float(acc[d, 2]), int(acc[d, 3]),
                            size, size - hidden, float(first[d])))
    return out


def context_candidates(tok: PreTrainedTokenizerBase) -> dict[str, int]:
    """{token: id} of the context tokens to try: the EOS (the old context) first, the BOS and
    ``<|endoftext|>`` when in the vocabulary; each id once."""
    vocab = tok.get_vocab()
    out: dict[str, int] = {}
    for token in (tok.eos_token, tok.bos_token, ENDOFTEXT):
        if token is not None and token in vocab and vocab[token] not in out.values():
            out[token] = vocab[token]
    return out


def choose_context(model: torch.nn.Module, tok: PreTrainedTokenizerBase, dev_texts: list[str],
                   window: int, batch_size: int, precision: str = "fp32") -> dict[str, Any]:
    """The context token after which ``model`` predicts the first window of ``dev_texts`` with
    the lowest total NLL (the EOS when there is nothing to choose); each candidate's figures:
    {token, dev_docs, candidates: {token: {nll_per_token, first_token_nll}}}."""
    candidates = context_candidates(tok)
    figures: dict[str, dict[str, float]] = {}
    if len(candidates) > 1 and dev_texts:
        for token, id_ in candidates.items():
            s = score_documents(model, tok, dev_texts, window, batch_size, id_, max_windows=1,
                                precision=precision)
            figures[token] = {"nll_per_token": sum(x.nll for x in s) / max(1, sum(
                x.tokens for x in s)), "first_token_nll": float(np.mean([x.first_nll for x in s]))}
        chosen = min(figures, key=lambda t: figures[t]["nll_per_token"])  # ties: the EOS
    else:
        chosen = next(iter(candidates), tok.eos_token)
    return {"token": chosen, "dev_docs": len(dev_texts), "candidates": figures}


def context_id(tok: PreTrainedTokenizerBase, token: str) -> int:
    """``token``'s id in ``tok``, or its EOS where ``tok`` lacks it."""
    return tok.get_vocab().get(token, tok.eos_token_id)


def score_models(dirs: Mapping[str, Path], texts: list[str], dev_texts: list[str], window: int,
                 batch_size: int, device: torch.device, context: dict[str, Any] | None = None,
                 memo: Memo | None = None, precision: str = "fp32"
                 ) -> tuple[dict[str, list[DocScore]], dict[str, Any]]:
    """Every model's scores of ``texts``, all after the context token that the first model
    (the adapted one) predicts ``dev_texts`` best after (or ``context``, chosen before); and
    that choice. With a ``memo`` a model's scores of the same texts by the same code in the
    same ``precision`` are reused (``memo.py``)."""
    scores: dict[str, list[DocScore]] = {}
    for name, path in dirs.items():
        if context is None:
            with _loaded(path, device) as (model, tok):
                context = choose_context(model, tok, dev_texts, window, batch_size, precision)

        def compute(path: Path = path, token: str = context["token"]) -> list[DocScore]:
            with _loaded(path, device) as (model, tok):
                return score_documents(model, tok, texts, window, batch_size,
                                       context_id(tok, token), precision=precision)
        if memo is None:
            scores[name] = compute()
            continue
        inputs = {"texts": digest(texts), "context": context["token"], "window": window,
                  "batch_size": batch_size, "device": device.type, "precision": precision}
        scores[name] = memo.recall("heldout", name, path, inputs, __name__, compute,
                                   lambda s: [list(d) for d in s],
                                   lambda rows: [DocScore(*r) for r in rows])
    assert context is not None, "score_models needs at least one model"
    return scores, context


@contextmanager
def _loaded(path: Path, device: torch.device) -> Iterator[tuple[Any, Any]]:
    """The model and tokenizer in ``path``, freed on exit."""
    model = AutoModelForCausalLM.from_pretrained(path).to(device)
    try:
        yield model, AutoTokenizer.from_pretrained(path)
    finally:
        del model
        gc.collect()
