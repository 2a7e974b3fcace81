"""The verdict's headline: the masked figures and changes with their 95% intervals, and the
words that open the report.

What the headline compares. The default base model is a dequantised 4-bit *instruct* model
(pipeline/stages/models/stage.py): continuing it on any text helps it, so adapted vs base
measures training, not the domain. Where a control exists (the same base and recipe continued
on general text only), the headline is **adapted vs control**: the domain change (gain) and the
general change (forgetting), each with a 95% percentile interval of the paired bootstrap
resamples. The base follows, named for what it is: the starting point, not the baseline.
Without a control the headline is adapted vs base; with ``pretrain.init: promoted``, adapted vs
the promoted model it would replace (what promotion decides). Every headline figure is masked
(placeholders and URLs out of the NLL and the bytes: ``scoring.py``); the unmasked figures keep
their names. The domain-gain gate reads the unmasked gain vs the base; the forgetting gate the
masked general change vs the control where there is one (``stage.forgetting_gate``). With
several training seeds (``seeds.py``) each headline change is the mean over seeds +- their
standard deviation, beside the interval over seeds x clusters; the gates judge the first seed's
models (the ones promotion moves).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pipeline.stages.evaluate.intervals import paired_resamples
from pipeline.stages.evaluate.scoring import DocScore
from pipeline.stages.models import stage as models

# (reference, slice) -> the masked change of adapted over that reference
MASKED_CHANGES = {("base", "domain"): "domain_bits_per_byte_change_masked",
                  ("base", "general"): "general_bits_per_byte_change_masked",
                  ("control", "domain"): "domain_change_vs_control_masked",
                  ("control", "general"): "general_change_vs_control_masked"}


def masked_changes(scores: Mapping[str, Sequence[DocScore]], slices: Mapping[str, np.ndarray],
                   draws: Mapping[str, np.ndarray] | None) -> dict[str, float]:
    """The masked changes of adapted over base and control per slice (document indices), with
    bootstrap standard errors (``_se``) over ``draws`` (the slice scores' resamples: paired),
    and for the control the 95% percentile interval (``{slice}_change_vs_control_ci_low``,
    ``_ci_high``)."""
    out: dict[str, float] = {}
    adapted = [s.nll_masked for s in scores["adapted"]]
    for (ref, slice_), name in MASKED_CHANGES.items():
        docs = slices.get(slice_)
        if ref not in scores or docs is None or not len(docs):
            continue
        change, resampled = paired_resamples(adapted, [s.nll_masked for s in scores[ref]], docs,
                                             draws[slice_] if draws else None)
        out[name] = change
        if resampled is None:
            continue
        out[f"{name}_se"] = float(np.std(resampled, ddof=1))
        if ref == "control":
            low, high = np.percentile(resampled, [2.5, 97.5])
            out[f"{slice_}_change_vs_control_ci_low"] = float(low)
            out[f"{slice_}_change_vs_control_ci_high"] = float(high)
    return out


def masked_metrics(per: Mapping[str, Mapping[str, Mapping[str, Any]]],
                   adapted: Sequence[DocScore], domain: np.ndarray) -> dict[str, float]:
    """Each model's masked bits-per-byte per slice (today's names + ``_masked``), the share of
    domain bytes masked, and ``first_token_nll_share``: the adapted model's first-token NLL
    (predicted from the context token alone) over its total NLL on the domain test slice."""
    out: dict[str, float] = {}
    for model, prefix in (("adapted", ""), ("base", "base_"), ("control", "control_")):
        for slice_, name in (("domain", "heldout_bits_per_byte"),
                             ("general", "general_bits_per_byte")):
            row = (per.get(model) or {}).get(slice_) or {}
            if "bits_per_byte_masked" in row:
                out[f"{prefix}{name}_masked"] = row["bits_per_byte_masked"]
    row = per["adapted"]["domain"]
    if "bits_per_byte_masked_se" in row:
        out["heldout_bits_per_byte_masked_se"] = row["bits_per_byte_masked_se"]
    out["heldout_masked_byte_share"] = 1.0 - row["bytes_masked"] / row["bytes"]
    if "base_heldout_bits_per_byte_masked" in out:
        out["domain_bits_per_byte_gain_masked"] = (out["base_heldout_bits_per_byte_masked"]
                                                   - out["heldout_bits_per_byte_masked"])
    total = sum(adapted[i].nll for i in domain)
    out["first_token_nll_share"] = sum(adapted[i].first_nll for i in domain) / total if total \
        else 0.0
    return out


def base_label(name: str | None) -> str | None:
    """The base model in words: a registered one with the file it was dequantised from."""
    if name is None:
        return None
    spec = models.BASE_MODELS.get(name)
    return f"base {name}" + (f" (dequantised from {spec.gguf_file})" if spec else "")


def scoring_note(metrics: Mapping[str, float], context: Mapping[str, Any],
                 precision: str = "fp32") -> str:
    """How the documents were scored, in words, for the report: the context token chosen on
    dev, what masking left out and the forward passes' precision."""
    return (f"Each document is scored after `{context['token']}`, chosen on "
            f"{context['dev_docs']} dev documents among {len(context['candidates']) or 1} "
            f"candidate(s); the first token is {metrics['first_token_nll_share']:.2%} of the "
            "domain NLL. Masked figures (the verdict's) leave placeholders and URLs out "
            f"({metrics['heldout_masked_byte_share']:.2%} of the domain bytes). Forward "
            "passes " + ("in bf16 autocast" if precision == "bf16" else "in fp32")
            + " (evaluate.precision).")


