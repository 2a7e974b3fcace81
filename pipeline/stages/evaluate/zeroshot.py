"""Zero-shot downstream scoring: each labelled task's test split as a multiple-choice question
the language model answers without training, for the adapted, base and control models.

An example is a short prompt built from its text (``prompt``) and one continuation per class
(the label names, underscores as spaces, after a space). Its answer is the class whose
continuation has the highest summed log-likelihood (``acc``), the highest log-likelihood per
character of the class name (``acc_norm``), or the highest log-likelihood minus the class
name's unconditional log-likelihood (``acc_mutual_info``), exactly as lm-evaluation-harness
scores ``output_type: multiple_choice`` (``zeroshot_rules``). The rows are finetune's test split
(``FinetuneOutput.test_split``: never train or validation text), capped by
``evaluate.zeroshot_max_examples``. The headline rule is chosen before them, on finetune's
validation split (``zeroshot_rules.choose``, ``evaluate.zeroshot_rule_examples``).

Two ways to the same numbers:

- ``export``: each task as an lm-eval task, ``lm_eval/<task>/<task>.yaml`` and ``test.jsonl``
  in the evaluate artifact, so that ``lm_eval --model hf --model_args pretrained=<hf export>
  --include_path <artifact>/lm_eval --tasks dapt_<task>`` reruns it offline;
- ``score_choices``: the stage's own scorer. lm-eval runs the context once per choice; here
  the context of a batch of examples is encoded once and its KV cache (``past_key_values``)
  is reused by every choice, so only the continuation tokens are computed per choice. Token
  boundaries follow lm-eval's ``_encode_pair``: trailing whitespace of the context moves to
  the continuation, context + continuation is encoded jointly and the continuation is what
  follows the context's own encoding.

``evaluate`` scores every model and returns the metrics (``zeroshot_accuracy``, per task, ...
under the chosen rule; every rule's and the majority-class rate beside them) and a paired
bootstrap interval (over examples) of the accuracy difference adapted - control (and - base).
"""

from __future__ import annotations

import gc
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline.config import EvaluateConfig
from pipeline.engine import progress
from pipeline.engine.artifacts import TMP
from pipeline.stages.evaluate import zeroshot_rules as rules
from pipeline.stages.evaluate.memo import Memo
from pipeline.stages.evaluate.scoring import autocast
from pipeline.stages.finetune.output import FinetuneOutput

TARGET_DELIMITER = " "  # lm-eval's default target_delimiter, before each choice
HEAD_ROWS = 1024  # positions per LM-head slice: 1024 x 49,152 float32 logits are 200 MB


@dataclass(frozen=True)
class ZeroShotTask:
    """One task's test rows as multiple-choice questions."""

    name: str
    choices: list[str]  # the class names made readable, in label-index order
    ids: list[str]
    queries: list[str]  # the prompts (lm-eval's doc_to_text)
    gold: list[int]  # index into choices

    @property
    def lm_eval_name(self) -> str:
        return f"dapt_{self.name}"


def readable(label: str) -> str:
    return label.replace("_", " ").strip()


def prompt(text: str, task: str, max_chars: int) -> str:
    """The question asked of the model: the text (its first ``max_chars`` characters) and what
    to name; no trailing whitespace, the choice follows after a space."""
    body = " ".join(text.split())[:max_chars]
    return f"Text: {body}\nQuestion: which {readable(task)} is this?\nAnswer:"


def tasks_of(finetune: FinetuneOutput, config: EvaluateConfig, split: str = "test"
             ) -> list[ZeroShotTask]:
    """Each fine-tuning task's test split (capped: a prefix, the split is in hash order); with
    ``split="validation"``: its validation rows, capped by ``zeroshot_rule_examples``, the tasks
    without any (or an artifact that kept none) left out."""
    out = []
    for name, result in finetune.tasks:
        labels = list(result["labels"])
        if split == "test":
            table = finetune.test_split(name).slice(0, config.zeroshot_max_examples)
        else:
            table = finetune.validation_split(name)
            if table is None or not config.zeroshot_rule_examples:
                continue
            table = table.slice(0, config.zeroshot_rule_examples)
        rows = table.to_pylist()
        if not rows:
            continue
        out.append(ZeroShotTask(
            name, [readable(x) for x in labels], [r["id"] for r in rows],
            [prompt(r["text"], name, config.zeroshot_max_chars) for r in rows],
            [labels.index(r["label"]) for r in rows]))
    return out


