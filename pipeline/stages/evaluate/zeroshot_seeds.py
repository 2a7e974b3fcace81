"""Zero-shot over training seeds: every seed's adapted model and control answer the same
zero-shot test rows, so the zero-shot gain gets the interval the bits/byte gain has
(``seeds.py``), one that covers training as well as the examples.

With ``pretrain.seeds`` = S > 1 (and a control, and ``evaluate.zeroshot``), ``zeroshot.py``
scores the first seed's models as before (its metrics, ``zeroshot_gain_vs_control`` and its
paired interval over examples, stay the first seed's: the models the gates judge); this module
scores seeds 1..S-1 of both arms on the same test rows (the validation rows are not needed:
the headline rule was chosen on the first seed's models) and judges every seed under that rule.
It adds, for the mean over tasks of the accuracy:

- ``zeroshot_gain_vs_control_seed<i>`` (seed i's adapted - seed i's control), their mean
  ``..._seed_mean`` and spread ``..._seed_std`` (standard deviation over seeds, ddof 1;
  ``seeds.spread``, as for bits/byte);
- ``zeroshot_gain_vs_control_seed_ci_low``/``_ci_high``: a two-level bootstrap, each replicate
  drawing S seed pairs with replacement and, once for all of them, each task's examples with
  replacement (the pairing of seed i with seed i, and of each example across models, kept);
- each arm's accuracy over seeds: ``zeroshot_accuracy_seed_mean``/``_seed_std``/``_seed<i>``
  (adapted) and ``zeroshot_control_accuracy_seed_*``.

The scores go through the same memo as the first seed's (``memo.py``, kind ``zeroshot``): a
rerun that adds a seed scores only the new models. The verdict leads with the gain over seeds:
on the shipped tasks at 135M the first seed's interval over examples can exclude 0 where the
seeds disagree in sign (bench/RESULTS.md, "Zero-shot over training seeds"). The other seeds'
log-likelihoods are written to ``zeroshot_seed_scores.jsonl`` (model ``adapted[seed1]``, ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.config import EvaluateConfig
from pipeline.stages.evaluate import seeds
from pipeline.stages.evaluate import zeroshot as zs
from pipeline.stages.evaluate.memo import Memo
from pipeline.stages.finetune.output import FinetuneOutput

ARMS = ("adapted", "control")
GAIN = "zeroshot_gain_vs_control"


def two_level_interval(diffs: list[np.ndarray], samples: int, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """The ``level`` percentile interval of the mean over tasks and seeds of the accuracy
    difference, from each task's (seeds x examples) per-example differences (row i: seed i's
    adapted minus seed i's control, 1, 0 or -1): each replicate draws the seeds with
    replacement and each task's examples with replacement once for all seeds."""
    rng = np.random.default_rng(seed)
    n_seeds = diffs[0].shape[0]
    picks = rng.integers(0, n_seeds, size=(samples, n_seeds))
    per_seed = np.zeros((samples, n_seeds))
    for diff in diffs:
        n = diff.shape[1]
        weights = rng.multinomial(n, np.full(n, 1 / n), size=samples)
        per_seed += weights @ diff.T / n  # replicates x seeds
    return seeds.over_drawn_seeds(per_seed / len(diffs), picks, level)


def seed_metrics(correct: Mapping[str, list[list[np.ndarray]]], samples: int
                 ) -> dict[str, float]:
    """The metrics over seeds (module docstring) from {arm: [seed i: [task t: per-example
    0/1 under the headline rule]]}."""
    acc = {arm: [float(np.mean([c.mean() for c in tasks])) for tasks in correct[arm]]
           for arm in ARMS}
    gains = [a - c for a, c in zip(acc["adapted"], acc["control"], strict=True)]
    out = {**seeds.spread("zeroshot_accuracy", acc["adapted"]),
           **seeds.spread("zeroshot_control_accuracy", acc["control"]), **seeds.spread(GAIN, gains)}
    if samples:
        n_tasks = len(correct["adapted"][0])
        diffs = [np.stack([a[t] - c[t] for a, c in zip(correct["adapted"], correct["control"],
                                                       strict=True)]) for t in range(n_tasks)]
        out[f"{GAIN}_seed_ci_low"], out[f"{GAIN}_seed_ci_high"] = two_level_interval(
            diffs, samples)
    return out


def over_seeds(config: EvaluateConfig, finetune: FinetuneOutput,
               models: Mapping[str, list[Path]], rule: str, seed_values: list[int],
               out_dir: Path, memo: Memo) -> tuple[dict[str, float], dict[str, Any] | None]:
    """Score seeds 1.. of ``models`` ({"adapted"|"control": [seed 0's HF dir, seed 1's, ...]})
    on the zero-shot test rows, judge every seed under ``rule``; the metrics over seeds and the
    report's table (None, and no metrics, with one seed or no control). The first seed's
    scores come from the ``memo`` that ``zeroshot.evaluate`` wrote them to, never scored twice."""
    if any(len(models.get(arm, [])) < 2 for arm in ARMS):
        return {}, None
    tasks = zs.tasks_of(finetune, config)
    validation = zs.tasks_of(finetune, config, "validation")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    correct: dict[str, list[list[np.ndarray]]] = {arm: [] for arm in ARMS}
    scored: dict[str, zs.ModelScores] = {}
    for arm in ARMS:
        for i, model_dir in enumerate(models[arm]):
            label = arm if i == 0 else f"{arm}[seed{i}]"
            # seed 0 with its validation rows: the very inputs zeroshot.evaluate scored, so
            # the memo answers; the other seeds score the test rows only
            s = zs._scores(model_dir, tasks, validation if i == 0 else [], config.batch_size,
                           label, device, memo, config.precision)
            if i:
                scored[label] = s
            correct[arm].append([zs.judge(s.test[t.name], t, s.unconditional[t.name])[rule]
                                 for t in tasks])
    (out_dir / "zeroshot_seed_scores.jsonl").write_text(zs._score_rows(tasks, scored, "test"))
    metrics = seed_metrics(correct, config.bootstrap_samples)
    rows = [{"seed": value, "adapted": metrics[f"zeroshot_accuracy_seed{i}"],
             "control": metrics[f"zeroshot_control_accuracy_seed{i}"],
             "gain": metrics[f"{GAIN}_seed{i}"]} for i, value in enumerate(seed_values)]
    return metrics, {"rule": rule, "train_seeds": len(seed_values), "rows": rows,
                     "bootstrap_samples": config.bootstrap_samples}


def verdict_text(metrics: Mapping[str, float]) -> str:
    """The verdict's zero-shot words: with several seeds the gain over seeds first (mean, spread,
    interval over seeds and examples), then the first seed's own (``zeroshot.verdict_text``,
    whose interval is over examples only); with one, the first seed's alone."""
    first = zs.verdict_text(metrics)
    if f"{GAIN}_seed_mean" not in metrics or not first:
        return first
    ci = (f", 95% CI over seeds and examples [{metrics[f'{GAIN}_seed_ci_low']:+.3f}, "
          f"{metrics[f'{GAIN}_seed_ci_high']:+.3f}]" if f"{GAIN}_seed_ci_low" in metrics else "")
    return (f"zero-shot over {int(metrics.get('train_seeds', 0))} seeds: "
            f"{metrics[f'{GAIN}_seed_mean']:+.3f} vs control (sd "
            f"{metrics[f'{GAIN}_seed_std']:.3f}{ci}); the first seed's {first}")

