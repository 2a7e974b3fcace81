"""Uncertainty over training: every training seed's adapted model and control, scored on the
same test documents, summarised per arm and as a paired gain with an interval.

With ``pretrain.seeds`` = S > 1, evaluate receives S adapted models (``pretrain``,
``pretrain[seed1]``, ...) and, with a control, S controls (``control``, ``control[seed1]``,
...); seed i of both arms trains with ``pretrain.seed`` + i. The stage scores the first seed's
models as before (every existing metric is the first seed's: that is the model the gates judge
and promotion moves); this module scores the others on the same documents and adds:

- per arm, the mean and the spread (standard deviation over seeds, ddof 1) of domain and
  general bits/byte: ``heldout_bits_per_byte_seed_mean``/``_seed_std``,
  ``general_bits_per_byte_seed_*``, ``control_heldout_bits_per_byte_seed_*``,
  ``control_general_bits_per_byte_seed_*``;
- the paired change adapted vs control per seed pair (seed i vs seed i) and vs the base model
  (one model: only the adapted side varies): its mean, its spread (``..._seed_std``) and a 95%
  interval (``..._ci_low``/``_ci_high``), for ``domain_change_vs_control``,
  ``general_change_vs_control``, ``domain_bits_per_byte_change``,
  ``general_bits_per_byte_change``;
- each seed's own values (``..._seed0``, ``..._seed1``, ...) and ``train_seeds``.

The interval is a two-level bootstrap: each replicate draws S seed pairs with replacement and,
once for all of them, the held-out clusters with replacement (ingest's ``group`` column when the
held-out slice has one, else each document is its own cluster); the replicate's value is the
mean over its drawn seeds of the change on its drawn clusters. Its spread thus holds both the
training variance (which seed) and the test-set variance (which documents), and documents of
one group (one source record split in pieces, one patient) move together. With few seeds the
seed level is coarse (2 seeds: 3 distinct seed draws); the docs say how to read it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.config import EvaluateConfig
from pipeline.engine.artifacts import Artifact
from pipeline.stages.pretrain.output import PretrainOutput

if TYPE_CHECKING:  # the stage imports this module
    from pipeline.stages.evaluate.stage import ScoredText

Scores = list[tuple[float, int]]  # (NLL in nats, tokens) per document
STEP = re.compile(r"^(pretrain|control)(?:\[seed(\d+)\])?$")
ARMS = {"pretrain": "adapted", "control": "control"}
# the changes reported over seeds: (metric name, slice, reference arm)
CHANGES = (("domain_change_vs_control", "domain", "control"),
           ("general_change_vs_control", "general", "control"),
           ("domain_bits_per_byte_change", "domain", "base"),
           ("general_bits_per_byte_change", "general", "base"))
# the per-arm bits/byte reported over seeds: (metric name, arm, slice)
LEVELS = (("heldout_bits_per_byte", "adapted", "domain"),
          ("general_bits_per_byte", "adapted", "general"),
          ("control_heldout_bits_per_byte", "control", "domain"),
          ("control_general_bits_per_byte", "control", "general"))


def seed_models(inputs: Mapping[str, Artifact]) -> dict[str, list[PretrainOutput]]:
    """{"adapted": [seed 0, seed 1, ...], "control": [...]}: each arm's models in seed order,
    from the input names the planner gives a fanned-out step (``pretrain[seed1]``)."""
    found: dict[str, dict[int, PretrainOutput]] = {}
    for name, art in inputs.items():
        if (m := STEP.match(name)) is not None:
            found.setdefault(ARMS[m.group(1)], {})[int(m.group(2) or 0)] = PretrainOutput(art)
    for arm, by in found.items():
        if sorted(by) != list(range(len(by))):
            raise ValueError(f"evaluate: the {arm} models are seeds {sorted(by)}, not "
                             f"0..{len(by) - 1}")
    return {arm: [by[i] for i in range(len(by))] for arm, by in found.items()}


def cluster_sums(nll: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Per-cluster sums of ``nll`` (models x documents) -> models x clusters."""
    _, local = np.unique(codes, return_inverse=True)
    out = np.zeros((nll.shape[0], local.max() + 1))
    for row in range(nll.shape[0]):
        out[row] = np.bincount(local, weights=nll[row])
    return out


