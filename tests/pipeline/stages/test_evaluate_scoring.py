"""Masked scoring, the context token and the verdict vs control, on a 2-layer model with a
tokenizer trained here (SmolLM2's three special tokens), checked against a plain forward pass."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from pipeline.config import PII_TYPES, EvaluateConfig, PiiConfig
from pipeline.stages.evaluate import scoring
from pipeline.stages.evaluate.intervals import bootstrap_weights, slice_scores
from pipeline.stages.evaluate.memo import Memo
from pipeline.stages.evaluate.scoring import (
    choose_context,
    masked_spans,
    score_documents,
    score_models,
)
from pipeline.stages.evaluate.stage import verdict
from pipeline.stages.evaluate.verdict import masked_changes, masked_metrics, scoring_note

LINES = [
    "The patient was admitted with chest pain and shortness of breath.",
    "Blood pressure was stable; the cardiology team reviewed the ECG.",
    "Discharge summary: follow up in two weeks with the clinic.",
    "Contact the office by email or see the website for results.",
    "Medication was adjusted and the symptoms resolved over three days.",
] * 4
PLANTED = ("Seen by <PERSON> on <PERSON_DATE>; write to <EMAIL> or see "
           "https://example.org/results?id=42 for the report. Nurse <PERSON_1f2e3d4c> agreed.")
PLANTED_SPANS = ["<PERSON>", "<PERSON_DATE>", "<EMAIL>", "https://example.org/results?id=42",
                 "<PERSON_1f2e3d4c>"]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # as SmolLM2's: unk/eot, BOS, EOS


def tiny_model(seed: int, vocab: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=256, pad_token_id=0)).eval()


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory) -> dict:
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(LINES + [PLANTED], trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|im_start|>",
                                  eos_token="<|im_end|>", pad_token="<|endoftext|>")
    dirs = {}
    for name, seed in (("adapted", 0), ("control", 1)):
        dirs[name] = tmp_path_factory.mktemp(name)
        tok.save_pretrained(dirs[name])
        tiny_model(seed, len(tok)).save_pretrained(dirs[name])
    return {"tok": tok, "model": tiny_model(0, len(tok)), "dirs": dirs}


@torch.no_grad()
def token_nll(model: torch.nn.Module, context: int, ids: list[int]) -> np.ndarray:
    """Each token's NLL after ``context``, one plain forward pass (the document fits)."""
    x = torch.tensor([[context, *ids]])
    logp = torch.log_softmax(model(input_ids=x).logits[0, :-1].float(), -1)
    return -logp.gather(1, x[0, 1:, None])[:, 0].numpy()


def test_placeholders_match_what_ingest_writes_and_its_url_pattern() -> None:
    from pipeline.stages.ingest.pii import TYPES, Redactor

    assert scoring.URL.pattern == TYPES["url"].pattern  # one definition of a URL
    hashed = Redactor(PiiConfig(types=list(PII_TYPES), salt="s",
                                policy=dict.fromkeys(PII_TYPES, "hash")))
    for name in PII_TYPES:  # each type's placeholder as ingest renders it, redacted and hashed
        for value in (Redactor(PiiConfig()).render(name, "x"), hashed.render(name, "Ann")):
            assert scoring.PLACEHOLDER.fullmatch(value), value
    assert [PLANTED[s:e] for s, e in masked_spans(PLANTED)] == PLANTED_SPANS
    assert masked_spans("a <b> and <NOT_A_TYPE> and x.com") == []


