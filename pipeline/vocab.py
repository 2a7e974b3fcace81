"""Vocabulary extension of a base model's byte-level BPE tokenizer, and the matching embeddings.

``extend`` adds up to N domain tokens to a base tokenizer *as BPE merges*, not as "added tokens":
added tokens are matched as literal strings before pre-tokenization, so they would split words
they occur inside and bypass the base model's segmentation. A new merge only ever joins two
adjacent pieces, so the extended tokenizer still round-trips every text exactly and leaves every
base token id unchanged.

Choosing the tokens: the domain text is pre-tokenized into words with the base tokenizer's own
pre-tokenizer and counted. A frequent word the base model splits into pieces ``p1 .. pk`` becomes
one token through the chain of merges ``(p1, p2)``, ``(p1p2, p3)``, ...; its value is the tokens it
saves (``count * (k - 1)``) per new vocabulary entry it needs (shared prefixes are free). Words are
taken greedily by that value, re-evaluated as prefixes get added, until N tokens are used. The new
merges rank after every base merge, so base segmentation runs first and the new merges only join
its output.

``init_new_embeddings`` is the ChipNeMo / NeMo DAPT initialisation: each new token's input and
output embedding is the mean of the base model's embeddings of the pieces the base tokenizer
splits it into.
"""

from __future__ import annotations

import heapq
import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer


def word_counts(tok: Tokenizer, texts: Iterable[str]) -> Counter[str]:
    """Words (in the tokenizer's pre-tokenized form, e.g. ``Ġword``) and their counts."""
    pre = tok.pre_tokenizer
    counts: Counter[str] = Counter()
    for text in texts:
        if tok.normalizer is not None:
            text = tok.normalizer.normalize_str(text)
        counts.update(w for w, _ in pre.pre_tokenize_str(text))
    return counts


def _merges(model: dict[str, Any]) -> list[tuple[str, str]]:
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]


def choose_merges(tok: Tokenizer, counts: Counter[str], num_new_tokens: int, min_frequency: int
                  ) -> list[tuple[str, str]]:
    """New merges (in rank order) that add at most ``num_new_tokens`` tokens."""
    vocab = set(tok.get_vocab())
    model = json.loads(tok.to_str())["model"]
    existing = set(_merges(model))
    pieces = {}
    for word, count in counts.items():
        if count >= min_frequency and word not in vocab:
            split = [t.value for t in tok.model.tokenize(word)]
            if len(split) > 1:
                pieces[word] = split

    def chain_of(word: str) -> tuple[list[tuple[str, str]], int]:
        parts, steps, new = pieces[word], [], 0
        prefix = parts[0]
        for part in parts[1:]:
            if (prefix, part) not in existing:
                steps.append((prefix, part))
            prefix += part
            new += prefix not in vocab
        return steps, new

    def value(word: str, new: int) -> float:
        return counts[word] * (len(pieces[word]) - 1) / max(new, 1)

    heap = [(-value(word, chain_of(word)[1]), word) for word in pieces]
    heapq.heapify(heap)
    chosen: list[tuple[str, str]] = []
    added = 0
    while heap and added < num_new_tokens:
        neg, word = heapq.heappop(heap)
        steps, new = chain_of(word)
        if new == 0 and not steps:
            continue
        current = value(word, new)
        if current > -neg + 1e-9:  # stale: prefixes it needs were added since it was pushed
            heapq.heappush(heap, (-current, word))
            continue
        if added + new > num_new_tokens:
            continue
        for left, right in steps:
            chosen.append((left, right))
            existing.add((left, right))
            if left + right not in vocab:
                vocab.add(left + right)
                added += 1
    return chosen


def extend(base: Tokenizer, merges: list[tuple[str, str]]) -> Tokenizer:
    """``base`` with ``merges`` appended (lowest priority) and their results as new ids."""
    spec = json.loads(base.to_str())
    model = spec["model"]
    if model["type"] != "BPE":
        raise ValueError(f"vocabulary extension needs a BPE base tokenizer, got {model['type']}")
    vocab: dict[str, int] = model["vocab"]
    next_id = max([*vocab.values(), *(t["id"] for t in spec.get("added_tokens", []))]) + 1
    as_strings = bool(model["merges"]) and isinstance(model["merges"][0], str)
    for left, right in merges:
        model["merges"].append(f"{left} {right}" if as_strings else [left, right])
        if left + right not in vocab:
            vocab[left + right] = next_id
            next_id += 1
    return Tokenizer.from_str(json.dumps(spec))


def new_token_ids(base: Tokenizer, extended: Tokenizer) -> list[int]:
    base_vocab = base.get_vocab()
    return sorted(i for t, i in extended.get_vocab().items() if t not in base_vocab)


def save_extended(extended: Tokenizer, base_dir: Path, out_dir: Path) -> None:
    """The extended ``tokenizer.json`` plus the base's other tokenizer files (specials, chat)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for pattern in ("tokenizer_config.json", "special_tokens_map.json", "chat_template*"):
        for path in base_dir.glob(pattern):
            (out_dir / path.name).write_bytes(path.read_bytes())
    extended.save(str(out_dir / "tokenizer.json"))


def init_new_embeddings(model: Any, base: Tokenizer, extended: Tokenizer) -> int:
    """Resize ``model`` (a transformers causal LM trained with ``base``) to ``extended``'s vocab
    and set each new token's input and output embedding to the mean of its base pieces'.
    Returns the number of tokens initialised."""
    import torch

    new_ids = new_token_ids(base, extended)
    rows = model.get_input_embeddings().weight.shape[0]
    size = max(rows, extended.get_vocab_size())
    if size != rows:
        model.resize_token_embeddings(size, mean_resizing=False)
    inp = model.get_input_embeddings().weight
    out = model.get_output_embeddings()
    out = out.weight if out is not None and out.weight is not inp else None
    with torch.no_grad():
        for i in new_ids:
            pieces = [base.token_to_id(t.value)
                      for t in base.model.tokenize(extended.id_to_token(i))]
            inp[i] = inp[pieces].mean(dim=0)
            if out is not None:
                out[i] = out[pieces].mean(dim=0)
    return len(new_ids)