def two_level_interval(adapted: np.ndarray, reference: np.ndarray, samples: int,
                       seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """The ``level`` percentile interval of the mean over seeds of ``sum(adapted) /
    sum(reference) - 1``, where ``adapted`` and ``reference`` are seeds x clusters sums (row i
    of each is seed pair i; a reference that does not vary over seeds repeats its row):
    seeds and clusters are both resampled with replacement, the clusters once per replicate."""
    rng = np.random.default_rng(seed)
    n_seeds, n_clusters = adapted.shape
    picks = rng.integers(0, n_seeds, size=(samples, n_seeds))
    weights = rng.multinomial(n_clusters, np.full(n_clusters, 1 / n_clusters), size=samples)
    change = (weights @ adapted.T) / (weights @ reference.T) - 1.0  # replicates x seeds
    return over_drawn_seeds(change, picks, level)


def over_drawn_seeds(values: np.ndarray, picks: np.ndarray, level: float = 0.95
                     ) -> tuple[float, float]:
    """The ``level`` percentile interval of each replicate's mean over its drawn seeds:
    ``values`` is replicates x seeds (each seed's value on the replicate's resample), ``picks``
    the seeds each replicate drew (replicates x seeds, with replacement)."""
    means = np.take_along_axis(values, picks, axis=1).mean(axis=1)
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def _nll(scores: Scores) -> np.ndarray:
    """Per document NLL: the masked one where the scores have it (placeholders and URLs out,
    as the verdict's headline), else the plain one."""
    return np.array([getattr(s, "nll_masked", s[0]) for s in scores])


def seed_metrics(config: EvaluateConfig, scores: Mapping[str, list[Scores]],
                 nbytes: np.ndarray, is_general: np.ndarray, codes: np.ndarray
                 ) -> dict[str, float]:
    """The metrics over seeds (module docstring) from each arm's per-seed per-document scores
    (``scores``: {"adapted"|"control": [seed 0, ...], "base": [the one base model]})."""
    n_seeds = len(scores["adapted"])
    out: dict[str, float] = {"train_seeds": float(n_seeds)}
    if n_seeds < 2:
        return out
    slices = {"domain": np.flatnonzero(~is_general), "general": np.flatnonzero(is_general)}
    for name, arm, slice_ in LEVELS:
        docs = slices[slice_]
        if arm not in scores or not len(docs):
            continue
        bpb = [float(_nll(s)[docs].sum() / np.log(2) / nbytes[docs].sum()) for s in scores[arm]]
        out.update(spread(name, bpb))
    for name, slice_, ref in CHANGES:
        docs = slices[slice_]
        if ref not in scores or not len(docs):
            continue
        a = np.stack([_nll(s)[docs] for s in scores["adapted"]])
        r = np.stack([_nll(s)[docs] for s in scores[ref]])
        r = np.repeat(r, n_seeds, axis=0) if len(r) == 1 else r
        out.update(spread(name, list(a.sum(1) / r.sum(1) - 1.0)))
        if config.bootstrap_samples:
            low, high = two_level_interval(cluster_sums(a, codes[docs]),
                                           cluster_sums(r, codes[docs]),
                                           config.bootstrap_samples)
            out[f"{name}_ci_low"], out[f"{name}_ci_high"] = low, high
    return out


def spread(name: str, values: list[float]) -> dict[str, float]:
    """``name``'s mean and standard deviation over seeds, and each seed's value."""
    return {f"{name}_seed_mean": float(np.mean(values)),
            f"{name}_seed_std": float(np.std(values, ddof=1)),
            **{f"{name}_seed{i}": float(v) for i, v in enumerate(values)}}


def over_seeds(config: EvaluateConfig, inputs: Mapping[str, Artifact],
               first: Mapping[str, Scores], held: ScoredText, score: Callable[[Path], Scores]
               ) -> tuple[dict[str, float], dict[str, Any] | None]:
    """Score every seed after the first (``first``: the stage's scores of the first seed's
    models, and of the base model, on ``held``) and return the metrics over seeds and the
    report's per-seed table (``evaluation["seeds"]``; None with one seed)."""
    models = seed_models(inputs)
    scores: dict[str, list[Scores]] = {
        arm: [first[arm]] + [score(m.hf_dir) for m in models.get(arm, [])[1:]]
        for arm in ("adapted", "control") if arm in first}
    if "base" in first:
        scores["base"] = [first["base"]]
    nbytes = np.array([getattr(s, "bytes_masked", len(t.encode("utf-8")))
                       for s, t in zip(first["adapted"], held.texts, strict=True)])
    general = np.array(held.is_general, dtype=bool)
    if len(scores["adapted"]) < 2:
        return {"train_seeds": 1.0}, None
    metrics = seed_metrics(config, scores, nbytes, general, held.clusters)
    return metrics, seed_table(metrics, [m.spec.config.seed for m in models["adapted"]],
                               held.cluster_column, config.bootstrap_samples)


def seed_table(metrics: Mapping[str, float], seed_values: list[int], column: str,
               samples: int) -> dict[str, Any]:
    """What the report shows: one row per seed (``seed_values``: each one's
    ``pretrain.seed``), and each quantity's mean, spread over seeds and interval."""
    n_seeds = int(metrics["train_seeds"])
    names = [n for n, *_ in LEVELS + CHANGES if f"{n}_seed0" in metrics]
    rows = [{"seed": seed_values[i], **{n: metrics[f"{n}_seed{i}"] for n in names}}
            for i in range(n_seeds)]
    summary = [{"metric": n, "mean": metrics[f"{n}_seed_mean"],
                "std": metrics[f"{n}_seed_std"], "ci_low": metrics.get(f"{n}_ci_low"),
                "ci_high": metrics.get(f"{n}_ci_high")} for n in names]
    return {"train_seeds": n_seeds, "clusters": column, "bootstrap_samples": samples,
            "rows": rows, "summary": summary}


def verdict_text(metrics: Mapping[str, float]) -> str:
    """The verdict's words after the headline (whose figures are the means over seeds, with
    several): which seed the gates judge and its own changes; empty with one seed."""
    if metrics.get("train_seeds", 1) < 2:
        return ""
    first = [f"{what} {metrics[f'{name}_seed0']:+.1%}"
             for name, what in (("domain_change_vs_control", "domain vs control"),
                                ("general_change_vs_control", "general vs control"),
                                ("domain_bits_per_byte_change", "domain vs base"))
             if f"{name}_seed0" in metrics]
    return ("; the gates judge the first seed's models" + (f" ({', '.join(first)})"
                                                            if first else ""))