def test_masked_scores_leave_out_exactly_the_planted_spans(lm: dict) -> None:
    tok, model = lm["tok"], lm["model"]
    eos = tok.eos_token_id
    (doc,) = score_documents(model, tok, [PLANTED], 256, 4)
    enc = tok(PLANTED, add_special_tokens=False, return_offsets_mapping=True)
    nll = token_nll(model, eos, enc["input_ids"])
    # bytes: the document's, less exactly the planted spans'
    assert doc.bytes == len(PLANTED.encode())
    assert doc.bytes_masked == doc.bytes - sum(len(s.encode()) for s in PLANTED_SPANS)
    # a token is masked when at least half of its characters are inside a span
    inside = set()
    for span in PLANTED_SPANS:
        start = PLANTED.index(span)
        inside |= set(range(start, start + len(span)))
    masked = [2 * len(inside & set(range(s, e))) >= e - s > 0 for s, e in enc["offset_mapping"]]
    assert 0 < sum(masked) < len(masked)
    text_masked = "".join(PLANTED[s:e] for (s, e), m in zip(enc["offset_mapping"], masked,
                                                             strict=True) if m)
    assert "PERSON" in text_masked and "example" in text_masked and "Nurse" not in text_masked
    assert doc.tokens_masked == len(masked) - sum(masked)
    assert doc.nll_masked == pytest.approx(float(nll[~np.array(masked)].sum()), rel=1e-5)
    # the unmasked figures: today's (every token after the EOS), also over several windows
    assert (doc.nll, doc.tokens) == (pytest.approx(float(nll.sum()), rel=1e-5), len(nll))
    assert doc.first_nll == pytest.approx(float(nll[0]), rel=1e-5)
    (windowed,) = score_documents(model, tok, [PLANTED], 8, 4)
    assert windowed.tokens == len(nll) and windowed.bytes_masked == doc.bytes_masked
    assert windowed.tokens_masked == doc.tokens_masked < windowed.tokens


def test_slice_scores_add_the_masked_figures(lm: dict) -> None:
    texts = [PLANTED, LINES[0], LINES[1]]
    scores = score_documents(lm["model"], lm["tok"], texts, 64, 4)
    out = slice_scores(scores, texts, ["a", "a", "g"], [False, False, True],
                       {"domain": bootstrap_weights(np.arange(2), 50),
                        "general": bootstrap_weights(np.arange(1), 50)})
    dom = out["domain"]
    assert dom["bits_per_byte_masked"] == pytest.approx(
        (scores[0].nll_masked + scores[1].nll_masked) / math.log(2)
        / (scores[0].bytes_masked + scores[1].bytes_masked))
    # no placeholder in the general text: its masked figures are its figures
    assert out["general"]["bits_per_byte_masked"] == pytest.approx(
        out["general"]["bits_per_byte"])
    assert dom["bytes_masked"] < dom["bytes"] and "bits_per_byte_masked_se" in dom
    # the plain pairs of old still score, without masked figures
    plain = slice_scores([s[:2] for s in scores], texts, ["a", "a", "g"], [False, False, True])
    assert plain["domain"]["bits_per_byte"] == dom["bits_per_byte"]
    assert "bits_per_byte_masked" not in plain["domain"]


def test_context_is_chosen_on_dev_text_only(lm: dict) -> None:
    tok, model = lm["tok"], lm["model"]
    dev, test_a, test_b = LINES[:6], [PLANTED, *LINES[6:9]], LINES[9:12]
    choice = choose_context(model, tok, dev, 16, 4)
    assert list(choice["candidates"]) == ["<|im_end|>", "<|im_start|>", "<|endoftext|>"]
    assert choice["dev_docs"] == len(dev)
    for token, fig in choice["candidates"].items():  # the dev texts' first windows after it
        s = score_documents(model, tok, dev, 16, 4, tok.convert_tokens_to_ids(token), 1)
        assert fig["nll_per_token"] == pytest.approx(sum(x.nll for x in s)
                                                     / sum(x.tokens for x in s))
    assert choice["token"] == min(choice["candidates"],
                                  key=lambda t: choice["candidates"][t]["nll_per_token"])
    # the test text scored after it has no say in the choice
    got_a, ctx_a = score_models(lm["dirs"], test_a, dev, 16, 4, torch.device("cpu"))
    _, ctx_b = score_models(lm["dirs"], test_b, dev, 16, 4, torch.device("cpu"))
    assert ctx_a == ctx_b == choice
    chosen = tok.convert_tokens_to_ids(choice["token"])
    assert got_a["adapted"] == score_documents(model, tok, test_a, 16, 4, chosen)
    # no dev text: the EOS, as before
    assert choose_context(model, tok, [], 16, 4)["token"] == "<|im_end|>"


