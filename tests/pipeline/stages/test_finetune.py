from __future__ import annotations

import gc
import json
import math
import statistics
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from pipeline.config import FinetuneConfig, LoraConfig, ProbeConfig, TaskConfig
from pipeline.engine.artifacts import Artifact
from pipeline.metrics import classification_report
from pipeline.stages.finetune.output import FinetuneOutput
from pipeline.stages.finetune.stage import (
    adapt,
    difference,
    extract_features,
    fit,
    fit_probe,
    headline_metrics,
    load_task,
    prepare_task,
    resplit,
    run,
    summarize,
)
from pipeline.tasks import split_of


def test_split_is_a_stable_function_of_id_and_split_seed() -> None:
    ids = [f"doc-{i}" for i in range(4000)]
    splits = [split_of(i, 0.2, 0.1, seed=0) for i in ids]
    assert 650 < splits.count("test") < 950  # 20%
    assert 220 < splits.count("validation") < 420  # 10% of the other 80%
    assert splits == [split_of(i, 0.2, 0.1, seed=0) for i in ids]
    assert splits != [split_of(i, 0.2, 0.1, seed=1) for i in ids]
    # no validation: the test rows stay the same, the rest is train
    assert [s == "test" for s in splits] == [split_of(i, 0.2, 0.0, 0) == "test" for i in ids]
    assert "validation" not in {split_of(i, 0.2, 0.0, 0) for i in ids}


def test_load_task_reads_fields_and_rejects_missing(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"key": 1, "body": "alpha", "y": "A"}, {"key": 2, "body": "beta", "y": "B"}]))
    task = TaskConfig(name="t", path=str(path), id_field="key", text_field="body", label_field="y")
    table, unmapped = load_task(task, path)
    assert unmapped == 0 and table.to_pylist() == [
        {"id": "1", "text": "alpha", "label": "A"}, {"id": "2", "text": "beta", "label": "B"}]
    with pytest.raises(ValueError, match="label_field='label'"):
        load_task(TaskConfig(name="t", path=str(path), id_field="key", text_field="body"), path)


