"""Tokenize-and-pack: ingest shards -> fixed-length token sequences in memory-mapped shards.

1. ``encode``: the text is read in record batches and tokenized with ``encode_batch_fast`` by a
   pool of processes (one per CPU by default, each single-threaded, so the Python work of turning
   ids into arrays runs in parallel too). Every document gets EOS appended; the token stream goes
   to one staging file in input order, with each document's length and source kept in memory
   (12 bytes a document).
2. ``mixture_selection``: which documents make the training stream. Without a mixture every
   document is used once, in input order. With ``pretrain.mixture`` (source -> share of tokens)
   named sources are up- or down-sampled by whole documents (seeded, epoch by epoch) and the
   unnamed ones are used exactly once; the selection is shuffled so sources interleave.
3. ``write_sequences``: the selected documents are gathered from the staging memmap and written
   as ``<name>-NNNNN.bin`` shards (uint16 when the vocabulary fits, else uint32) holding whole
   sequences of ``seq_len`` tokens, plus ``<name>.json`` (dtype, seq_len, shards, counts) and
   ``<name>-starts.npy`` (the documents starting in each sequence: ``trained_document_starts``
   counts those training reads). The tail shorter than one sequence is counted, not used.

``TokenBatches`` reads a packed stream by random access in a seeded, epoch-wise shuffled order that
is a pure function of (seed, position): a run resumed at step k reads exactly the batches an
uninterrupted run reads from step k on.

No torch here: the pool's processes start fast, and the module is usable without a GPU stack.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from tokenizers import Tokenizer

from pipeline.engine import progress


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


# --- 1. encode ---------------------------------------------------------------------------------

_worker: dict[str, Any] = {}


def _init_worker(tokenizer_path: str, eos_id: int, dtype: str, single_thread: bool) -> None:
    if single_thread:  # N processes x N rayon threads would oversubscribe the cores
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker.update(tok=Tokenizer.from_file(tokenizer_path), eos=eos_id, dtype=np.dtype(dtype))


def _encode_batch(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(tokens of every document followed by EOS, per-document lengths)."""
    ids = [e.ids for e in _worker["tok"].encode_batch_fast(texts, add_special_tokens=False)]
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids)) + 1
    eos = (_worker["eos"],)
    flat = np.fromiter(chain.from_iterable(chain(x, eos) for x in ids),
                       dtype=_worker["dtype"], count=int(lengths.sum()))
    return flat, lengths


@dataclass
class Encoded:
    """The staging stream: documents' tokens back to back, and per-document bookkeeping."""

    path: Path
    dtype: np.dtype
    lengths: np.ndarray  # tokens per document, EOS included
    sources: np.ndarray  # index into ``source_names``
    source_names: list[str]

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)

    def tokens_by_source(self) -> dict[str, int]:
        sums = np.bincount(self.sources, weights=self.lengths, minlength=len(self.source_names))
        return {name: int(n) for name, n in zip(self.source_names, sums, strict=True)}


def iter_batches(files: list[Path], batch_size: int, columns: list[str]) -> Iterator[Any]:
    if not files:
        return
    # little readahead: memory stays a few batches, not a few files
    yield from ds.dataset([str(f) for f in files], format="parquet").to_batches(
        columns=columns, batch_size=batch_size, batch_readahead=2, fragment_readahead=1)