def test_intervals_vs_control_bracket_the_masked_change(lm: dict) -> None:
    texts = [PLANTED, *LINES[:9]]
    scores, context = score_models(lm["dirs"], texts, LINES[:4], 32, 4, torch.device("cpu"))
    is_general = [False] * 7 + [True] * 3
    slices = {"domain": np.arange(7), "general": np.arange(7, 10)}
    draws = {"domain": bootstrap_weights(np.arange(7), 400),
             "general": bootstrap_weights(np.arange(3), 400)}
    out = masked_changes(scores, slices, draws)
    for slice_, idx in slices.items():
        change = out[f"{slice_}_change_vs_control_masked"]
        a = np.array([s.nll_masked for s in scores["adapted"]])[idx]
        c = np.array([s.nll_masked for s in scores["control"]])[idx]
        assert change == pytest.approx(a.sum() / c.sum() - 1)  # on the masked scores
        low, high = (out[f"{slice_}_change_vs_control_ci_{e}"] for e in ("low", "high"))
        assert low < change < high and out[f"{slice_}_change_vs_control_masked_se"] > 0
    assert "domain_bits_per_byte_change_masked" not in out  # no base model here
    per = {name: slice_scores(s, texts, ["x"] * 10, is_general, draws)
           for name, s in scores.items()}
    m = masked_metrics(per, scores["adapted"], slices["domain"])
    assert m["heldout_bits_per_byte_masked"] == per["adapted"]["domain"]["bits_per_byte_masked"]
    assert m["control_general_bits_per_byte_masked"] == \
        per["control"]["general"]["bits_per_byte_masked"]
    assert 0 < m["first_token_nll_share"] < 1 and 0 < m["heldout_masked_byte_share"] < 1
    assert scoring_note(m, context).startswith(f"Each document is scored after "
                                               f"`{context['token']}`, chosen on 4 dev")


METRICS = {"domain_bits_per_byte_change": -0.08, "domain_bits_per_byte_change_masked": -0.06,
           "domain_bits_per_byte_change_masked_se": 0.004,
           "general_bits_per_byte_change_masked": 0.01, "domain_bits_per_byte_gain": 0.05,
           "domain_change_vs_control_masked": -0.021, "domain_change_vs_control_ci_low": -0.03,
           "domain_change_vs_control_ci_high": -0.012, "general_change_vs_control_masked": 0.004,
           "general_change_vs_control_ci_low": -0.001, "general_change_vs_control_ci_high": 0.009}


def test_verdict_headline_is_adapted_vs_control_and_names_the_base() -> None:
    finetune = {"macro_f1": 0.5, "base_macro_f1": 0.4, "macro_f1_gain": 0.1, "seeds": 3}
    v = verdict(METRICS, EvaluateConfig(), "smollm2-135m", finetune)
    assert v["text"] == (
        "adapted vs control: domain bits/byte -2.1% (95% CI -3.0% to -1.2%), general +0.4% "
        "(95% CI -0.1% to +0.9%), placeholders and URLs masked, downstream macro-F1 +0.100 "
        "over 3 seeds; vs base smollm2-135m (dequantised from SmolLM2-135M-Instruct.Q4_1.gguf),"
        " the starting point, not the baseline: domain -6.0% +- 0.4%, general +1.0%")
    # the gates still read the unmasked figures
    assert v["gates"][0]["value"] == METRICS["domain_bits_per_byte_gain"]
    no_control = {k: v for k, v in METRICS.items() if "control" not in k}
    assert verdict(no_control, EvaluateConfig(), "/models/mine", {})["text"] == (
        "adapted vs base /models/mine: domain bits/byte -6.0% +- 0.4%, general +1.0%, "
        "no control run, placeholders and URLs masked")
    promoted = verdict(METRICS, EvaluateConfig(), "promoted pretrain/abc", {}, promoted=True)
    assert promoted["text"].startswith("adapted vs promoted pretrain/abc: domain bits/byte "
                                       "-6.0% +- 0.4%, general +1.0%, domain vs control -2.1%")



def test_forgetting_gate_reads_the_control_where_there_is_one() -> None:
    from pipeline.config import EvaluateConfig
    from pipeline.stages.evaluate.stage import forgetting_gate

    config = EvaluateConfig(max_general_degradation=0.03)
    # +1% over the base, +6.6% over the control: the control is the reference
    both = {"general_bits_per_byte_change": 0.01, "general_change_vs_control_masked": 0.066}
    gate, = forgetting_gate(both, config)
    assert (gate["vs"], gate["value"], gate["passed"]) == ("control", 0.066, False)
    assert "over the control's (masked)" in gate["message"]
    gate, = forgetting_gate({"general_bits_per_byte_change": 0.01}, config)
    assert (gate["vs"], gate["value"], gate["passed"]) == ("base", 0.01, True)
    assert forgetting_gate(both, EvaluateConfig(max_general_degradation=None)) == []


