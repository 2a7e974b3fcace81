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

``init_new_embeddings`` sets each new token's input embedding, and its output embedding when the
head is untied, to the mean of the base model's embeddings of the pieces the base tokenizer splits
it into (ChipNeMo averages the input rows this way; it zero-initialises an untied head instead).
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


def _apply(parts: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """BPE on ``parts``: merge the lowest-ranked adjacent pair until none has a rank."""
    parts = list(parts)
    while len(parts) > 1:
        best = min(range(len(parts) - 1),
                   key=lambda i: ranks.get((parts[i], parts[i + 1]), 1 << 62))
        if (parts[best], parts[best + 1]) not in ranks:
            break
        parts[best:best + 2] = [parts[best] + parts[best + 1]]
    return parts


def check_base(tok: Tokenizer, name: str) -> None:
    """Vocabulary extension needs a byte-level BPE base: say why another base cannot work."""
    model = json.loads(tok.to_str())["model"]
    problems = []
    if model["type"] != "BPE":
        problems.append(f"its model is {model['type']}, not BPE")
    elif model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        problems.append("its BPE marks subwords (continuing_subword_prefix/end_of_word_suffix)")
    elif model.get("byte_fallback"):
        problems.append("its BPE uses byte_fallback pieces")
    if tok.pre_tokenizer is None:
        problems.append("it has no pre-tokenizer to split words")
    if problems:
        raise ValueError(f"tokenizer.extend: cannot extend the base tokenizer of {name}: "
                         + "; ".join(problems) + ". Set tokenizer.extend.num_new_tokens: 0")


def choose_merges(tok: Tokenizer, counts: Counter[str], num_new_tokens: int, min_frequency: int
                  ) -> list[tuple[str, str]]:
    """New merges (in rank order) that add at most ``num_new_tokens`` tokens; every word they
    were chosen for becomes a single token of the extended tokenizer."""
    vocab = set(tok.get_vocab())
    merges = _merges(json.loads(tok.to_str())["model"])
    ranks = {pair: i for i, pair in enumerate(merges)}
    pieces: dict[str, list[str]] = {}  # the base split of each candidate word
    by_start: dict[tuple[str, str], list[str]] = {}  # words that can share new prefixes
    for word, count in counts.items():
        if count >= min_frequency and word not in vocab:
            split = [t.value for t in tok.model.tokenize(word)]
            if len(split) > 1:
                pieces[word] = split
                by_start.setdefault((split[0], split[1]), []).append(word)

    def plan(word: str) -> tuple[list[tuple[str, str]], int, float]:
        """(merges to add, new vocabulary entries, tokens saved per entry) for ``word`` now."""
        parts = _apply(pieces[word], ranks)  # base pieces under base + chosen merges
        steps, new, prefix = [], 0, parts[0]
        for part in parts[1:]:
            if (prefix, part) not in ranks:
                steps.append((prefix, part))
            prefix += part
            new += prefix not in vocab
        return steps, new, counts[word] * (len(parts) - 1) / max(new, 1)

    heap = [(-plan(word)[2], word) for word in pieces]
    heapq.heapify(heap)
    chosen: list[tuple[str, str]] = []
    added = 0
    while heap and added < num_new_tokens:
        neg, word = heapq.heappop(heap)
        steps, new, value = plan(word)
        if not steps:
            continue  # already one token
        if abs(value + neg) > 1e-9 * max(value, 1.0):  # stale entry: requeue at today's value
            heapq.heappush(heap, (-value, word))
            continue
        if added + new > num_new_tokens:
            continue
        for pair in steps:
            ranks[pair] = len(ranks)
        if _apply(pieces[word], ranks) != [word]:  # an earlier merge got in the way: undo
            for pair in steps:
                del ranks[pair]
            continue
        chosen.extend(steps)
        for left, right in steps:
            vocab.add(left + right)
        added += new
        for other in by_start[pieces[word][0], pieces[word][1]]:  # their prefixes got cheaper
            if other != word:
                heapq.heappush(heap, (-plan(other)[2], other))
    return chosen


def extend(base: Tokenizer, merges: list[tuple[str, str]]) -> Tokenizer:
    """``base`` with ``merges`` appended (lowest priority) and their results as new ids."""
    spec = json.loads(base.to_str())
    model = spec["model"]
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