def encode(tokenizer_path: Path, files: list[Path], eos_id: int, out_path: Path, *,
           source_names: list[str], num_workers: int = 0, batch_size: int = 1000) -> Encoded:
    """Tokenize the ``text`` of ``files`` (Parquet with a ``source`` column) into ``out_path``."""
    vocab = Tokenizer.from_file(str(tokenizer_path)).get_vocab_size()
    dtype = token_dtype(vocab)
    code_of = {name: i for i, name in enumerate(source_names)}
    workers = num_workers or len(os.sched_getaffinity(0))  # the CPUs this process may use
    lengths: list[np.ndarray] = []
    sources: list[np.ndarray] = []

    def texts() -> Iterator[list[str]]:
        for batch in iter_batches(files, batch_size, ["text", "source"]):
            names = batch.column(1).to_pylist()
            unknown = set(names) - set(code_of)
            if unknown:
                raise ValueError(f"packing: source(s) {sorted(unknown)} are not among the "
                                 f"ingest sources {source_names}")
            sources.append(np.fromiter((code_of[n] for n in names), np.int16, len(names)))
            yield batch.column(0).to_pylist()

    out_path.parent.mkdir(parents=True, exist_ok=True)
    args = (str(tokenizer_path), eos_id, dtype.str, workers > 1)
    docs = ds.dataset([str(f) for f in files], format="parquet").count_rows() if files else 0
    tokens = [0]
    with (open(out_path, "wb") as fh,
          progress.track(f"packing: {out_path.stem.removeprefix('staging-')}", docs,
                         "docs") as bar):

        def emit(result: tuple[np.ndarray, np.ndarray]) -> None:
            fh.write(result[0].tobytes())
            lengths.append(result[1])
            tokens[0] += int(result[1].sum())
            bar.update(len(result[1]), tokens=tokens[0])

        if workers == 1:
            _init_worker(*args)
            for batch_texts in texts():
                emit(_encode_batch(batch_texts))
        else:
            # spawn, not fork: the parent may already hold tokenizers' thread pool. A bounded
            # window of apply_async, not imap: imap reads its whole input ahead, which would
            # hold the corpus in memory.
            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(workers, initializer=_init_worker, initargs=args) as pool:
                pending: deque[Any] = deque()
                for batch_texts in texts():
                    pending.append(pool.apply_async(_encode_batch, (batch_texts,)))
                    while len(pending) > 2 * workers or (pending and pending[0].ready()):
                        emit(pending.popleft().get())
                while pending:
                    emit(pending.popleft().get())
    return Encoded(
        path=out_path, dtype=dtype,
        lengths=np.concatenate(lengths) if lengths else np.zeros(0, np.int64),
        sources=np.concatenate(sources) if sources else np.zeros(0, np.int16),
        source_names=list(source_names),
    )


# --- 2. mixture --------------------------------------------------------------------------------

# The pseudo-source of the domain text of earlier drops in a continued run (pretrain.init:
# promoted); a space keeps it apart from every source name.
EARLIER = "earlier drops"


def mark_earlier(enc: Encoded, first: int, general: set[str]) -> Encoded:
    """The documents from index ``first`` on (the earlier drops) that are not from a ``general``
    source become the source ``EARLIER``, so the mixture replays them by its own share while the
    new drop's domain text is used once."""
    names = [*enc.source_names, EARLIER]
    sources = enc.sources.copy()
    domain = ~np.isin(sources, [i for i, n in enumerate(enc.source_names) if n in general])
    domain[:first] = False
    sources[domain] = len(names) - 1
    return Encoded(path=enc.path, dtype=enc.dtype, lengths=enc.lengths, sources=sources,
                   source_names=names)


def replay_subset(new_files: list[Path], earlier_files: list[Path], mixture: dict[str, float],
                  earlier_share: float, general: set[str], seed: int, out_path: Path,
                  margin: float = 2.0) -> Path:
    """The earlier drops' documents a continued run needs, as one Parquet file (``text``,
    ``source``, in the earlier files' order) to encode after the new drop: so pretraining
    tokenizes an amount that follows the new drop, not the whole history.

    The mixture takes from each named pool (the earlier domain text at ``earlier_share``, each
    general source named in ``mixture`` at its share) a share of a stream whose unnamed part
    (the new drop's domain text, unnamed general sources) is used once. Here each pool gets,
    in characters, ``margin`` times its share of that stream (sizes in characters stand in for
    tokens, which are not known before tokenizing), less what the new drop already holds of it:
    documents drawn in a seeded order, at least one per pool, all of them when the pool is
    smaller. Earlier documents of unnamed general sources are all kept (used once, as
    before). With a history smaller than the need, every earlier document is kept."""
    def scan(files: list[Path], earlier: bool) -> tuple[np.ndarray, np.ndarray]:
        """Characters and pool of every document (one streamed pass, text not kept)."""
        chars, pools = [], []
        for batch in iter_batches(files, 4096, ["text", "source"]):
            chars.append(pc.utf8_length(batch.column(0)).to_numpy(zero_copy_only=False))
            pools.extend(s if s in general else (EARLIER if earlier else s)
                         for s in batch.column(1).to_pylist())
        return (np.concatenate(chars).astype(np.int64) if chars else np.zeros(0, np.int64),
                np.array(pools, dtype=object))

    new_chars, new_pools = scan(new_files, False)
    old_chars, old_pools = scan(earlier_files, True)
    shares = {**mixture, EARLIER: earlier_share}
    unnamed = sum(int(c[p == name].sum()) for c, p in ((new_chars, new_pools),
                                                       (old_chars, old_pools))
                  for name in set(p.tolist()) if name not in shares)
    total = unnamed / max(1e-9, 1.0 - sum(shares.values()))
    rng = np.random.default_rng([seed, 0x7265706C])  # "repl"
    keep = np.zeros(len(old_chars), bool)
    for pool in sorted(set(old_pools.tolist())):
        docs = np.flatnonzero(old_pools == pool)
        if pool not in shares:
            keep[docs] = True
            continue
        need = margin * shares[pool] * total - float(new_chars[new_pools == pool].sum())
        order = rng.permutation(docs)
        cum = np.cumsum(old_chars[order])
        keep[order[: max(1, int(np.searchsorted(cum, need)) + 1)]] = True
    out_path.parent.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([("text", pa.string()), ("source", pa.string())])
    with pq.ParquetWriter(out_path, schema, compression="zstd") as writer:
        at = 0
        for batch in iter_batches(earlier_files, 4096, ["text", "source"]):
            chosen = keep[at:at + batch.num_rows]
            at += batch.num_rows
            if chosen.any():
                writer.write_table(pa.Table.from_batches([batch]).cast(schema)
                                   .filter(pa.array(chosen)))
    return out_path