def test_memo_reuses_a_models_scores_only_for_the_same_model_text_and_code(
        lm: dict, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.stages.evaluate.memo import MEMO

    cpu, texts = torch.device("cpu"), [PLANTED, *LINES[:5]]
    store = tmp_path / "evaluate"  # the step's directory in a store: one build per key
    first = Memo(store / "key1")
    scored, context = score_models(lm["dirs"], texts, LINES[:4], 16, 4, cpu, memo=first)
    assert first.reused == {} and len(list((store / "key1" / MEMO).glob("heldout-*.json"))) == 2
    # a later build (another key, or a failed build's kept outputs) scores nothing again: its
    # scores equal the fresh ones exactly, the reuse is named, and the files are copied over
    calls: list[int] = []
    real = scoring.score_documents
    monkeypatch.setattr(scoring, "score_documents",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    later = Memo(store / ".failed-key2-0123abcd")
    again, _ = score_models(lm["dirs"], texts, [], 16, 4, cpu, context, memo=later)
    assert again == scored and calls == []
    assert later.reused == {"heldout adapted": "key1", "heldout control": "key1"}
    assert len(list((store / ".failed-key2-0123abcd" / MEMO).glob("*.json"))) == 2
    assert "heldout control from key1" in later.note()
    # other text, another window or other model files: scored afresh
    other = Memo(store / "key3")
    score_models({"control": lm["dirs"]["control"]}, texts[:-1], [], 16, 4, cpu, context,
                 memo=other)
    score_models({"control": lm["dirs"]["control"]}, texts, [], 32, 4, cpu, context,
                 memo=other)
    assert other.reused == {} and len(calls) == 2
    changed = tmp_path / "changed"
    tiny_model(7, len(PreTrainedTokenizerFast.from_pretrained(lm["dirs"]["control"])
                      )).save_pretrained(changed)
    PreTrainedTokenizerFast.from_pretrained(lm["dirs"]["control"]).save_pretrained(changed)
    assert other.key("heldout", changed, {}, scoring.__name__) != other.key(
        "heldout", lm["dirs"]["control"], {}, scoring.__name__)
    # the key covers the scoring code's import closure
    assert Memo(tmp_path).key("heldout", changed, {}, scoring.__name__) != Memo(tmp_path).key(
        "heldout", changed, {}, "pipeline.stages.evaluate.zeroshot")


def test_bf16_scores_are_close_to_fp32_and_never_answer_for_them(
        lm: dict, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """evaluate.precision: bf16 changes the scores (autocast took effect) by bf16's rounding
    only, and a memo of fp32 scores is not reused for bf16 (nor the other way round)."""
    cpu, texts = torch.device("cpu"), [PLANTED, *LINES[:5]]
    control = {"control": lm["dirs"]["control"]}
    memo = Memo(tmp_path / "evaluate" / "key1")
    fp32, context = score_models(control, texts, LINES[:4], 16, 4, cpu, memo=memo)
    calls: list[str] = []
    real = scoring.score_documents
    monkeypatch.setattr(scoring, "score_documents",
                        lambda *a, **k: calls.append(k["precision"]) or real(*a, **k))
    bf16, _ = score_models(control, texts, [], 16, 4, cpu, context, memo=memo, precision="bf16")
    assert calls == ["bf16"] and memo.reused == {}  # scored, not recalled
    a = np.array([s.nll for s in fp32["control"]])
    b = np.array([s.nll for s in bf16["control"]])
    assert [s.tokens for s in fp32["control"]] == [s.tokens for s in bf16["control"]]
    assert not np.array_equal(a, b)
    np.testing.assert_allclose(b, a, rtol=0.02)  # bf16 keeps ~3 significant digits
    again, _ = score_models(control, texts, [], 16, 4, cpu, context, memo=memo, precision="bf16")
    assert again == bf16 and calls == ["bf16"]  # the bf16 memo answers bf16
    with pytest.raises(ValueError, match="evaluate.precision"):
        scoring.autocast(cpu, "fp16")
    assert scoring_note({"first_token_nll_share": 0.01, "heldout_masked_byte_share": 0.02},
                        context, "bf16").endswith("Forward passes in bf16 autocast "
                                                  "(evaluate.precision).")