def published(out_dir: Path) -> Path:
    """Where ``out_dir`` will be once the store publishes it (a build directory is
    ``<stage>/.tmp-<key>-<hex>``, renamed to ``<stage>/<key>``), so the YAML's data path holds."""
    match = re.fullmatch(re.escape(TMP) + r"(.+)-[0-9a-f]{8}", out_dir.name)
    return out_dir.parent / match.group(1) if match else out_dir


def export(task: ZeroShotTask, root: Path, final_root: Path | None = None) -> Path:
    """Write ``root/<task>/<task>.yaml`` and ``test.jsonl`` (lm-eval 0.4.13's task schema);
    ``final_root``: where ``root`` will be when lm-eval reads it (default: ``root``)."""
    folder = root / task.name
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "test.jsonl"
    data.write_text("".join(json.dumps({"id": i, "query": q, "gold": g}) + "\n"
                            for i, q, g in zip(task.ids, task.queries, task.gold, strict=True)))
    spec = {
        "task": task.lm_eval_name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {
            "test": str((final_root or root).resolve() / task.name / data.name)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "query",
        "doc_to_target": "gold",
        "doc_to_choice": task.choices,
        "target_delimiter": TARGET_DELIMITER,
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True}
                        for m in rules.RULES],
        "metadata": {"version": 1.0},
    }
    path = folder / f"{task.name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=False))
    return path


def encode_pair(tok: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's ``TemplateLM._encode_pair`` for a causal model: trailing whitespace of the
    context moves to the continuation; the continuation's tokens are those of the joint
    encoding after the context's own encoding."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = tok.encode(context + continuation)
    ctx = tok.encode(context)
    return ctx, whole[len(ctx):]


def _pad(seqs: list[list[int]], pad: int, device: torch.device
         ) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, :len(s)] = torch.tensor(s)
        mask[r, :len(s)] = 1
    return ids.to(device), mask.to(device)


@dataclass(frozen=True)
class ChoiceTree:
    """One example's continuations as a prefix tree of the tokens that are fed to the model:
    a token is fed when something after it is scored, and a prefix the choices share is fed
    once. ``parents[i]``: the fed node before node ``i`` (-1: the context's last token);
    ``paths[k]``: the fed nodes whose outputs predict tokens 2.. of choice ``k``."""

    tokens: list[int]
    parents: list[int]
    paths: list[list[int]]

    @classmethod
    def of(cls, conts: list[list[int]]) -> ChoiceTree:
        index: dict[tuple[int, ...], int] = {}
        tokens: list[int] = []
        parents: list[int] = []
        paths = []
        for seq in conts:
            path = []
            for j in range(1, len(seq)):  # prefix seq[:j] is fed; its output predicts seq[j]
                key = tuple(seq[:j])
                if key not in index:
                    index[key] = len(tokens)
                    tokens.append(seq[j - 1])
                    parents.append(index.get(key[:-1], -1))
                path.append(index[key])
            paths.append(path)
        return cls(tokens, parents, paths)

    def ancestry(self) -> tuple[list[int], list[int], list[int]]:
        """(depth of each node: 1 after the context; rows and columns of the pairs (node, a
        node it attends to: itself and its ancestors))."""
        depth, rows, cols = [], [], []
        for i, parent in enumerate(self.parents):
            depth.append(depth[parent] + 1 if parent >= 0 else 1)
            node = i
            while node >= 0:
                rows.append(i)
                cols.append(node)
                node = self.parents[node]
        return depth, rows, cols


