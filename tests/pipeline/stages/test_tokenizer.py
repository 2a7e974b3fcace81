from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from pipeline.config import TokenizerConfig
from pipeline.engine.artifacts import Artifact, ArtifactStore, Manifest
from pipeline.stages.pretrain import vocab
from pipeline.stages.tokenizer import stage as tokenizer
from pipeline.stages.tokenizer.output import TokenizerOutput

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
    # A word-level tokenizer on known text: one token per word, so fertility is exactly 1.
    tok = Tokenizer(models.WordLevel({"a": 0, "bb": 1, "[UNK]": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    e = tokenizer.efficiency(tok, ["a bb a", "bb"])
    assert e["fertility"] == 1.0 and e["eval_tokens"] == 4 and e["chars_per_token"] == 8 / 4


def test_unigram_with_extra_specials_roundtrips_unicode(tmp_path: Path) -> None:
    out = tmp_path / "tok"
    out.mkdir()
    config = TokenizerConfig(model="unigram", vocab_size=400, special_tokens=["<|sep|>"],
                             max_roundtrip_docs=5)
    m = tokenizer.run(config, _ingest_artifact(tmp_path), out)
    assert m.extra["model"] == "unigram" and m.counts["roundtrip_checked"] == 5
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert [tok.token_to_id(t) for t in ("<|endoftext|>", "<|pad|>", "<|sep|>")] == [0, 1, 2]
    odd = "Zero-width\u200bjoiner, combining e\u0301, 𝔘𝔫𝔦𝔠𝔬𝔡𝔢, \x00 and \U0010ffff."
    assert tok.decode(tok.encode(odd).ids) == odd
    hf = PreTrainedTokenizerFast.from_pretrained(out)
    assert "<|sep|>" in hf.all_special_tokens and hf.convert_tokens_to_ids("<|sep|>") == 2


def test_max_train_chars_trains_on_a_seeded_sample(tmp_path: Path) -> None:
    files = [tmp_path / "t.parquet"]
    texts = [f"document {i} " + "word " * (i % 7) for i in range(2000)]
    pq.write_table(pa.table({"text": texts}), files[0])
    seen = [t for batch in tokenizer.iter_texts(files, 100, fraction=0.25, seed=0) for t in batch]
    again = [t for batch in tokenizer.iter_texts(files, 100, fraction=0.25, seed=0) for t in batch]
    assert seen == again and 400 < len(seen) < 600  # about a quarter, the same each time
    assert seen != [t for b in tokenizer.iter_texts(files, 100, 0.25, seed=1) for t in b]


def _base_tokenizer() -> Tokenizer:
    """A small byte-level BPE trained on general text: it splits medical words into pieces."""
    general = ["The weather was fine and the market rose in the morning."] * 30 + \
              ["People walked to the station, talked and read the news."] * 30
    config = TokenizerConfig(vocab_size=320, min_frequency=1)
    base = Tokenizer(models.BPE())
    base.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    base.decoder = decoders.ByteLevel()
    base.train_from_iterator(general, trainers.BpeTrainer(
        vocab_size=config.vocab_size, special_tokens=tokenizer.special_tokens(config),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    return base


def test_extension_adds_only_new_tokens_and_lowers_fertility() -> None:
    base = _base_tokenizer()
    counts = vocab.word_counts(base, LINES)
    merges = vocab.choose_merges(base, counts, num_new_tokens=25, min_frequency=5)
    extended = vocab.extend(base, merges)
    base_vocab, ext_vocab = base.get_vocab(), extended.get_vocab()
    new = vocab.new_token_ids(base, extended)
    assert 0 < len(new) <= 25 and extended.get_vocab_size() == base.get_vocab_size() + len(new)
    assert all(ext_vocab[t] == i for t, i in base_vocab.items())  # base ids untouched
    assert new == list(range(base.get_vocab_size(), extended.get_vocab_size()))
    # the words the new tokens were chosen for really are single tokens now, however the
    # merges of other words interleave (an earlier merge can block a later chain)
    wide = vocab.extend(base, vocab.choose_merges(base, counts, 200, min_frequency=5))
    whole = [w for w in counts if w in wide.get_vocab() and w not in base_vocab]
    assert len(whole) > 10
    assert all(len(wide.model.tokenize(w)) == 1 < len(base.model.tokenize(w)) for w in whole)
    assert tokenizer.roundtrip_failures(extended, LINES) == []
    assert tokenizer.efficiency(extended, LINES)["fertility"] < \
        tokenizer.efficiency(base, LINES)["fertility"]
    # text that never uses a new token is tokenized exactly as before
    plain = "The market rose."
    assert extended.encode(plain).ids == base.encode(plain).ids


def test_extension_greedy_counts_tokens_saved_by_what_is_already_chosen() -> None:
    base = Tokenizer(models.BPE({c: i for i, c in enumerate("abcdefxy")}, []))
    base.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # "bc" first; then "abc" must be built on "bc", or it would stay two tokens
    merges = vocab.choose_merges(base, Counter({"bc": 100, "abc": 60}), 10, 1)
    extended = vocab.extend(base, merges)
    assert merges == [("b", "c"), ("a", "bc")] and extended.encode("abc").tokens == ["abc"]
    # after "abcde" (4 entries), "abcdf" needs 1 entry but saves only 8 tokens: "xy" saves 9
    merges = vocab.choose_merges(base, Counter({"abcde": 10, "abcdf": 8, "xy": 9}), 5, 1)
    assert merges[-1] == ("x", "y") and len(merges) == 5
    assert vocab.choose_merges(base, Counter({"abcde": 10, "abcdf": 8, "xy": 7}), 5, 1)[-1] == \
        ("abcd", "f")


def test_extension_refuses_a_base_it_cannot_extend() -> None:
    wordpiece = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    with pytest.raises(ValueError, match=r"cannot extend the base tokenizer of m: its model is "
                                         r"WordPiece, not BPE; it has no pre-tokenizer"):
        vocab.check_base(wordpiece, "m")


def test_extension_respects_the_token_budget_and_frequency_floor() -> None:
    base = _base_tokenizer()
    counts = vocab.word_counts(base, LINES)
    extended = vocab.extend(base, vocab.choose_merges(base, counts, 3, min_frequency=5))
    assert len(vocab.new_token_ids(base, extended)) <= 3
    assert vocab.choose_merges(base, counts, 100, min_frequency=1000) == []


def test_new_embeddings_are_the_mean_of_their_base_pieces() -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    base = _base_tokenizer()
    extended = vocab.extend(base, vocab.choose_merges(base, vocab.word_counts(base, LINES),
                                                      10, min_frequency=5))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=base.get_vocab_size(), hidden_size=16, intermediate_size=32,
        num_hidden_layers=1, num_attention_heads=2, tie_word_embeddings=False))
    before_in = model.get_input_embeddings().weight.detach().clone()
    before_out = model.get_output_embeddings().weight.detach().clone()
    assert vocab.init_new_embeddings(model, base, extended) == 10
    after_in = model.get_input_embeddings().weight
    after_out = model.get_output_embeddings().weight
    assert after_in.shape[0] == extended.get_vocab_size() == model.config.vocab_size
    assert torch.equal(after_in[: len(before_in)], before_in)
    for i in vocab.new_token_ids(base, extended):
        pieces = [base.token_to_id(t.value)
                  for t in base.model.tokenize(extended.id_to_token(i))]
        assert len(pieces) > 1
        assert torch.allclose(after_in[i], before_in[pieces].mean(0))
        assert torch.allclose(after_out[i], before_out[pieces].mean(0))


def test_general_held_out_text_is_reported_apart(tmp_path: Path) -> None:
    arts = _ingest_artifact(tmp_path)
    root = arts["ingest"].path
    general = ["Markets rose in the morning as people read the news."] * 5
    pq.write_table(pa.table({"doc_id": ["g1", "g2", "g3", "g4", "g5", "d1"],
                             "source": ["news"] * 5 + ["s"],
                             "text": [*general, LINES[0]]}), root / "eval.parquet")
    manifest = Manifest(stage="ingest", extra={"general_sources": ["news"]})
    (root / "manifest.json").write_text(manifest.to_json())
    out = tmp_path / "tok"
    out.mkdir()
    m = tokenizer.run(TokenizerConfig(vocab_size=400, min_frequency=1),
                      {"ingest": Artifact("ingest", "k", root)}, out)
    assert m.counts["roundtrip_checked"] == 1  # only domain text is the domain slice
    table = json.loads((out / "efficiency.json").read_text())
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert table["domain"]["general"]["eval_tokens"] == 5 * len(tok.encode(general[0]).ids)
    assert set(table["domain"]) == {"domain", "general"}
    assert m.metrics["fertility.domain.general"] == table["domain"]["general"]["fertility"]


def test_gpt2_reference_is_the_real_gpt2_tokenizer(tmp_path: Path) -> None:
    gpt2 = tokenizer.gpt2_tokenizer()
    assert gpt2 is not None and gpt2.get_vocab_size() == 50257
    assert gpt2.encode("Hello world").ids == [15496, 995]  # GPT-2's published ids
    out = tmp_path / "tok"
    out.mkdir()
    m = tokenizer.run(TokenizerConfig(vocab_size=400, min_frequency=1),
                      _ingest_artifact(tmp_path), out)
    assert set(m.extra["efficiency"]) == {"domain", "gpt2"}
    assert m.metrics["fertility.gpt2.domain"] == tokenizer.efficiency(gpt2, LINES[:5])["fertility"]


def test_reader_gives_the_published_artifact_files_and_fields(tmp_path: Path) -> None:
    config = TokenizerConfig(vocab_size=400, min_frequency=1, max_roundtrip_docs=5)
    store = ArtifactStore(tmp_path / "store")
    inputs = _ingest_artifact(tmp_path)
    art, _ = store.build(stage="tokenizer", key="t", config_hash="c", code="v", inputs=inputs,
                         fn=lambda out: tokenizer.run(config, inputs, out))
    out = TokenizerOutput(art)
    tok = Tokenizer.from_file(str(out.dir / "tokenizer.json"))
    assert (out.eos_id, out.pad_id) == (tok.token_to_id(config.eos_token),
                                        tok.token_to_id(config.pad_token))
    assert out.vocab_size == tok.get_vocab_size() and out.model == "bpe"
    assert out.roundtrip_checked == 5  # max_roundtrip_docs of the 5 held-out documents
    # from scratch: no base model, so no extension and no base vocabulary
    assert out.extended_dir is None and out.base_vocab_size is None and out.new_tokens is None
    table = json.loads((out.dir / "efficiency.json").read_text())
    assert out.fertility() == table["domain"]["domain"]["fertility"]
    assert out.fertility("gpt2") == table["gpt2"]["domain"]["fertility"]
    with pytest.raises(ValueError, match="ingest/k is not a tokenizer artifact"):
        TokenizerOutput(inputs["ingest"])
