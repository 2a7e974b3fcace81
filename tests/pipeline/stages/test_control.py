"""The control run on the same footing as the adapted model, on the tiny test domain with a
tiny local base model: its general text goes through ingest's cleaning (placeholders,
normalisation) in the shared ``general`` step, it never trains on a document a domain holds
out, it chooses its checkpoint by the adapted model's rule, one artifact serves two domains,
its manifest counts the document starts it trained on, and the adapted model's checkpoint rule
measures forgetting from it."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from pipeline import domains
from pipeline.driver import Session, plan
from pipeline.stages.control import passages
from pipeline.stages.control import stage as control
from pipeline.stages.general.stage import HOLD_OUT
from pipeline.stages.ingest.artifact import IngestOutput
from pipeline.stages.pretrain import dev_scores, packing
from pipeline.stages.pretrain.output import PretrainOutput
from tests.e2e_domain import write_test_domain

pytestmark = pytest.mark.slow  # trains a tiny base model through DeepSpeed (~40 s with setup)

EOS = "<|endoftext|>"
PLANTED = " Write to jane.roe@example.com or see https://twitter.com/janeroe?ref=news today."
NFD_NAME = unicodedata.normalize("NFD", "Zoë Brontë")  # ingest writes it as NFC
RECIPE = {"mode": "continue", "seq_len": 32, "micro_batch_size": 2, "max_steps": 4,
          "warmup_steps": 1, "log_every": 1, "eval_every": 2, "checkpoint_every": 4,
          "keep_checkpoints": 1, "eval_max_seqs": 4, "lr": 1e-3, "control": True,
          "select_checkpoint": True, "num_pack_workers": 1, "tensorboard": False}


def tiny_base(texts: list[str], out: Path) -> Path:
    """A 2-layer Llama with a byte-level BPE tokenizer trained on ``texts``: a local HF
    directory that ``pretrain.base_model`` accepts."""
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=512, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS).save_pretrained(out)
    config = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=64, eos_token_id=0, bos_token_id=0)
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    return out


def held_out_hash(doc_id: str, seed: int = 0) -> float:
    value = duckdb.sql(f"SELECT md5_number('{doc_id}:{seed}') % 1000000").fetchall()[0][0]
    return value / 1_000_000


def domain_file(samples: Path, root: Path, base: Path, name: str, **pretrain: object) -> Path:
    path = write_test_domain(samples, root, pretrain={**RECIPE, "base_model": str(base),
                                                      **pretrain})
    doc = yaml.safe_load(path.read_text())
    doc["name"] = name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def control_run(samples_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The test domain's control (and its general step), with PII and an NFD name planted in
    the general documents that ingest's rule keeps for training."""
    root = tmp_path_factory.mktemp("control")
    lines = (samples_dir / "general/news.jsonl").read_text().splitlines()[:300]
    news = [json.loads(line) for line in lines]
    planted = []
    for doc in news:
        if held_out_hash(f"general:{doc['id']}") >= HOLD_OUT and len(planted) < 20:
            doc["text"] = f"{NFD_NAME} reports. {doc['text']}{PLANTED}"
            planted.append(doc["id"])
    base = tiny_base([d["text"] for d in news], root / "base")
    path = domain_file(samples_dir, root, base, "medtest")
    (path.parent / "data/news.jsonl").write_text("".join(json.dumps(d) + "\n" for d in news))
    session = Session.open(None, "tiny", workdir=root / "work", domain_file=path)
    session.run_stage("control")
    return {"session": session, "root": root, "base": base, "planted": planted,
            "control": session.artifacts["control"], "general": session.artifacts["general"]}


def trained_text(art_path: Path, base: Path) -> str:
    """The control's packed training stream, decoded."""
    tok = Tokenizer.from_file(str(base / "tokenizer.json"))
    seqs = packing.PackedSequences(art_path / "data", "train")
    return tok.decode(np.concatenate([seqs[i] for i in range(len(seqs))]).tolist(),
                      skip_special_tokens=False)


def test_control_packs_text_cleaned_by_ingest(control_run: dict) -> None:
    general = IngestOutput(control_run["general"])
    assert general.counts["pii_email"] >= 20 and general.counts["pii_url"] >= 20
    text = trained_text(control_run["control"].path, control_run["base"])
    # the planted PII is the placeholder, and the NFD name is NFC, in what the control trains on
    assert "<EMAIL>" in text and "<URL>" in text
    assert "jane.roe@example.com" not in text and "twitter.com/janeroe" not in text
    assert unicodedata.normalize("NFC", NFD_NAME) in text and NFD_NAME not in text


def test_control_never_trains_on_held_out_general_documents(control_run: dict) -> None:
    general = IngestOutput(control_run["general"])
    train = pa.concat_tables(pq.read_table(f, columns=["doc_id"]) for f in general.train_shards)
    ids = train.column("doc_id").to_pylist()
    assert ids and min(held_out_hash(i) for i in ids) >= HOLD_OUT
    # the domain's own ingest holds out some general documents: none is in the control's text
    session = control_run["session"]
    session.run_stage("ingest")
    held = IngestOutput(session.artifacts["ingest"]).held_out(["doc_id", "source"])["general"]
    assert held.num_rows > 0 and not set(held.column("doc_id").to_pylist()) & set(ids)
    # the control checks its training text against the rule itself
    con = duckdb.connect()
    near = next(f"general:{i}" for i in range(1000) if held_out_hash(f"general:{i}") < 0.02)
    con.register("docs", pa.table({"doc_id": [ids[0], near]}))
    with pytest.raises(RuntimeError, match="hash below HOLD_OUT"):
        control.check_hold_out(con, "docs", 0)