def mixture_selection(enc: Encoded, mixture: dict[str, float], seed: int
                      ) -> tuple[np.ndarray, dict[str, dict[str, float]]]:
    """Document indices of the training stream, and per source: target and achieved shares.

    Named sources get ``share * total`` tokens: whole passes over all their documents (each in a
    seeded order), then a seeded prefix of one more pass, stopping at the first document that
    reaches the target (so it overshoots by less than a document). The total is fixed by the
    unnamed sources, which are used once: ``total = unnamed_tokens / (1 - sum(shares))``. When
    every source is named the shares are normalised and the total is the corpus size.
    """
    natural = enc.tokens_by_source()
    present = {s for s, n in natural.items() if n > 0}
    unnamed_configured = [s for s in enc.source_names if s not in mixture]
    if mixture and unnamed_configured and not present.intersection(unnamed_configured):
        raise ValueError(f"pretrain.mixture: the sources it does not name "
                         f"({', '.join(unnamed_configured)}) have no training documents, so "
                         "the named shares cannot be fractions of anything")
    missing = sorted(s for s in mixture if s not in present)
    if missing:
        raise ValueError(f"pretrain.mixture names source(s) {missing} with no training "
                         "documents after ingest")
    if not mixture:
        targets = {s: float(natural[s]) for s in present}
        selection = np.arange(len(enc.lengths))
    else:
        unnamed = [s for s in present if s not in mixture]
        if unnamed:
            total = sum(natural[s] for s in unnamed) / (1.0 - sum(mixture.values()))
            targets = {s: mixture[s] * total if s in mixture else float(natural[s])
                       for s in present}
        else:
            norm, total = sum(mixture.values()), sum(natural.values())
            targets = {s: mixture[s] / norm * total for s in present}
        rng = np.random.default_rng([seed, 0x6D6978])  # "mix"
        parts = []
        for code, name in enumerate(enc.source_names):
            if name not in present:
                continue
            docs = np.flatnonzero(enc.sources == code)
            if name not in mixture:
                parts.append(docs)
                continue
            passes, rest = divmod(targets[name], natural[name])
            parts.extend(rng.permutation(docs) for _ in range(int(passes)))
            if rest > 0:
                order = rng.permutation(docs)
                cum = np.cumsum(enc.lengths[order])
                parts.append(order[: int(np.searchsorted(cum, rest)) + 1])
        selection = rng.permutation(np.concatenate(parts))
    achieved = np.bincount(enc.sources[selection], weights=enc.lengths[selection],
                           minlength=len(enc.source_names))
    target_total, achieved_total = sum(targets.values()), max(float(achieved.sum()), 1.0)
    report = {
        name: {"target_share": targets[name] / target_total,
               "achieved_share": float(achieved[code]) / achieved_total,
               "tokens": int(achieved[code]),
               "passes": float(achieved[code]) / natural[name]}
        for code, name in enumerate(enc.source_names) if name in present
    }
    return selection, report


# --- 3. write ----------------------------------------------------------------------------------


