"""Tokenizer stage: a byte-level BPE trained on the ingest shards with HF ``tokenizers``.

Training streams record batches from the Parquet shards, so memory is bounded by the batch, not
the corpus (``tokenizers`` keeps its own word counts). Outputs ``tokenizer.json`` plus the files
``PreTrainedTokenizerFast.from_pretrained`` reads, and reports fertility (tokens per word) and
characters per token on the held-out slice. Exact round-trip on held-out text is a quality gate:
a byte-level BPE that cannot reproduce its input must not reach training.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.dataset as ds
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from pipeline import QualityGateError
from pipeline.artifacts import Artifact, Manifest
from pipeline.config import TokenizerConfig


def iter_texts(files: list[Path], batch_size: int) -> Iterator[list[str]]:
    dataset = ds.dataset([str(f) for f in files], format="parquet")
    for batch in dataset.to_batches(columns=["text"], batch_size=batch_size):
        yield batch.column(0).to_pylist()


def train(config: TokenizerConfig, files: list[Path]) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=config.vocab_size,
        min_frequency=config.min_frequency,
        special_tokens=[config.eos_token, config.pad_token],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(iter_texts(files, config.batch_size), trainer=trainer)
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
        "model_max_length": 1_000_000,
        "clean_up_tokenization_spaces": False,
    }, indent=2))


def run(config: TokenizerConfig, inputs: dict[str, Artifact], out_dir: Path) -> Manifest:
    ingest_dir = inputs["ingest"].path
    tok = train(config, sorted(ingest_dir.glob("train-*.parquet")))
    save_hf_files(tok, config, out_dir)

    eval_texts = ds.dataset(str(ingest_dir / "eval.parquet")).to_table(columns=["text"])
    eval_texts = eval_texts.column(0).to_pylist()
    metrics = efficiency(tok, eval_texts)
    checked = eval_texts[: config.max_roundtrip_docs]
    failures = roundtrip_failures(tok, checked)
    if failures:
        raise QualityGateError(
            f"tokenizer: {len(failures)} of {len(checked)} held-out documents do not round-trip "
            f"exactly (first: {checked[failures[0]][:80]!r})"
        )
    return Manifest(
        stage="tokenizer",
        counts={"vocab_size": tok.get_vocab_size(), "roundtrip_checked": len(checked)},
        metrics=metrics,
        extra={"eos_id": tok.token_to_id(config.eos_token),
               "pad_id": tok.token_to_id(config.pad_token)},
    )