def _over_seeds(metrics: Mapping[str, float], name: str) -> tuple[float, str] | None:
    """``name``'s mean over training seeds and its words (``+- sd``), where there are several
    seeds (``seeds.py``: computed on the masked scores, like the headline's figures)."""
    base = name.removesuffix("_masked")
    mean = metrics.get(f"{base}_seed_mean")
    if mean is None:
        return None
    return mean, f"{mean:+.1%} +- {metrics[f'{base}_seed_std']:.1%} sd"


def _pct(metrics: Mapping[str, float], name: str) -> str:
    if (seeds := _over_seeds(metrics, name)) is not None:
        return seeds[1]
    se = metrics.get(f"{name}_se")
    return f"{metrics[name]:+.1%}" + (f" +- {se:.1%}" if se is not None else "")


def _ci(metrics: Mapping[str, float], slice_: str) -> str:
    """The change vs control, with its interval: one seed's (over the held-out groups), or
    with several seeds the mean, spread and interval over seeds x clusters (the interval's own
    centre)."""
    name = f"{slice_}_change_vs_control_masked"
    seeds = _over_seeds(metrics, name)
    text = seeds[1] if seeds is not None else f"{metrics[name]:+.1%}"
    low = metrics.get(f"{slice_}_change_vs_control_ci_low")
    return text + (f" (95% CI {low:+.1%} to "
                   f"{metrics[f'{slice_}_change_vs_control_ci_high']:+.1%})"
                   if low is not None else "")


def headline(metrics: Mapping[str, float], reference: str | None, promoted: bool
             ) -> tuple[str, list[str], list[str]]:
    """(who is compared, the parts before the downstream figures, the parts after) of the
    verdict; ``reference``: the base model's name, or the promoted model's words."""
    def name(n: str) -> str:  # the masked figure where it was computed
        return f"{n}_masked" if f"{n}_masked" in metrics else n

    domain, general = name("domain_bits_per_byte_change"), name("general_bits_per_byte_change")
    control = "domain_change_vs_control_masked" in metrics
    label = reference if promoted else base_label(reference)
    masked = ["placeholders and URLs masked"] if domain.endswith("_masked") or control else []
    n_seeds = int(metrics.get("train_seeds", 1))
    over = f", mean of {n_seeds} training seeds per arm" if n_seeds > 1 else ""
    if control and not promoted:
        parts = [f"domain bits/byte {_ci(metrics, 'domain')}"]
        if "general_change_vs_control_masked" in metrics:
            parts.append(f"general {_ci(metrics, 'general')}")
        tail = []
        if domain in metrics:
            tail.append(f"vs {label or 'base'}, the starting point, not the baseline: domain "
                        f"{_pct(metrics, domain)}"
                        + (f", general {_pct(metrics, general)}" if general in metrics else ""))
        return f"adapted vs control{over}", parts + masked, tail
    parts = []
    if domain in metrics:
        parts.append(f"domain bits/byte {_pct(metrics, domain)}")
    if general in metrics:
        parts.append(f"general {_pct(metrics, general)}")
    if control:
        parts.append(f"domain vs control {_ci(metrics, 'domain')}")
    elif domain in metrics:
        parts.append("no control run")
    return ((f"adapted vs {label}" if label else "adapted") + over,
            parts + (masked if parts else []), [])