def write_sequences(enc: Encoded, selection: np.ndarray, out_dir: Path, name: str, seq_len: int,
                    max_shard_tokens: int, block_tokens: int = 1 << 22) -> dict[str, Any]:
    """Gather ``selection``'s documents into ``out_dir/<name>-NNNNN.bin`` + ``<name>.json``."""
    lengths, offsets = enc.lengths, enc.offsets
    total = int(lengths[selection].sum())
    num_seqs = total // seq_len
    usable = num_seqs * seq_len
    per_shard = max(1, max_shard_tokens // seq_len)
    shards = [{"file": f"{name}-{i:05d}.bin", "sequences": min(per_shard, num_seqs - first)}
              for i, first in enumerate(range(0, num_seqs, per_shard))]
    outs = [np.memmap(out_dir / s["file"], dtype=enc.dtype, mode="w+",
                      shape=(s["sequences"] * seq_len,)) for s in shards]
    starts = np.cumsum([0] + [len(o) for o in outs])
    tokens = np.memmap(enc.path, dtype=enc.dtype, mode="r") if usable else None
    # blocks of about block_tokens tokens (at least one document): the gather index costs
    # ~16 bytes a token, so memory stays bounded however long the documents are
    ends = np.cumsum(lengths[selection])
    cuts = np.unique(np.searchsorted(ends, np.arange(block_tokens, total, block_tokens)) + 1)
    bounds = [0, *[int(c) for c in cuts if c < len(selection)], len(selection)]
    pos = 0  # where the next block goes in the output stream
    for first, last in zip(bounds[:-1], bounds[1:], strict=True):
        if pos >= usable:
            break
        docs = selection[first:last]
        lens = lengths[docs]
        # one fancy-index gather per block: output j reads offsets[doc] + (j - doc's start)
        idx = np.repeat(offsets[docs] - np.concatenate([[0], np.cumsum(lens)[:-1]]), lens)
        idx += np.arange(len(idx))
        block = tokens[idx[: usable - pos]]
        end = pos + len(block)
        for k, out in enumerate(outs):
            lo, hi = max(pos, starts[k]), min(end, starts[k + 1])
            if lo < hi:
                out[lo - starts[k]:hi - starts[k]] = block[lo - pos:hi - pos]
        pos = end
    for out in outs:
        out.flush()
    # where each document starts in the stream, counted per sequence (<name>-starts.npy)
    first = np.concatenate([[0], ends[:-1]]).astype(np.int64)
    per_seq = np.bincount(first[first < usable] // seq_len, minlength=num_seqs)
    np.save(out_dir / f"{name}-starts.npy", per_seq.astype(np.uint32))
    index = {"dtype": enc.dtype.name, "seq_len": seq_len, "shards": shards,
             "sequences": num_seqs, "documents": int(len(selection)), "tokens": usable,
             "tail_tokens": total - usable, "document_starts": int(per_seq.sum())}
    (out_dir / f"{name}.json").write_text(json.dumps(index, indent=2))
    return index


def trained_document_starts(data_dir: Path, name: str, seed: int, positions: int) -> int:
    """Document starts (a document's first token) in the sequences a run reads at positions
    ``0 .. positions-1`` of ``TokenBatches(data_dir, name, seed)``, a sequence read again in a
    later epoch counted again: how many document beginnings training saw."""
    per_seq = np.load(Path(data_dir) / f"{name}-starts.npy").astype(np.int64)
    total, epoch = 0, 0
    while len(per_seq) and epoch * len(per_seq) < positions:
        order = np.random.default_rng([seed, epoch]).permutation(len(per_seq))
        total += int(per_seq[order[: positions - epoch * len(per_seq)]].sum())
        epoch += 1
    return total


# --- reading -----------------------------------------------------------------------------------


class PackedSequences:
    """Random access to the sequences of a packed stream (``<dir>/<name>.json`` + shards)."""

    def __init__(self, data_dir: Path, name: str):
        index = json.loads((Path(data_dir) / f"{name}.json").read_text())
        self.seq_len = index["seq_len"]
        self.shards = [np.memmap(Path(data_dir) / s["file"], dtype=np.dtype(index["dtype"]),
                                 mode="r").reshape(-1, self.seq_len)
                       for s in index["shards"]]
        self.ends = np.cumsum([len(s) for s in self.shards])
        self.num_seqs = int(self.ends[-1]) if len(self.ends) else 0

    def __len__(self) -> int:
        return self.num_seqs

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < self.num_seqs:
            raise IndexError(f"sequence {i} of {self.num_seqs}")
        shard = int(np.searchsorted(self.ends, i, side="right"))
        return self.shards[shard][i - (int(self.ends[shard - 1]) if shard else 0)]


class TokenBatches:
    """Seeded, epoch-wise shuffled sequences of a packed stream, addressable by position."""

    def __init__(self, data_dir: Path, name: str, seed: int):
        self.data = PackedSequences(data_dir, name)
        self.num_seqs, self.seed = self.data.num_seqs, seed
        self._epoch, self._order = -1, np.empty(0, dtype=np.int64)

    def sequence_ids(self, start: int, count: int) -> list[int]:
        """Ids of the global positions ``start .. start+count`` across epochs."""
        ids = []
        for pos in range(start, start + count):
            epoch, i = divmod(pos, self.num_seqs)
            if epoch != self._epoch:
                self._epoch = epoch
                self._order = np.random.default_rng([self.seed, epoch]).permutation(self.num_seqs)
            ids.append(int(self._order[i]))
        return ids

    def batch(self, ids: list[int]) -> np.ndarray:
        return np.stack([self.data[i] for i in ids]).astype(np.int64)
