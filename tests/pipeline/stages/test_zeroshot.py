"""Zero-shot downstream scoring (pipeline/stages/evaluate/zeroshot.py): the KV-cache scorer
against scoring each context + choice in full, the exported task in lm-evaluation-harness
against the native scorer, and the rows exported against finetune's test split."""

from __future__ import annotations

import json
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
from pipeline.stages.evaluate import zeroshot
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
    assert got["acc,none"] == pytest.approx(m["zeroshot_organ_system_accuracy"])
    assert got["acc_norm,none"] == pytest.approx(m["zeroshot_organ_system_accuracy_norm"])
    native = {r["id"]: r["loglikelihoods"] for r in map(json.loads, (
        scored["out"] / "zeroshot_scores.jsonl").read_text().splitlines())
        if r["model"] == "adapted"}
    samples = results["samples"]["dapt_organ_system"]
    assert len(samples) == 40
    for s in samples:
        lls = [r[0][0] if isinstance(r[0], (list, tuple)) else r[0] for r in s["resps"]]
        np.testing.assert_allclose(lls, native[s["doc"]["id"]], atol=1e-4)


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
    assert "| task | examples | chance | control acc | adapted acc | adapted acc_norm |" in text
    assert (f"| organ_system | 40 | 0.200 | {m['zeroshot_organ_system_control_accuracy']:.3f} | "
            f"{m['zeroshot_organ_system_accuracy']:.3f} |") in text
    assert f"adapted - control {m['zeroshot_gain_vs_control']:+.3f} (95% CI" in text
    assert zeroshot_blocks({"metrics": m, "zeroshot": None}) == []
