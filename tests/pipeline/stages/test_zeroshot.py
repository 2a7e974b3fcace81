"""Zero-shot downstream scoring (pipeline/stages/evaluate/zeroshot.py): the KV-cache scorer
against scoring each context + choice in full, the exported task in lm-evaluation-harness
against the native scorer (acc, acc_norm and acc_mutual_info), the rows exported against
finetune's test split, and the headline rule chosen on finetune's validation rows
(pipeline/stages/evaluate/zeroshot_rules.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from pipeline.config import EvaluateConfig, FinetuneConfig, TaskConfig
from pipeline.engine.artifacts import Artifact
from pipeline.stages.evaluate import zeroshot, zeroshot_rules
from pipeline.stages.finetune import stage as finetune
from pipeline.stages.finetune.output import FinetuneOutput


def _tiny_model(path: Path, texts: list[str], seed: int) -> Path:
    """A 2-layer Llama (grouped KV heads) with a byte-level BPE trained on ``texts``."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=500, special_tokens=["<eos>"],
                                                       show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>", pad_token="<eos>")
    tok.save_pretrained(path)
    torch.manual_seed(seed)
    LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=64, max_position_embeddings=512,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def scored(samples_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The real organ-system task (5 labels, 300 rows) through finetune's probe, then zero-shot
    scoring of an "adapted" and a "control" tiny model on its test split."""
    root = tmp_path_factory.mktemp("zeroshot")
    rows = [json.loads(x) for x in
            (samples_dir / "medical/task_organ_system.jsonl").read_text().splitlines()]
    top = sorted({r["label"] for r in rows}, key=lambda k: -sum(r["label"] == k for r in rows))
    keep = [r for k in top[:5] for r in [r for r in rows if r["label"] == k][:60]]
    task_path = root / "organ.jsonl"
    task_path.write_text("".join(json.dumps(r) + "\n" for r in keep))
    texts = [r["text"] for r in rows[:2000]]
    adapted = _tiny_model(root / "pretrain" / "hf", texts, 0)
    control = _tiny_model(root / "control" / "hf", texts, 1)
    ft_config = FinetuneConfig(tasks=[TaskConfig(name="organ_system", path=str(task_path))],
                               method="probe", seeds=[0], max_seq_len=32,
                               probe={"c_grid": [1.0]})
    ft_out = root / "finetune"
    ft_out.mkdir()
    manifest = finetune.run(ft_config, {"pretrain": SimpleNamespace(path=adapted.parent)},
                            ft_out)
    (ft_out / "manifest.json").write_text(manifest.to_json())
    ft = FinetuneOutput(Artifact("finetune", "k", ft_out))
    out = root / "evaluate"
    out.mkdir()
    config = EvaluateConfig(zeroshot_max_examples=40, zeroshot_max_chars=200,
                            bootstrap_samples=200)
    metrics, details = zeroshot.evaluate(config, ft, {"adapted": adapted, "control": control},
                                         out)
    return {"ft_config": ft_config, "ft": ft, "out": out, "metrics": metrics,
            "details": details, "adapted": adapted, "control": control}


def test_kv_cache_scores_equal_scoring_each_choice_in_full(scored: dict) -> None:
    tok = PreTrainedTokenizerFast.from_pretrained(scored["adapted"])
    model = LlamaForCausalLM.from_pretrained(scored["adapted"]).eval()
    texts = scored["ft"].test_split("organ_system").column("text").to_pylist()[:12]
    # contexts of different lengths (padding in a batch), one ending in spaces (lm-eval moves
    # them into the continuation), choices of one and of several tokens
    queries = [zeroshot.prompt(t, "organ system", 40 + 15 * i) for i, t in enumerate(texts)]
    queries[3] += "  "
    choices = ["Abnormality of the eye", "the", "Neoplasm", "Abnormality of the immune system"]
    got = zeroshot.score_choices(model, tok, queries, choices, batch_size=5)
    assert tok.decode(zeroshot.encode_pair(tok, queries[3], " x")[1]).startswith("   x")
    lengths = {len(zeroshot.encode_pair(tok, q, " " + c)[1]) for q in queries for c in choices}
    assert 1 in lengths and max(lengths) > 3
    full = np.zeros_like(got)
    for i, q in enumerate(queries):
        for k, c in enumerate(choices):
            ctx, cont = zeroshot.encode_pair(tok, q, " " + c)
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([ctx + cont])).logits[0], -1)
            full[i, k] = sum(float(logp[len(ctx) - 1 + j, t]) for j, t in enumerate(cont))
    np.testing.assert_allclose(got, full, atol=1e-4)


def test_encode_pair_is_lm_evals(scored: dict) -> None:
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=str(scored["adapted"]), device="cpu", dtype="float32")
    tok = lm.tokenizer
    for ctx, cont in [("Text: a b\nAnswer:", " Neoplasm"), ("Answer: ", "Neoplasm"),
                      ("Answer:\n\n ", " eye"), ("abnormality", "ies")]:
        assert zeroshot.encode_pair(tok, ctx, cont) == lm._encode_pair(ctx, cont)


def test_exported_rows_are_finetunes_test_split(scored: dict) -> None:
    data, _ = finetune.prepare_task(scored["ft_config"].tasks[0], scored["ft_config"])
    test_ids = [data.ids[i] for i in data.splits["test"]]
    other = {data.ids[i] for s in ("train", "validation") for i in data.splits[s]}
    exported = [json.loads(x) for x in
                (scored["out"] / "lm_eval/organ_system/test.jsonl").read_text().splitlines()]
    assert [r["id"] for r in exported] == test_ids[:40] and len(test_ids) > 40
    assert not {r["id"] for r in exported} & other
    labels = [data.label_names[data.labels[i]] for i in data.splits["test"][:40]]
    spec = yaml.safe_load((scored["out"] / "lm_eval/organ_system/organ_system.yaml").read_text())
    assert [spec["doc_to_choice"][r["gold"]] for r in exported] == labels
    texts = [data.texts[i] for i in data.splits["test"][:40]]
    assert all(" ".join(t.split())[:200] in r["query"] for t, r in zip(texts, exported,
                                                                        strict=True))
    assert spec["dataset_kwargs"]["data_files"]["test"] == str(
        (scored["out"] / "lm_eval/organ_system/test.jsonl").resolve())
    build = Path("/w/evaluate/.tmp-abc123-0f0f0f0f")  # the store renames it to its key
    assert zeroshot.published(build) == Path("/w/evaluate/abc123")


def test_lm_eval_scores_the_export_as_the_native_scorer(scored: dict) -> None:
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(scored["out"] / "lm_eval"), include_defaults=False)
    results = lm_eval.simple_evaluate(
        model="hf", model_args={"pretrained": str(scored["adapted"]), "dtype": "float32"},
        tasks=["dapt_organ_system"], task_manager=manager, device="cpu", batch_size=8,
        bootstrap_iters=0, log_samples=True)
    got = results["results"]["dapt_organ_system"]
    m = scored["metrics"]
    assert got["acc,none"] == pytest.approx(m["zeroshot_organ_system_accuracy_raw"])
    assert got["acc_norm,none"] == pytest.approx(m["zeroshot_organ_system_accuracy_norm"])
    assert got["acc_mutual_info,none"] == pytest.approx(
        m["zeroshot_organ_system_accuracy_mutual_info"])
    native = {r["id"]: r["loglikelihoods"] for r in map(json.loads, (
        scored["out"] / "zeroshot_scores.jsonl").read_text().splitlines())
        if r["model"] == "adapted"}
    unconditional = scored["details"]["tasks"][0]["unconditional"]["adapted"]
    samples = results["samples"]["dapt_organ_system"]
    assert len(samples) == 40
    for s in samples:
        lls = [r[0][0] if isinstance(r[0], (list, tuple)) else r[0] for r in s["resps"]]
        # lm-eval asks the 5 choices after the prompt, then the 5 after the empty context
        assert len(lls) == 10
        np.testing.assert_allclose(lls[:5], native[s["doc"]["id"]], atol=1e-4)
        np.testing.assert_allclose(lls[5:], unconditional, atol=1e-4)


def test_metrics_and_the_paired_interval(scored: dict) -> None:
    m, details = scored["metrics"], scored["details"]
    assert m["zeroshot_examples"] == 40
    assert m["zeroshot_accuracy"] == m["zeroshot_organ_system_accuracy"]
    assert m["zeroshot_control_accuracy"] == m["zeroshot_organ_system_control_accuracy"]
    assert m["zeroshot_gain_vs_control"] == pytest.approx(
        m["zeroshot_accuracy"] - m["zeroshot_control_accuracy"])
    assert m["zeroshot_gain_vs_control_ci_low"] <= m["zeroshot_gain_vs_control"] \
        <= m["zeroshot_gain_vs_control_ci_high"]
    assert "zeroshot_gain_vs_base" not in m and "zeroshot_base_accuracy" not in m
    assert details["tasks"][0]["choices"] == 5 and details["tasks"][0]["examples"] == 40
    assert "vs control [95% CI" in zeroshot.verdict_text(m)
    # the majority-class rate of the 40 test rows scored, by hand from finetune's test split
    labels = scored["ft"].test_split("organ_system").slice(0, 40).column("label").to_pylist()
    rate = max(labels.count(x) for x in set(labels)) / 40
    assert m["zeroshot_organ_system_majority_rate"] == m["zeroshot_majority_rate"] == rate
    assert details["tasks"][0]["majority"] == rate
    # no model above it: the verdict says the test cannot show an effect; one above: silent
    low = {**m, "zeroshot_accuracy": rate, "zeroshot_control_accuracy": rate - 0.1}
    assert zeroshot.verdict_text(low).endswith(
        f"; no model above the majority-class rate {rate:.3f}: the zero-shot tasks cannot "
        "show a domain effect")
    assert "majority" not in zeroshot.verdict_text({**low, "zeroshot_control_accuracy": 0.99})
    # the interval by hand: identical models have a zero-width interval at 0; a model right
    # on every example vs one right on half has a gain of 0.5 within a narrow interval
    same = [np.array([1.0, 0.0, 1.0, 1.0])]
    assert zeroshot.gain_interval(same, same, 100) == (0.0, 0.0, 0.0)
    gain, low, high = zeroshot.gain_interval([np.ones(400)], [np.arange(400) % 2.0], 500)
    assert gain == 0.5 and 0.44 < low < 0.5 < high < 0.56


def test_report_section(scored: dict) -> None:
    from pipeline.lifecycle.report import to_markdown, zeroshot_blocks

    m = scored["metrics"]
    text = to_markdown(zeroshot_blocks({"metrics": m, "zeroshot": scored["details"]}))
    assert "## Zero-shot downstream" in text
    rule = scored["details"]["rule"]
    assert (f"| task | examples | chance | majority | control {rule} | adapted {rule} | "
            "adapted ") in text
    assert (f"| organ_system | 40 | 0.200 | {m['zeroshot_majority_rate']:.3f} | "
            f"{m['zeroshot_organ_system_control_accuracy']:.3f} | "
            f"{m['zeroshot_organ_system_accuracy']:.3f} |") in text
    assert f"Headline rule: {rule}, chosen on " in text and "validation examples" in text
    assert f"adapted - control {m['zeroshot_gain_vs_control']:+.3f} (95% CI" in text
    assert zeroshot_blocks({"metrics": m, "zeroshot": None}) == []


def _validation_scores(scored: dict) -> dict[str, zeroshot.ModelScores]:
    """Each model's validation log-likelihoods as evaluate wrote them, with no test rows."""
    rows = [json.loads(x) for x in
            (scored["out"] / "zeroshot_rule_scores.jsonl").read_text().splitlines()]
    unconditional = scored["details"]["tasks"][0]["unconditional"]
    return {model: zeroshot.ModelScores(
        {}, {"organ_system": np.array([r["loglikelihoods"] for r in rows
                                       if r["model"] == model])},
        {"organ_system": np.array(unconditional[model])}) for model in ("adapted", "control")}


def test_the_headline_rule_is_chosen_on_validation_rows(scored: dict) -> None:
    m, details = scored["metrics"], scored["details"]
    data, _ = finetune.prepare_task(scored["ft_config"].tasks[0], scored["ft_config"])
    validation = [data.ids[i] for i in data.splits["validation"]]
    test = {data.ids[i] for i in data.splits["test"]}
    rows = [json.loads(x) for x in
            (scored["out"] / "zeroshot_rule_scores.jsonl").read_text().splitlines()]
    # the validation rows (in hash order, under the cap of 100), never a test row
    assert 0 < len(validation) <= 100
    for model in ("adapted", "control"):
        assert [r["id"] for r in rows if r["model"] == model] == validation
    assert not {r["id"] for r in rows} & test
    assert [r["gold"] for r in rows if r["model"] == "adapted"] == [
        data.labels[i] for i in data.splits["validation"]]
    # the choice by hand: each rule's validation accuracy averaged over both models
    chars = np.array([float(len(c)) for c in zeroshot.tasks_of(
        scored["ft"], EvaluateConfig())[0].choices])
    by_rule = {}
    for rule in zeroshot_rules.RULES:
        per_model = []
        for model, unc in details["tasks"][0]["unconditional"].items():
            ll = np.array([r["loglikelihoods"] for r in rows if r["model"] == model])
            gold = np.array([r["gold"] for r in rows if r["model"] == model])
            score = {"acc": ll, "acc_norm": ll / chars, "acc_mutual_info": ll - np.array(unc)}
            per_model.append(float((score[rule].argmax(1) == gold).mean()))
        by_rule[rule] = float(np.mean(per_model))
        assert m[f"zeroshot_rule_validation_accuracy{zeroshot_rules.SUFFIX[rule]}"] == \
            pytest.approx(by_rule[rule])
    best = max(zeroshot_rules.RULES, key=lambda r: (by_rule[r], -zeroshot_rules.RULES.index(r)))
    rule = details["rule"]
    assert rule == best and details["rule_choice"]["chosen_on"] == "validation"
    assert m["zeroshot_rule_index"] == zeroshot_rules.RULES.index(rule)
    assert m["zeroshot_rule_examples"] == len(validation)
    # the same choice from the validation scores alone: no test score is there to read
    again = zeroshot_rules.choose_on(100, zeroshot.tasks_of(scored["ft"], EvaluateConfig(),
                                                            "validation"),
                                     _validation_scores(scored))
    assert again.rule == rule and again.scores == pytest.approx(by_rule)
    # the headline metrics are the chosen rule's, every rule's are beside them
    suffix = zeroshot_rules.SUFFIX[rule]
    for name in ("zeroshot_accuracy", "zeroshot_control_accuracy",
                 "zeroshot_organ_system_accuracy", "zeroshot_gain_vs_control"):
        key = name.replace("accuracy", f"accuracy{suffix}") if "accuracy" in name \
            else name + suffix
        assert m[name] == pytest.approx(m[key])
    assert {f"zeroshot_accuracy{s}" for s in ("_raw", "_norm", "_mutual_info")} <= set(m)
    assert f"({rule}, chosen on validation)" in zeroshot.verdict_text(m)
    assert json.loads(json.dumps(details))["rule_choice"]["rule"] == rule  # metrics.json


def test_no_validation_rows_or_a_cap_of_0_keep_acc(scored: dict, tmp_path: Path) -> None:
    validation = zeroshot.tasks_of(scored["ft"], EvaluateConfig(), "validation")
    off = zeroshot_rules.choose_on(0, validation, _validation_scores(scored))
    assert (off.rule, off.scores, off.chosen_on_validation) == ("acc", {}, False)
    assert "zeroshot_rule_examples is 0" in off.describe()
    assert zeroshot.tasks_of(scored["ft"], EvaluateConfig(zeroshot_rule_examples=0),
                             "validation") == []
    assert len(zeroshot.tasks_of(scored["ft"], EvaluateConfig(zeroshot_rule_examples=7),
                                 "validation")[0].ids) == 7
    # a finetune artifact from before validation_split.parquet: no validation rows, acc
    old = tmp_path / "finetune"
    shutil.copytree(scored["ft"].artifact.path, old)
    (old / "validation_split.parquet").unlink()
    ft = FinetuneOutput(Artifact("finetune", "k", old))
    assert ft.validation_split("organ_system") is None
    missing = zeroshot_rules.choose_on(100, zeroshot.tasks_of(ft, EvaluateConfig(),
                                                              "validation"), {})
    assert missing.rule == "acc" and "no validation rows" in missing.note
    assert zeroshot.verdict_text({"zeroshot_accuracy": 0.5, **missing.metrics()}) == \
        "zero-shot accuracy 0.500 (acc)"


def test_rule_ties_and_the_mean_over_models() -> None:
    def judged(per_model: dict[str, dict[str, list[float]]]) -> dict:
        return {m: {"t": {r: np.array(v) for r, v in rules.items()}}
                for m, rules in per_model.items()}

    same = {"acc": [1.0, 0.0], "acc_norm": [0.0, 1.0], "acc_mutual_info": [1.0, 0.0]}
    assert zeroshot_rules.choose(judged({"base": same})).rule == "acc"
    norm_mi = {"acc": [0.0, 0.0], "acc_norm": [1.0, 0.0], "acc_mutual_info": [0.0, 1.0]}
    assert zeroshot_rules.choose(judged({"base": norm_mi})).rule == "acc_norm"
    # mutual information is best for the adapted model only; acc_norm on average
    choice = zeroshot_rules.choose(judged({
        "adapted": {"acc": [0, 0, 0, 0], "acc_norm": [1, 0, 0, 0], "acc_mutual_info": [1, 1, 0, 0]},
        "control": {"acc": [0, 0, 0, 0], "acc_norm": [1, 1, 1, 0], "acc_mutual_info": [1, 0, 0, 0]},
        "base": {"acc": [1, 0, 0, 0], "acc_norm": [1, 1, 0, 0], "acc_mutual_info": [1, 0, 0, 0]}}))
    assert choice.rule == "acc_norm" and choice.examples == 4
    assert choice.scores == pytest.approx({"acc": 1 / 12, "acc_norm": 0.5,
                                           "acc_mutual_info": 1 / 3})


def test_unconditional_context_is_lm_evals(scored: dict) -> None:
    tok = PreTrainedTokenizerFast.from_pretrained(scored["adapted"])
    assert tok.bos_token_id is None  # lm-eval's prefix is then the EOS token
    eos = tok.eos_token_id
    ctx, cont = zeroshot_rules.unconditional_pair(tok, " Neoplasm")
    assert ctx == [eos] and cont == tok.encode(" Neoplasm", add_special_tokens=False)
    ctx, cont = zeroshot_rules.unconditional_pair(tok, "<eos> eye")
    assert ctx == [eos] and tok.decode(cont) == " eye"


def test_memo_gives_the_same_zero_shot_figures_without_scoring_again(
        scored: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.stages.evaluate.memo import Memo

    config = EvaluateConfig(zeroshot_max_examples=40, zeroshot_max_chars=200,
                            bootstrap_samples=200)
    models = {"adapted": scored["adapted"], "control": scored["control"]}
    first = Memo(tmp_path / "evaluate" / "a")
    metrics, details = zeroshot.evaluate(config, scored["ft"], models, first.out_dir, first)
    assert metrics == scored["metrics"] and first.reused == {}
    monkeypatch.setattr(zeroshot, "_score_model", lambda *a, **k: pytest.fail("scored again"))
    later = Memo(tmp_path / "evaluate" / "b")
    assert zeroshot.evaluate(config, scored["ft"], models, later.out_dir, later) == (
        metrics, details)
    assert later.reused == {"zeroshot adapted": "a", "zeroshot control": "a"}
    # other prompts (a shorter cut of each text) are other inputs
    with pytest.raises(pytest.fail.Exception, match="scored again"):
        zeroshot.evaluate(config.model_copy(update={"zeroshot_max_chars": 100}), scored["ft"],
                          models, later.out_dir, later)
    # and so is another precision: fp32 scores never answer for bf16
    with pytest.raises(pytest.fail.Exception, match="scored again"):
        zeroshot.evaluate(config.model_copy(update={"precision": "bf16"}), scored["ft"],
                          models, later.out_dir, later)


def test_bf16_zero_shot_scores_follow_fp32(scored: dict) -> None:
    """The zero-shot scorer under bf16 autocast: log-likelihoods within bf16's rounding of the
    fp32 ones (and not equal to them: autocast took effect)."""
    task = zeroshot.tasks_of(scored["ft"], EvaluateConfig(zeroshot_max_examples=8,
                                                           zeroshot_max_chars=200))[0]
    cpu = torch.device("cpu")
    fp32 = zeroshot._score_model(scored["adapted"], [task], [], 4, "adapted", cpu)
    bf16 = zeroshot._score_model(scored["adapted"], [task], [], 4, "adapted", cpu, "bf16")
    a, b = fp32.test[task.name], bf16.test[task.name]
    assert a.shape == b.shape and not np.array_equal(a, b)
    np.testing.assert_allclose(b, a, rtol=0.05, atol=0.05)
    np.testing.assert_allclose(bf16.unconditional[task.name], fp32.unconditional[task.name],
                               rtol=0.05, atol=0.05)