def test_control_chooses_its_checkpoint_by_the_rule(control_run: dict) -> None:
    art = control_run["control"]
    out = PretrainOutput(art)
    sel = out.selection
    assert sel is not None and [c.step for c in sel.candidates] == [0, 2, 4]
    # no general stream of its own: the rule is the lowest dev loss among the trained points
    best = min((c for c in sel.candidates if c.step > 0), key=lambda c: (c.eval_loss, -c.step))
    assert sel.chosen_step == best.step == art.manifest.counts["chosen_step"]
    assert art.manifest.extra["checkpoint"] == f"step {best.step}"
    assert out.eval_loss == best.eval_loss and not (art.path / "candidates").exists()


def test_pretrain_measures_its_checkpoint_choice_against_the_control(control_run: dict) -> None:
    """The plan builds the control before pretrain and keys pretrain on it; the worker's rule
    measures each eval point's general dev loss from the control's loss on the same general dev
    sequences, the loss ``dev_scores`` gives for the control on them."""
    session = control_run["session"]
    steps = list(session.plan)
    assert steps.index("general") < steps.index("control") < steps.index("pretrain")
    key = session.plan["control"].key
    assert session.plan["pretrain"].inputs["control"] == key
    session.run_stage("pretrain")
    art = session.artifacts["pretrain"]
    assert art.manifest.inputs["control"] == key
    out, ctrl = PretrainOutput(art), PretrainOutput(control_run["control"])
    sel = out.selection
    assert sel is not None and (sel.reference, sel.control_key) == ("control", key)
    seqs = dev_scores.dev_sequences(out)
    want = dev_scores.dev_losses(ctrl.hf_dir, {"general": seqs["general"]},
                                 RECIPE["micro_batch_size"], out.precision == "bf16")["general"]
    assert sel.control_general_loss == pytest.approx(want, rel=1e-6)
    limit = sel.max_general_degradation
    base = sel.candidates[0]
    for c in sel.candidates:
        assert c.general_loss is not None and base.general_loss is not None
        assert c.general_change_vs_control == pytest.approx(c.general_loss / want - 1)
        assert c.general_change == pytest.approx(c.general_loss / base.general_loss - 1)
        assert c.within_limit == (c.general_loss / want - 1 <= limit)
    trained = [c for c in sel.candidates if c.step > 0]
    ok = [c for c in trained if c.within_limit]
    best = (min(ok, key=lambda c: (c.eval_loss, -c.step)) if ok else
            min(trained, key=lambda c: (c.general_change_vs_control, -c.step)))
    assert sel.chosen_step == best.step and out.eval_loss == best.eval_loss


def test_control_counts_the_document_starts_it_trained_on(control_run: dict) -> None:
    art = control_run["control"]
    m = art.manifest
    data = art.path / "data"
    seqs = packing.PackedSequences(data, "train")
    stream = np.concatenate([seqs[i] for i in range(len(seqs))])
    # a document starts at the stream's first token and after every EOS
    starts = np.bincount(np.flatnonzero(np.r_[True, stream[:-1] == 0]) // seqs.seq_len,
                         minlength=len(seqs))
    n = RECIPE["max_steps"] * RECIPE["micro_batch_size"]
    read = packing.TokenBatches(data, "train", 0).sequence_ids(0, n)
    assert m.counts["document_starts"] == int(starts[read].sum()) > 0
    # passages: more documents than the general artifact has training documents
    general = IngestOutput(control_run["general"])
    assert m.counts["train_docs"] > 3 * general.train_docs
    assert m.extra["passage_chars"] == passages.PASSAGE_CHARS


def test_one_control_serves_two_domains_with_the_same_recipe(
        control_run: dict, samples_dir: Path, tmp_path: Path) -> None:
    """Other domain sources and another replay share, the same recipe and general sources: the
    same general and control artifacts, reused; another learning rate: another control."""
    session = control_run["session"]
    other = domain_file(samples_dir, tmp_path / "other", control_run["base"], "other",
                        mixture={"general": 0.3})
    doc = yaml.safe_load(other.read_text())
    doc["ingest"]["sources"] = doc["ingest"]["sources"][1:]
    other.write_text(yaml.safe_dump(doc, sort_keys=False))
    # the same news file as the first domain's
    (other.parent / "data/news.jsonl").write_bytes(
        (control_run["root"] / "data/news.jsonl").read_bytes())
    second = Session.open(None, "tiny", workdir=session.workdir, domain_file=other)
    assert second.plan["general"].key == session.plan["general"].key
    assert second.plan["control"].key == session.plan["control"].key
    assert second.run_stage("control")["cache_hit"]
    d = domains.load_file(other)
    run = d.resolve("tiny")
    faster = run.model_copy(update={"pretrain": run.pretrain.model_copy(update={"lr": 3e-3})})
    assert plan(d, faster, session.workdir)["control"].key != session.plan["control"].key


def test_passages_cut_at_sentence_ends_and_keep_the_text(tmp_path: Path) -> None:
    text = ("A first sentence here. " * 30).strip()
    con = duckdb.connect()
    con.register("docs", pa.table({"ord": [0], "doc_id": ["g:1"], "source": ["g"],
                                   "text": [text]}))
    out = tmp_path / "passages.parquet"
    n = passages.cut(con, "docs", out, chars=100)
    rows = pq.read_table(out).to_pylist()
    assert n == len(rows) == 7 and all(r["text"].endswith("here.") for r in rows)
    assert " ".join(r["text"] for r in rows) == text
    assert [r["doc_id"] for r in rows][:2] == ["g:1#0", "g:1#1"]
