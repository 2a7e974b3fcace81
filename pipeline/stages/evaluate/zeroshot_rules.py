"""The three scoring rules of zero-shot multiple choice, and the choice of the headline rule on
finetune's validation split (``pipeline/stages/evaluate/zeroshot.py`` scores, this module
decides how the scores answer).

An example's answer is the choice with the highest

- ``acc``: summed log-likelihood of the continuation, log P(choice | prompt);
- ``acc_norm``: the same per character of the choice;
- ``acc_mutual_info``: log P(choice | prompt) - log P(choice), the pointwise mutual information
  of the choice and the prompt. The unconditional term is lm-evaluation-harness 0.4.13's: the
  continuation (``" " + choice``) encoded alone, without special tokens, and scored after the
  model's prefix token (the tokenizer's BOS, else its EOS); when the continuation itself starts
  with that token, its first token is the context instead. It is the same for every example of
  a task, so it is computed once per model and task.

Continued pretraining on domain text moves the model's prior over the label strings themselves
(surface-form competition: a label that reads like domain text gains probability whatever the
prompt); ``acc`` counts that shift as an answer, ``acc_mutual_info`` subtracts it.

Which rule is the headline is decided before the test split is looked at: on each task's
validation rows (``FinetuneOutput.validation_split``, capped by
``evaluate.zeroshot_rule_examples``), every rule's accuracy (the mean over tasks) is averaged
over the models scored (base, control, adapted: the choice favours no arm) and the highest wins;
ties go to ``acc``, then ``acc_norm``. No validation rows, or ``zeroshot_rule_examples: 0``:
``acc``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:  # zeroshot imports this module
    from pipeline.stages.evaluate.zeroshot import ModelScores, ZeroShotTask

RULES = ("acc", "acc_norm", "acc_mutual_info")  # in the order that wins a tie
# each rule's metric suffix: zeroshot_accuracy_raw, zeroshot_accuracy_norm, ..._mutual_info
SUFFIX = {"acc": "_raw", "acc_norm": "_norm", "acc_mutual_info": "_mutual_info"}
DEFAULT = "acc"


def rule_of(metrics: Mapping[str, float]) -> str:
    """The headline rule named by ``zeroshot_rule_index`` in ``metrics`` (``acc`` without it)."""
    return RULES[int(metrics.get("zeroshot_rule_index", 0))]


def majority_rates(tasks: Sequence[ZeroShotTask]) -> dict[str, float]:
    """The floor every rule is read against: what always answering a task's most frequent test
    class scores, per task (``zeroshot_<task>_majority_rate``) and as the mean over tasks
    (``zeroshot_majority_rate``, beside ``zeroshot_accuracy``). A model at or below it has
    shown no reading of the texts."""
    rates = {t.name: float(np.bincount(t.gold).max() / len(t.gold)) for t in tasks}
    return {"zeroshot_majority_rate": float(np.mean(list(rates.values()))),
            **{f"zeroshot_{name}_majority_rate": rate for name, rate in rates.items()}}


def prefix_token_id(tok: Any) -> int:
    """The token lm-eval's HF model puts before an empty context: BOS, else EOS."""
    return tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id


