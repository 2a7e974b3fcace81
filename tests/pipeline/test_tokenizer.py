from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from transformers import PreTrainedTokenizerFast

from pipeline import tokenizer
from pipeline.artifacts import Artifact, Manifest
from pipeline.config import TokenizerConfig

LINES = [
    "The patient presented with acute myocardial infarction and dyspnoea.",
    "Hypertrophic cardiomyopathy: thickening of the ventricular myocardium.",
    "Naïve T-cells, β-blockers, 5 µg/kg, 37 °C — and “quoted” text…",
    "日本語のテキストと絵文字 🙂 also round-trip, as does Ελληνικά and עברית.",
    "Tabs\tand\nnewlines  and   runs of spaces stay exact.",
] * 20


def _ingest_artifact(tmp_path: Path) -> dict[str, Artifact]:
    root = tmp_path / "ingest"
    root.mkdir()
    table = pa.table({"doc_id": [str(i) for i in range(len(LINES))], "source": ["s"] * len(LINES),
                      "text": LINES})
    pq.write_table(table, root / "train-00000.parquet")
    pq.write_table(table.slice(0, 5), root / "eval.parquet")
    (root / "manifest.json").write_text(Manifest(stage="ingest").to_json())
    return {"ingest": Artifact("ingest", "k", root)}


def test_trains_roundtrips_and_loads_in_transformers(tmp_path: Path) -> None:
    out = tmp_path / "tok"
    out.mkdir()
    config = TokenizerConfig(vocab_size=400, min_frequency=1, max_roundtrip_docs=5)
    m = tokenizer.run(config, _ingest_artifact(tmp_path), out)
    assert m.counts["vocab_size"] == 400 and m.counts["roundtrip_checked"] == 5
    assert m.extra["eos_id"] == 0 and m.extra["pad_id"] == 1
    assert 1.0 < m.metrics["fertility"] < 10
    hf = PreTrainedTokenizerFast.from_pretrained(out)
    assert hf.eos_token == "<|endoftext|>" and hf.pad_token == "<|pad|>"
    for line in LINES[:5]:
        assert hf.decode(hf(line)["input_ids"]) == line


def test_efficiency_counts_words_and_characters(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    # A word-level tokenizer on known text: one token per word, so fertility is exactly 1.
    tok = Tokenizer(models.WordLevel({"a": 0, "bb": 1, "[UNK]": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    e = tokenizer.efficiency(tok, ["a bb a", "bb"])
    assert e["fertility"] == 1.0 and e["eval_tokens"] == 4 and e["chars_per_token"] == 8 / 4