def test_label_map_renames_merges_and_counts_the_rows_it_leaves_out(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("id,text,label\n1,a a,cat\n2,b b,kitten\n3,c c,dog\n4,d d,fish\n5,e e,cat\n")
    task = TaskConfig(name="pets", path=str(path),
                      label_map={"cat": "feline", "kitten": "feline", "dog": "canine"})
    table, unmapped = load_task(task, path)
    assert unmapped == 1  # the fish
    assert [(r["id"], r["label"]) for r in table.to_pylist()] == [
        ("1", "feline"), ("2", "feline"), ("3", "canine"), ("5", "feline")]
    with pytest.raises(ValueError, match=r"tasks\.pets\.label_map: no label"):
        load_task(task.model_copy(update={"label_map": {"bird": "avian"}}), path)


def test_task_shorthand_and_config_errors() -> None:
    one = FinetuneConfig.model_validate({"task": {"name": "a", "path": "a.jsonl"}})
    assert [t.name for t in one.tasks] == ["a"] and one.seeds == [0, 1, 2]
    with pytest.raises(ValueError, match="not both"):
        FinetuneConfig.model_validate({"task": {"name": "a", "path": "a"},
                                       "tasks": [{"name": "b", "path": "b"}]})
    with pytest.raises(ValueError, match="task names must be unique"):
        FinetuneConfig.model_validate({"tasks": [{"name": "a", "path": "a"},
                                                 {"name": "a", "path": "b"}]})
    with pytest.raises(ValueError, match="seeds must be distinct"):
        FinetuneConfig.model_validate({"tasks": [{"name": "a", "path": "a"}], "seeds": [1, 1]})


def _run(macro_f1: float, accuracy: float, seed: int) -> dict:
    return {"seed": seed, "macro_f1": macro_f1, "accuracy": accuracy, "majority_rate": 0.5,
            "per_class_f1": [macro_f1, 1.0], "support": [3, 1], "confusion": [[2, 1], [0, 1]],
            "best_epoch": 1, "history": []}


def test_summary_is_mean_and_sample_std_over_seeds() -> None:
    s = summarize([_run(0.5, 0.75, 0), _run(0.7, 0.25, 1)])
    assert s["macro_f1"] == pytest.approx(0.6)
    assert s["macro_f1_std"] == pytest.approx(math.sqrt(0.02))  # ((0.1^2 + 0.1^2) / 1) ** .5
    assert s["accuracy"] == pytest.approx(0.5) and s["accuracy_std"] == pytest.approx(
        math.sqrt(0.125))
    assert s["per_class_f1"] == pytest.approx([0.6, 1.0])
    assert s["confusion"] == [[4, 2], [0, 2]]  # summed over seeds
    assert summarize([_run(0.5, 0.75, 0)])["macro_f1_std"] == 0.0

    base = summarize([_run(0.4, 0.5, 0), _run(0.4, 0.5, 1)])
    m = headline_metrics({"first": {"adapted": s, "base": base},
                          "second": {"adapted": base, "base": None}})
    assert m["macro_f1"] == pytest.approx(0.6) and m["base_macro_f1"] == pytest.approx(0.4)
    assert m["macro_f1_gain"] == pytest.approx(0.2) and m["accuracy_gain"] == pytest.approx(0.0)
    assert m["second.macro_f1"] == pytest.approx(0.4) and "second.macro_f1_gain" not in m
    assert "second.base_macro_f1" not in m and m["majority_rate"] == 0.5


@pytest.fixture(scope="module")
def tiny_task(samples_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 2-layer model with a tokenizer trained here, and 400 rows of the real organ-system
    task."""
    root = tmp_path_factory.mktemp("finetune")
    lines = (samples_dir / "medical/task_organ_system.jsonl").read_text().splitlines()
    rows = [json.loads(x) for x in lines]
    # the four largest labels, 100 rows each: small, but a real task
    by_label: dict[str, list[dict]] = {}
    for r in rows:
        by_label.setdefault(r["label"], []).append(r)
    top = sorted(by_label, key=lambda k: -len(by_label[k]))[:4]
    task_path = root / "task.jsonl"
    task_path.write_text("".join(json.dumps(r) + "\n" for k in top for r in by_label[k][:100]))

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator([json.loads(x)["text"] for x in lines[:3000]],
                            trainers.BpeTrainer(vocab_size=600, special_tokens=["<eos>"]))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>", pad_token="<eos>")
    model_dir = root / "model"
    tok.save_pretrained(model_dir)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128, pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id)).save_pretrained(model_dir)
    return {"task": TaskConfig(name="organ", path=str(task_path)), "model_dir": model_dir}


def _config(tiny_task: dict, **kw: object) -> FinetuneConfig:
    return FinetuneConfig.model_validate({
        "tasks": [tiny_task["task"].model_dump()], "max_seq_len": 48, "batch_size": 16,
        "lr": 3e-3, "epochs": 4, **kw})


def test_freezing_and_lora_choose_the_trained_weights(tiny_task: dict) -> None:
    def fresh() -> torch.nn.Module:
        return AutoModelForSequenceClassification.from_pretrained(tiny_task["model_dir"],
                                                                  num_labels=3)

    frozen = adapt(fresh(), _config(tiny_task, freeze_layers=1))
    trained = {n for n, p in frozen.named_parameters() if p.requires_grad}
    assert not any(n.startswith(("model.embed_tokens", "model.layers.0.")) for n in trained)
    assert any(n.startswith("model.layers.1.") for n in trained) and "score.weight" in trained

    lora = adapt(fresh(), _config(tiny_task, method="lora", freeze_layers=1,
                                  lora=LoraConfig(r=4, target_modules=["q_proj", "v_proj"])))
    trained = [n for n, p in lora.named_parameters() if p.requires_grad]
    adapters = [n for n in trained if "lora_" in n]
    # adapters on q and v of layer 1 only; the head is trained in full
    assert len(adapters) == 4 and all(".layers.1." in n for n in adapters)
    assert all("lora_" in n or "score" in n for n in trained)
    with pytest.raises(ValueError, match="freeze_layers: 3 but the model has 2 layers"):
        adapt(fresh(), _config(tiny_task, freeze_layers=3))


@pytest.mark.slow
def test_fit_keeps_the_best_validation_epoch(tiny_task: dict) -> None:
    config = _config(tiny_task, validation_fraction=0.25, patience=1, epochs=6)
    data, unmapped = prepare_task(tiny_task["task"], config)
    assert unmapped == 0 and sum(len(r) for r in data.splits.values()) == 400
    gc.disable()  # (a collection would hide a reference cycle that keeps AdamW's state)
    try:
        fitted = fit(tiny_task["model_dir"], data, config, seed=0, label="adapted")
        kept = [o for o in gc.get_objects() if type(o) is torch.optim.AdamW and o.state]
    finally:
        gc.enable()
    assert kept == []  # no optimizer state outlives the fine-tune
    scores = [h["validation_macro_f1"] for h in fitted["history"]]
    best = scores.index(max(scores)) + 1
    assert fitted["best_epoch"] == best
    # stopped `patience` epochs after the best, or at the last epoch
    assert len(scores) == min(6, best + 1)
    # the weights kept are the best epoch's: they reproduce its validation score
    model, tok = fitted["model"], fitted["tokenizer"]
    model.eval()
    val = data.splits["validation"]
    with torch.no_grad():
        enc = tok([data.texts[i] for i in val], truncation=True, max_length=48, padding=True,
                  return_tensors="pt")
        preds = model(**enc).logits.argmax(-1).tolist()
    assert classification_report([data.labels[i] for i in val], preds, 4)["macro_f1"] == \
        pytest.approx(max(scores))
    # the test report is of the same predictions the run returns
    test = data.splits["test"]
    assert fitted["accuracy"] == pytest.approx(sum(
        p == data.labels[i] for p, i in zip(fitted["predictions"], test, strict=True)) / len(test))
    # seeds change the head's initialisation, not the splits
    again, _ = prepare_task(tiny_task["task"], config)
    assert again.splits == data.splits


@pytest.mark.slow
def test_stage_with_lora_saves_a_merged_model_that_reproduces_its_predictions(
        tiny_task: dict, tmp_path: Path) -> None:
    pretrain = tmp_path / "pretrain"
    pretrain.mkdir()
    (pretrain / "hf").symlink_to(tiny_task["model_dir"])
    config = _config(tiny_task, method="lora", seeds=[0, 1], epochs=2,
                     lora=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    # the same directory as the "base": both models are trained with the same recipe
    manifest = run(config, {"pretrain": SimpleNamespace(path=pretrain),
                            "models": SimpleNamespace(path=pretrain)}, tmp_path)
    assert manifest.counts["fine_tunes"] == 4 and manifest.extra["models"] == ["adapted", "base"]
    # identical model and seeds: identical results, so the gain is exactly 0
    assert manifest.metrics["macro_f1"] == manifest.metrics["base_macro_f1"]
    assert manifest.metrics["macro_f1_gain"] == 0.0
    preds = [r for r in pq.read_table(tmp_path / "predictions.parquet").to_pylist()
             if r["model"] == "adapted" and r["seed"] == 0]
    saved = tmp_path / "model/organ"
    model = AutoModelForSequenceClassification.from_pretrained(saved).eval()
    assert not any("lora" in n for n, _ in model.named_parameters())  # merged
    tok = AutoTokenizer.from_pretrained(saved)
    data, _ = prepare_task(tiny_task["task"], config)
    by_id = {x: t for x, t in zip(data.ids, data.texts, strict=True)}
    with torch.no_grad():
        enc = tok([by_id[r["id"]] for r in preds], truncation=True, max_length=48,
                  padding=True, return_tensors="pt")
        again = model(**enc).logits.argmax(-1).tolist()
    assert [model.config.id2label[i] for i in again] == [r["pred"] for r in preds]


def test_ingest_decontaminates_against_exactly_the_rows_finetune_tests_on(tiny_task: dict
                                                                         ) -> None:
    from pipeline.config import EvalSetConfig
    from pipeline.tasks import eval_set_texts

    config = _config(tiny_task, max_test_examples=50, split_seed=3)
    data, _ = prepare_task(tiny_task["task"], config)
    texts = eval_set_texts(EvalSetConfig(name="t", path=tiny_task["task"].path,
                                         test_fraction=0.2, split_seed=3, max_rows=50))
    assert texts == [data.texts[i] for i in data.splits["test"]] and len(texts) == 50


# --- method: probe ---------------------------------------------------------------------------


def test_probe_config_is_typed_and_errors_name_the_field(tiny_task: dict) -> None:
    config = _config(tiny_task, method="probe", max_seq_len=32, max_train_examples=50,
                     max_test_examples=20, probe={"c_grid": [0.5, 2.0], "batch_size": 4})
    assert config.probe == ProbeConfig(c_grid=[0.5, 2.0], batch_size=4)
    assert FinetuneConfig.model_validate({"task": {"name": "a", "path": "a"}}).method == "full"
    with pytest.raises(ValueError, match=r"finetune\.probe\.c_grid: every C must be > 0"):
        _config(tiny_task, method="probe", probe={"c_grid": [1.0, 0.0]})
    with pytest.raises(ValueError, match=r"finetune\.probe\.c_grid: values must be distinct"):
        _config(tiny_task, method="probe", probe={"c_grid": [1.0, 1.0]})
    with pytest.raises(ValueError, match="c_grid"):
        _config(tiny_task, method="probe", probe={"c_grid": []})
    with pytest.raises(ValueError, match="max_iter"):
        _config(tiny_task, method="probe", probe={"max_iter": 0})
    with pytest.raises(ValueError, match="extra"):
        _config(tiny_task, method="probe", probe={"cgrid": [1.0]})
    with pytest.raises(ValueError, match=r"finetune\.validation_fraction: 0, but method probe"):
        _config(tiny_task, method="probe", validation_fraction=0)
    # one C needs no validation split
    _config(tiny_task, method="probe", validation_fraction=0, probe={"c_grid": [1.0]})


def test_features_are_the_masked_mean_of_the_last_hidden_state(tiny_task: dict) -> None:
    texts = ["Abnormality of the kidney.", "A much longer description of a heart defect that "
             "affects the valves and the walls of the heart.", "Cleft."]
    config = _config(tiny_task, method="probe", max_seq_len=16, probe={"batch_size": 2})
    features, n_tokens = extract_features(tiny_task["model_dir"], texts, config)
    tok = AutoTokenizer.from_pretrained(tiny_task["model_dir"])
    lm = LlamaForCausalLM.from_pretrained(tiny_task["model_dir"]).eval()
    lengths = []
    for text, row in zip(texts, features, strict=True):
        ids = tok(text, truncation=True, max_length=16, return_tensors="pt")["input_ids"]
        lengths.append(ids.shape[1])
        with torch.no_grad():  # one example alone: no padding, a plain mean over its tokens
            hidden = lm.model(input_ids=ids).last_hidden_state[0]
        assert row == pytest.approx(hidden.mean(0).numpy(), abs=1e-5)
    assert n_tokens == sum(lengths) and len(set(lengths)) == 3 and max(lengths) == 16
    assert features.shape == (3, 32) and features.dtype == np.float32


def test_seeds_redraw_train_and_validation_but_never_the_test_rows(tiny_task: dict) -> None:
    config = _config(tiny_task, method="probe", validation_fraction=0.25)
    data, _ = prepare_task(tiny_task["task"], config)
    pool = set(data.splits["train"]) | set(data.splits["validation"])
    drawn = [resplit(data, seed, config.split_seed) for seed in (0, 1, 2)]
    for splits in drawn:
        assert splits["test"] == data.splits["test"]
        assert {k: len(v) for k, v in splits.items()} == {k: len(v)
                                                          for k, v in data.splits.items()}
        assert set(splits["train"]) | set(splits["validation"]) == pool
        assert not set(splits["train"]) & set(splits["validation"])
    assert len({tuple(s["validation"]) for s in drawn}) == 3
    assert resplit(data, 1, config.split_seed) == drawn[1]  # a function of the seed


def test_probe_beats_the_majority_rate_and_chooses_c_on_validation_only(tiny_task: dict
                                                                       ) -> None:
    config = _config(tiny_task, method="probe", validation_fraction=0.25,
                     probe={"c_grid": [0.001, 0.1, 10.0]})
    data, _ = prepare_task(tiny_task["task"], config)
    rows = sorted(set().union(*data.splits.values()))
    features, _ = extract_features(tiny_task["model_dir"], [data.texts[i] for i in rows], config)
    labels = np.asarray([data.labels[i] for i in rows])
    pos = {r: k for k, r in enumerate(rows)}
    splits = {k: [pos[i] for i in v] for k, v in resplit(data, 0, 0).items()}
    fitted = fit_probe(features, labels, splits, 4, config, seed=0)
    assert fitted["macro_f1"] > fitted["majority_rate"] + 0.1 and fitted["majority_rate"] < 0.4
    assert [h["c"] for h in fitted["history"]] == [0.001, 0.1, 10.0]
    best = max(fitted["history"], key=lambda h: h["validation_macro_f1"])
    assert fitted["c"] == best["c"] and fitted["validation_macro_f1"] == \
        best["validation_macro_f1"]
    # the test labels play no part in the choice: shuffled, they change only the test scores
    shuffled = labels.copy()
    test = splits["test"]
    shuffled[test] = np.random.default_rng(0).permutation(labels[test])
    again = fit_probe(features, shuffled, splits, 4, config, seed=0)
    assert again["history"] == fitted["history"] and again["c"] == fitted["c"]
    assert again["predictions"] == fitted["predictions"]
    assert again["accuracy"] != fitted["accuracy"]
    # while the validation labels do steer it: a grid scored on different labels differs
    moved = labels.copy()
    val = splits["validation"]
    moved[val] = np.random.default_rng(1).permutation(labels[val])
    assert fit_probe(features, moved, splits, 4, config, seed=0)["history"] != fitted["history"]


def test_stage_probe_scores_base_control_and_adapted_on_the_same_test_rows(
        tiny_task: dict, tmp_path: Path) -> None:
    pretrain, control = tmp_path / "pretrain", tmp_path / "control"
    pretrain.mkdir()
    (pretrain / "hf").symlink_to(tiny_task["model_dir"])
    # the control: the same architecture and tokenizer, other weights
    torch.manual_seed(1)
    AutoTokenizer.from_pretrained(tiny_task["model_dir"]).save_pretrained(control / "hf")
    LlamaForCausalLM(LlamaConfig.from_pretrained(tiny_task["model_dir"])).save_pretrained(
        control / "hf")
    config = _config(tiny_task, method="probe", seeds=[0, 1, 2], validation_fraction=0.25,
                     max_train_examples=200, max_test_examples=60, max_seq_len=32)
    out = tmp_path / "out"
    out.mkdir()
    manifest = run(config, {"pretrain": SimpleNamespace(path=pretrain),
                            "models": SimpleNamespace(path=pretrain),
                            "control": SimpleNamespace(path=control)}, out)
    m, result = manifest.metrics, manifest.extra["tasks"]["organ"]
    assert manifest.extra["models"] == ["adapted", "base", "control"]
    assert manifest.counts["fine_tunes"] == 9 and manifest.counts["test_examples"] == 60
    preds = pq.read_table(out / "predictions.parquet").to_pylist()
    ids = {}
    for r in preds:
        ids.setdefault((r["model"], r["seed"]), []).append(r["id"])
    assert len(ids) == 9 and len({tuple(v) for v in ids.values()}) == 1
    assert len(next(iter(ids.values()))) == 60
    # the base is the adapted model here: the same features, so the same scores per seed
    assert m["macro_f1"] == m["base_macro_f1"] and m["macro_f1_gain"] == 0.0
    assert m["macro_f1_gain_std"] == 0.0
    for key in ("control_macro_f1", "control_accuracy", "control_macro_f1_std",
                "control_accuracy_std", "macro_f1_gain_vs_control",
                "macro_f1_gain_vs_control_std", "accuracy_gain_vs_control"):
        assert math.isfinite(m[key])
    assert m["macro_f1_gain_vs_control"] == pytest.approx(m["macro_f1"] - m["control_macro_f1"])
    per_seed = [a["macro_f1"] - c["macro_f1"] for a, c in
                zip(result["adapted"]["runs"], result["control"]["runs"], strict=True)]
    diff = result["adapted_vs_control"]
    assert [d["macro_f1"] for d in diff["per_seed"]] == pytest.approx(per_seed)
    assert diff["macro_f1_std"] == pytest.approx(statistics.stdev(per_seed))
    assert m["macro_f1_gain_vs_control_std"] == pytest.approx(statistics.stdev(per_seed))
    # different weights, different features
    assert any(a["macro_f1"] != c["macro_f1"] or a["c"] != c["c"] for a, c in
               zip(result["adapted"]["runs"], result["control"]["runs"], strict=True))
    assert {r["seed"] for r in result["adapted"]["runs"]} == {0, 1, 2}
    assert all(r["c"] in config.probe.c_grid for r in result["adapted"]["runs"])
    feats = result["features"]["adapted"]
    assert feats["examples"] == sum(len(v) for v in prepare_task(tiny_task["task"], config)[0]
                                    .splits.values()) and feats["tokens"] > feats["examples"]
    assert not (out / "model").exists()  # a probe trains no model worth saving
    # what evaluate and the report read of it, through its reader
    (out / "manifest.json").write_text(manifest.to_json())
    ft = FinetuneOutput(Artifact("finetune", "k", out))
    assert (ft.method, ft.seeds, ft.models) == ("probe", [0, 1, 2],
                                                ["adapted", "base", "control"])
    assert [name for name, _ in ft.tasks] == [t.name for t in config.tasks]
    assert ft.tasks[0][1]["adapted"]["macro_f1"] == ft.metrics["macro_f1"] == m["macro_f1"]
    assert ft.task_files == {t.name: t.path for t in config.tasks}
    assert pq.read_table(ft.predictions_file).num_rows == len(preds)
    with pytest.raises(ValueError, match="pretrain/k is not a finetune artifact"):
        FinetuneOutput(Artifact("pretrain", "k", out))


def test_headline_metrics_name_control_and_the_paired_spread() -> None:
    adapted = summarize([_run(0.6, 0.7, 0), _run(0.8, 0.9, 1)])
    control = summarize([_run(0.5, 0.7, 0), _run(0.5, 0.6, 1)])
    m = headline_metrics({"first": {"adapted": adapted, "control": control},
                          "second": {"adapted": adapted, "base": control, "control": control}})
    assert m["control_macro_f1"] == pytest.approx(0.5) and m["control_macro_f1_std"] == 0.0
    assert m["macro_f1_gain_vs_control"] == pytest.approx(0.2)
    # per-seed differences 0.1 and 0.3: their sample std, not a sum of the two models' stds
    assert m["macro_f1_gain_vs_control_std"] == pytest.approx(math.sqrt(0.02))
    assert "macro_f1_gain" not in m and "base_macro_f1" not in m
    assert m["second.macro_f1_gain"] == pytest.approx(0.2)
    assert m["second.control_accuracy"] == pytest.approx(0.65)
    d = difference(adapted, control)
    assert [x["macro_f1"] for x in d["per_seed"]] == pytest.approx([0.1, 0.3])


@pytest.mark.slow  # SmolLM2-135M features
def test_probe_on_the_real_smollm2_weights(samples_dir: Path, smollm2, tmp_path: Path) -> None:
    """Probes a few dozen real examples at seq 32 with SmolLM2-135M (converted once per
    session: the ``smollm2`` fixture)."""
    from pipeline.stages.models.stage import hf_dir

    art = smollm2
    rows = [json.loads(x) for x in
            (samples_dir / "medical/task_organ_system.jsonl").read_text().splitlines()]
    by_label: dict[str, list[dict]] = {}
    for r in rows:
        by_label.setdefault(r["label"], []).append(r)
    top = sorted(by_label, key=lambda k: -len(by_label[k]))[:3]
    task_path = tmp_path / "task.jsonl"
    task_path.write_text("".join(json.dumps(r) + "\n" for k in top for r in by_label[k][:20]))
    config = FinetuneConfig.model_validate({
        "task": {"name": "organ", "path": str(task_path)}, "method": "probe", "seeds": [0, 1],
        "max_seq_len": 32, "validation_fraction": 0.25, "probe": {"c_grid": [0.1, 1.0]}})
    out = tmp_path / "out"
    out.mkdir()
    # the base as the adapted model too: the path of a real run, without pretraining it
    manifest = run(config, {"pretrain": SimpleNamespace(path=hf_dir(art).parent),
                            "models": art}, out)
    m, result = manifest.metrics, manifest.extra["tasks"]["organ"]
    assert result["counts"]["task_rows"] == 60 and m["macro_f1"] == m["base_macro_f1"]
    assert 0 <= m["macro_f1"] <= 1 and {"macro_f1_std", "majority_rate"} <= set(m)
    assert result["features"]["base"]["tokens"] > 60
    # AutoModel loads the real weights (none re-initialised): the feature of one example is
    # the mean of the causal LM's own last hidden state
    text = by_label[top[0]][0]["text"]
    features, _ = extract_features(hf_dir(art), [text], config)
    tok = AutoTokenizer.from_pretrained(hf_dir(art))
    lm = LlamaForCausalLM.from_pretrained(hf_dir(art)).eval()
    with torch.no_grad():
        hidden = lm.model(**tok(text, truncation=True, max_length=32, return_tensors="pt")
                          ).last_hidden_state[0]
    assert features.shape == (1, 576)
    assert features[0] == pytest.approx(hidden.mean(0).numpy(), rel=1e-4, abs=1e-4)