def unconditional_pair(tok: Any, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's ``TemplateLM.loglikelihood`` for an empty context: the continuation encoded
    alone (no special tokens) after the prefix token, or, when it starts with that token, after
    its own first token."""
    cont = tok.encode(continuation, add_special_tokens=False)
    prefix = prefix_token_id(tok)
    return ([prefix], cont) if prefix != cont[0] else (cont[:1], cont[1:])


@torch.no_grad()
def unconditional_loglikelihoods(model: Any, tok: Any, continuations: list[str]) -> np.ndarray:
    """log P(continuation) of each continuation after the prefix token alone (one short
    sequence each: a task has a few choices and this runs once per model and task)."""
    max_length = getattr(model.config, "max_position_embeddings", None) or 2048
    device = next(model.parameters()).device
    out = np.zeros(len(continuations))
    for k, continuation in enumerate(continuations):
        ctx, cont = unconditional_pair(tok, continuation)
        if not cont:
            continue  # nothing left to score: log-likelihood 0, as lm-eval sums none
        whole = (ctx + cont)[-(max_length + 1):]
        logits = model(torch.tensor([whole[:-1]], device=device)).logits[0]
        logp = torch.log_softmax(logits[-len(cont):].float(), -1)
        out[k] = float(logp[torch.arange(len(cont)), torch.tensor(cont, device=device)].sum())
    return out


def correct(ll: np.ndarray, chars: np.ndarray, unconditional: np.ndarray | None,
            gold: np.ndarray) -> dict[str, np.ndarray]:
    """Per-example 0/1 of each rule (first index on ties, as lm-eval's ``np.argmax``) from the
    (examples x choices) log-likelihoods; ``acc_mutual_info`` only with ``unconditional``."""
    out = {"acc": (ll.argmax(1) == gold).astype(float),
           "acc_norm": ((ll / chars).argmax(1) == gold).astype(float)}
    if unconditional is not None:
        out["acc_mutual_info"] = ((ll - unconditional[None, :]).argmax(1) == gold).astype(float)
    return out


@dataclass(frozen=True)
class RuleChoice:
    """The headline rule, the validation accuracy (mean over models) of every rule it was
    chosen by, how many validation examples per model that took, and why when nothing was
    chosen."""

    rule: str
    scores: dict[str, float]
    examples: int
    note: str = ""

    @property
    def chosen_on_validation(self) -> bool:
        return bool(self.scores)

    def metrics(self) -> dict[str, float]:
        """``zeroshot_rule_index`` (position in ``RULES``), ``zeroshot_rule_examples`` and each
        rule's ``zeroshot_rule_validation_accuracy<suffix>``."""
        return {"zeroshot_rule_index": float(RULES.index(self.rule)),
                "zeroshot_rule_examples": float(self.examples),
                **{f"zeroshot_rule_validation_accuracy{SUFFIX[r]}": v
                   for r, v in self.scores.items()}}

    def describe(self) -> str:
        if not self.chosen_on_validation:
            return f"{self.rule} ({self.note})"
        return (f"{self.rule}, chosen on {self.examples} validation examples per model by "
                "the mean accuracy over the models (" + ", ".join(
                    f"{r} {v:.3f}" for r, v in self.scores.items()) + ")")


def fallback(note: str) -> RuleChoice:
    return RuleChoice(DEFAULT, {}, 0, note)


def choose(judged: Mapping[str, Mapping[str, Mapping[str, np.ndarray]]]) -> RuleChoice:
    """The rule with the highest validation accuracy averaged over the models, from
    {model: {task: {rule: per-example 0/1 on validation rows}}}; a rule's accuracy for one
    model is the mean over tasks, as the headline's. Ties: the earlier rule of ``RULES``."""
    models = list(judged)
    tasks = list(judged[models[0]]) if models else []
    if not tasks:
        return fallback("no validation rows: acc")
    scores = {r: float(np.mean([np.mean([judged[m][t][r].mean() for t in tasks])
                                for m in models])) for r in RULES}
    best = DEFAULT
    for rule in RULES:  # strictly better only: a tie keeps the earlier rule
        if round(scores[rule], 12) > round(scores[best], 12):
            best = rule
    examples = sum(len(judged[models[0]][t][DEFAULT]) for t in tasks)
    return RuleChoice(best, scores, examples)


def choose_on(rule_examples: int, validation: Sequence[ZeroShotTask],
              scored: Mapping[str, ModelScores]) -> RuleChoice:
    """The headline rule from the validation tasks' scores alone (``scored[model].validation``
    and ``.unconditional``; ``choose``), or ``acc`` when the choice is off
    (``evaluate.zeroshot_rule_examples: 0``) or there are no validation rows."""
    if not rule_examples:
        return fallback("evaluate.zeroshot_rule_examples is 0: acc, not chosen")
    if not validation:
        return fallback("finetune kept no validation rows: acc, not chosen")
    judged = {}
    for model, s in scored.items():
        judged[model] = {t.name: correct(
            s.validation[t.name], np.array([float(len(c)) for c in t.choices]),
            s.unconditional[t.name], np.asarray(t.gold)) for t in validation}
    return choose(judged)