def _tree_inputs(trees: list[ChoiceTree], lens: torch.Tensor, ctx_mask: torch.Tensor,
                 pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """input ids, position ids and the additive 4D attention mask (examples, 1, nodes,
    context + nodes) of the trees: each node sees its example's context and its own
    ancestors, at the positions it would have right after the context."""
    device, width = ctx_mask.device, max(len(t.tokens) for t in trees)
    ids = torch.full((len(trees), width), pad, dtype=torch.long)
    pos = lens.cpu()[:, None].repeat(1, width)
    blocked = torch.finfo(torch.float32).min
    seen = torch.zeros((len(trees), width, width), dtype=torch.bool)
    for e, tree in enumerate(trees):
        depth, rows, cols = tree.ancestry()
        ids[e, :len(tree.tokens)] = torch.tensor(tree.tokens, dtype=torch.long)
        pos[e, :len(depth)] += torch.tensor(depth) - 1
        seen[e, rows, cols] = True
    # padding rows see the context only, never nothing (a fully masked row gives NaN)
    allowed = torch.cat([ctx_mask.bool().cpu()[:, None, :].expand(-1, width, -1), seen], 2)
    mask = torch.zeros(allowed.shape).masked_fill_(~allowed, blocked)[:, None]
    return ids.to(device), pos.to(device), mask.to(device)


def _heads(model: Any) -> tuple[Any, Any]:
    """The transformer without its LM head, and the head: logits are computed only at the
    positions that predict a scored token."""
    return model.get_decoder(), model.get_output_embeddings()


@torch.no_grad()
def _batch_loglikelihoods(model: Any, contexts: list[list[int]], conts: list[list[list[int]]],
                          pad: int) -> list[list[float]]:
    """Summed log-likelihood of each continuation of each example. The contexts go through the
    model once (right-padded) and leave their KV cache; every example's choices then go through
    together as one prefix tree (``ChoiceTree``) on top of that cache, with a tree attention
    mask, so a context is never recomputed or copied per choice."""
    decoder, head = _heads(model)
    device = next(model.parameters()).device
    ids, mask = _pad(contexts, pad, device)
    lens = mask.sum(1)
    ctx = decoder(input_ids=ids, attention_mask=mask, use_cache=True)
    last = ctx.last_hidden_state[torch.arange(len(contexts), device=device), lens - 1]
    first = torch.log_softmax(head(last).float(), -1).cpu()  # predicts each choice's 1st token
    out = [[float(first[e, c[0]]) for c in choices] for e, choices in enumerate(conts)]
    trees = [ChoiceTree.of(choices) for choices in conts]
    if not any(t.tokens for t in trees):
        return out  # every choice is one token
    tree_ids, pos, tree_mask = _tree_inputs(trees, lens, mask, pad)
    hidden = decoder(input_ids=tree_ids, position_ids=pos, attention_mask=tree_mask,
                     past_key_values=ctx.past_key_values, use_cache=True).last_hidden_state
    fed = torch.zeros(tree_ids.shape, dtype=torch.bool)
    for e, tree in enumerate(trees):
        fed[e, :len(tree.tokens)] = True
    states = hidden[fed.to(device)]  # the fed nodes, example after example
    offsets = np.cumsum([0] + [len(t.tokens) for t in trees])
    rows, targets, owner = [], [], []
    for e, tree in enumerate(trees):
        for k, (path, seq) in enumerate(zip(tree.paths, conts[e], strict=True)):
            rows += [int(offsets[e]) + node for node in path]
            targets += seq[1:]
            owner += [(e, k)] * len(path)
    rows_t, targets_t = torch.tensor(rows, device=device), torch.tensor(targets, device=device)
    picked = torch.zeros(len(rows), device=device)
    for start in range(0, len(states), HEAD_ROWS):  # (nodes x vocabulary) logits, in slices
        logp = torch.log_softmax(head(states[start:start + HEAD_ROWS]).float(), -1)
        sel = (rows_t >= start) & (rows_t < start + HEAD_ROWS)
        picked[sel] = logp[rows_t[sel] - start, targets_t[sel]]
    for (e, k), value in zip(owner, picked.cpu().tolist(), strict=True):
        out[e][k] += value
    return out


def encode_task(tok: Any, queries: list[str], choices: list[str], max_length: int
                ) -> tuple[list[list[int]], list[list[list[int]]]]:
    """Each query's context tokens and each choice's continuation tokens (``encode_pair``); a
    context too long for the model loses its start, as lm-eval truncates from the left."""
    contexts, conts = [], []
    for query in queries:
        pairs = [encode_pair(tok, query, TARGET_DELIMITER + c) for c in choices]
        keep = max_length + 1 - max(len(c) for _, c in pairs)
        contexts.append(pairs[0][0][-keep:])
        conts.append([c for _, c in pairs])
    return contexts, conts


def score_choices(model: Any, tok: Any, queries: list[str], choices: list[str],
                  batch_size: int, label: str = "") -> np.ndarray:
    """(examples x choices) summed log-likelihood of ``" " + choice`` after each query, the
    examples batched by context length."""
    max_length = getattr(model.config, "max_position_embeddings", None) or 2048
    contexts, conts = encode_task(tok, queries, choices, max_length)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    order = sorted(range(len(queries)), key=lambda i: len(contexts[i]))
    out = np.zeros((len(queries), len(choices)))
    bar = progress.track(f"evaluate: zero-shot {label}".rstrip(),
                         -(-len(order) // batch_size), "batches")
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        out[idx] = _batch_loglikelihoods(model, [contexts[j] for j in idx],
                                         [conts[j] for j in idx], pad)
        bar.update()
    bar.close()
    return out


def judge(ll: np.ndarray, task: ZeroShotTask, unconditional: np.ndarray | None = None
          ) -> dict[str, np.ndarray]:
    """Per-example correctness: ``acc`` (argmax of the summed log-likelihood), ``acc_norm`` (of
    the log-likelihood per character of the choice) and, given each choice's unconditional
    log-likelihood, ``acc_mutual_info`` (of the difference), first index on ties, as lm-eval."""
    chars = np.array([float(len(c)) for c in task.choices])
    return rules.correct(ll, chars, unconditional, np.asarray(task.gold))


def gain_interval(ours: list[np.ndarray], ref: list[np.ndarray], samples: int, seed: int = 0
                  ) -> tuple[float, float, float]:
    """Mean over tasks of accuracy(ours) - accuracy(ref), and its 95% paired bootstrap interval:
    each task's examples resampled with replacement (the same draws for both models, a fixed
    seed), the difference recomputed per resample, its 2.5th and 97.5th percentiles."""
    rng = np.random.default_rng(seed)
    gain = float(np.mean([(a - b).mean() for a, b in zip(ours, ref, strict=True)]))
    draws = np.zeros(samples)
    for a, b in zip(ours, ref, strict=True):
        diff = a - b
        draws += diff[rng.integers(0, len(diff), size=(samples, len(diff)))].mean(1)
    draws /= len(ours)
    low, high = np.percentile(draws, [2.5, 97.5])
    return gain, float(low), float(high)


MODEL_TAGS = {"adapted": "", "base": "base_", "control": "control_"}


def summarize(tasks: list[ZeroShotTask], judged: Mapping[str, Mapping[str, dict[str, Any]]],
              samples: int, rule: str = rules.DEFAULT) -> dict[str, float]:
    """Flat metrics from {model: {task: {rule: per-example 0/1}}}: per task and the mean over
    tasks for every model, under ``rule`` (``..._accuracy``) and under every rule judged
    (``..._accuracy_raw``, ``_norm``, ``_mutual_info``), and the gains over base and control:
    under ``rule`` with intervals, under every rule as ``zeroshot_gain_vs_<ref><suffix>``."""
    m: dict[str, float] = {"zeroshot_examples": float(sum(len(t.ids) for t in tasks))}
    for model, per in judged.items():
        tag = MODEL_TAGS[model]
        for key in rules.RULES:
            if key not in per[tasks[0].name]:
                continue
            for name in ["accuracy" + rules.SUFFIX[key]] + (["accuracy"] if key == rule else []):
                for t in tasks:
                    m[f"zeroshot_{t.name}_{tag}{name}"] = float(per[t.name][key].mean())
                m[f"zeroshot_{tag}{name}"] = float(np.mean([per[t.name][key].mean()
                                                            for t in tasks]))
    for ref in ("base", "control"):
        if ref not in judged or "adapted" not in judged:
            continue
        for key in rules.RULES:
            if key in judged[ref][tasks[0].name]:
                m[f"zeroshot_gain_vs_{ref}{rules.SUFFIX[key]}"] = float(np.mean(
                    [(judged["adapted"][t.name][key] - judged[ref][t.name][key]).mean()
                     for t in tasks]))
        ours = [judged["adapted"][t.name][rule] for t in tasks]
        theirs = [judged[ref][t.name][rule] for t in tasks]
        gain, low, high = gain_interval(ours, theirs, max(samples, 1))
        m[f"zeroshot_gain_vs_{ref}"] = gain
        if samples:
            m[f"zeroshot_gain_vs_{ref}_ci_low"] = low
            m[f"zeroshot_gain_vs_{ref}_ci_high"] = high
    return m


@dataclass(frozen=True)
class ModelScores:
    """One model's log-likelihoods: {task: (examples x choices)} on the test rows and on the
    validation rows, and {task: each choice's unconditional log-likelihood}."""

    test: dict[str, np.ndarray]
    validation: dict[str, np.ndarray]
    unconditional: dict[str, np.ndarray]


def _score_model(model_dir: Path, tasks: list[ZeroShotTask], validation: list[ZeroShotTask],
                 batch_size: int, label: str, device: torch.device, precision: str = "fp32"
                 ) -> ModelScores:
    """One model's scores of the test and the validation tasks, forward passes in
    ``precision`` (``scoring.autocast``); it is freed on return."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device)
    model.eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    try:
        with autocast(device, precision):
            return ModelScores(
                {t.name: score_choices(model, tok, t.queries, t.choices, batch_size,
                                       f"{label} {t.name}") for t in tasks},
                {t.name: score_choices(model, tok, t.queries, t.choices, batch_size,
                                       f"{label} {t.name} validation") for t in validation},
                {t.name: rules.unconditional_loglikelihoods(
                    model, tok, [TARGET_DELIMITER + c for c in t.choices]) for t in tasks})
    finally:
        del model
        gc.collect()


def _encode(s: ModelScores) -> dict[str, Any]:
    return {part: {name: {"dtype": str(a.dtype), "values": a.tolist()}
                   for name, a in getattr(s, part).items()}
            for part in ("test", "validation", "unconditional")}


def _decode(doc: dict[str, Any]) -> ModelScores:
    return ModelScores(**{part: {name: np.array(a["values"], dtype=a["dtype"])
                                 for name, a in arrays.items()} for part, arrays in doc.items()})


def _scores(model_dir: Path, tasks: list[ZeroShotTask], validation: list[ZeroShotTask],
            batch_size: int, label: str, device: torch.device, memo: Memo | None,
            precision: str = "fp32") -> ModelScores:
    """``_score_model``, reused from the ``memo`` where the same model scored the same
    prompts and choices with the same code in the same precision (``memo.py``)."""
    def compute() -> ModelScores:
        return _score_model(model_dir, tasks, validation, batch_size, label, device, precision)
    if memo is None:
        return compute()
    inputs = {part: [(t.name, t.queries, t.choices) for t in given]
              for part, given in (("test", tasks), ("validation", validation))}
    return memo.recall("zeroshot", label, model_dir,
                       {**inputs, "batch_size": batch_size, "device": device.type,
                        "precision": precision},
                       __name__, compute, _encode, _decode)


def _score_rows(tasks: list[ZeroShotTask], scored: Mapping[str, ModelScores],
                split: str) -> str:
    """JSONL of every example's log-likelihoods (task, model, id, gold, loglikelihoods)."""
    return "".join(
        json.dumps({"task": t.name, "model": model, "id": i, "gold": g, "loglikelihoods": ll})
        + "\n" for model, s in scored.items() for t in tasks
        for i, g, ll in zip(t.ids, t.gold, getattr(s, split)[t.name].tolist(), strict=True))


def evaluate(config: EvaluateConfig, finetune: FinetuneOutput, model_dirs: Mapping[str, Path],
             out_dir: Path, memo: Memo | None = None
             ) -> tuple[dict[str, float], dict[str, Any]]:
    """Export the lm-eval tasks into ``out_dir/lm_eval``, choose the headline rule on the
    validation rows, score each model on the test rows; the flat metrics and the report's
    details ({tasks: [...], lm_eval_dir, rule, rule_choice})."""
    tasks = tasks_of(finetune, config)
    validation = tasks_of(finetune, config, "validation")
    root = out_dir / "lm_eval"
    for t in tasks:
        export(t, root, published(out_dir) / "lm_eval")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    scored = {model: _scores(model_dir, tasks, validation, config.batch_size, model, device,
                             memo, config.precision) for model, model_dir in model_dirs.items()}
    choice = rules.choose_on(config.zeroshot_rule_examples, validation, scored)
    judged = {model: {t.name: judge(s.test[t.name], t, s.unconditional[t.name]) for t in tasks}
              for model, s in scored.items()}
    (out_dir / "zeroshot_scores.jsonl").write_text(_score_rows(tasks, scored, "test"))
    (out_dir / "zeroshot_rule_scores.jsonl").write_text(
        _score_rows(validation, scored, "validation"))
    metrics = {**summarize(tasks, judged, config.bootstrap_samples, choice.rule),
               **choice.metrics(), **rules.majority_rates(tasks)}
    details = {"lm_eval_dir": "lm_eval", "rule": choice.rule, "rule_choice": {
        "rule": choice.rule, "chosen_on": "validation" if choice.chosen_on_validation else None,
        "validation_examples": choice.examples, "validation_accuracy": choice.scores,
        "note": choice.note, "text": choice.describe()}, "tasks": [
        {"task": t.name, "lm_eval_task": t.lm_eval_name, "examples": len(t.ids),
         "choices": len(t.choices), "chance": 1.0 / len(t.choices),
         "majority": metrics[f"zeroshot_{t.name}_majority_rate"],
         "models": {model: {k: float(v.mean()) for k, v in per[t.name].items()}
                    for model, per in judged.items()},
         "unconditional": {model: s.unconditional[t.name].tolist()
                           for model, s in scored.items()}} for t in tasks]}
    return metrics, details


def verdict_text(metrics: Mapping[str, float]) -> str:
    """The verdict's zero-shot words: accuracy, rule, gain (95% interval), majority floor."""
    if "zeroshot_accuracy" not in metrics:
        return ""
    rule = rules.rule_of(metrics)
    how = ", chosen on validation" if metrics.get("zeroshot_rule_examples") else ""
    text = f"zero-shot accuracy {metrics['zeroshot_accuracy']:.3f} ({rule}{how})"
    for ref in ("control", "base"):
        if f"zeroshot_gain_vs_{ref}" in metrics:
            ci = (f" [95% CI {metrics[f'zeroshot_gain_vs_{ref}_ci_low']:+.3f}, "
                  f"{metrics[f'zeroshot_gain_vs_{ref}_ci_high']:+.3f}]"
                  if f"zeroshot_gain_vs_{ref}_ci_low" in metrics else "")
            text += f" ({metrics[f'zeroshot_gain_vs_{ref}']:+.3f} vs {ref}{ci})"
            break
    majority, best = metrics.get("zeroshot_majority_rate"), max(
        metrics.get(f"zeroshot_{tag}accuracy", 0.0) for tag in MODEL_TAGS.values())
    if majority is not None and best <= majority:
        text += (f"; no model above the majority-class rate {majority:.3f}: the zero-shot "
                 "tasks cannot show a domain effect")
    return text
