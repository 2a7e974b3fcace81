"""Model cards in the Hugging Face Hub's format: YAML front matter, then Markdown sections.

Two cards, because the evaluation comes after the export:

- ``export_card``: pretrain writes it as ``hf/README.md`` of every export, with what pretrain
  knows: the base model, the sources and their counts (from the ingest manifest), tokens, the
  recipe, the dev losses, intended use, limitations, and the PII replaced by ingest (counts per
  type). It is part of the pretrain artifact, so the directory can be pushed to the Hub as is.
- ``run_card``: the run's report writes ``runs/<run_id>/model-card.md``: the export card with the
  domain, the evaluation (bits-per-byte, downstream metrics, the verdict and its gates) and the
  PII policy of the run's config added. The artifact is never rewritten after it is published
  (its key would no longer describe it); this copy is the report's own.

``huggingface_hub.ModelCard.load`` parses both (tests/pipeline/test_model_card.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import yaml

from pipeline.config import PiiConfig, PretrainConfig
from pipeline.engine.artifacts import Manifest

# Registered bases (pipeline.stages.models.BASE_MODELS) on the Hub, and their licence.
HUB_BASES: dict[str, tuple[str, str]] = {
    "smollm2-135m": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0"),
}
CARD_FILE = "README.md"
# In the export's card only: the run's copy holds what it points to.
LATER = ("\nHeld-out test bits-per-byte against the base model, downstream task metrics and the "
         "verdict come from the evaluate stage, after this export: the run's report and its "
         "copy of this card (`runs/<run_id>/model-card.md`) hold them.\n")


def _front_matter(meta: Mapping[str, Any]) -> str:
    return "---\n" + yaml.safe_dump(dict(meta), sort_keys=False) + "---\n"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def pii_lines(ingest_counts: Mapping[str, int], policy: PiiConfig | None = None) -> list[str]:
    """What ingest replaced (counts per type), and the policy when the config is at hand."""
    found = {k.removeprefix("pii_"): v for k, v in sorted(ingest_counts.items())
             if k.startswith("pii_") and k != "pii_docs" and v}
    lines = []
    if policy is not None and not policy.enabled:
        lines.append("PII redaction was off (`ingest.pii.enabled: false`): the training text "
                     "was not searched for identifiers.")
    elif policy is not None:
        actions = ", ".join(f"{t} ({policy.policy.get(t, 'redact')})" for t in policy.types)
        lines.append(f"Before filtering, ingest searched the corpus for these identifier types "
                     f"and replaced what it found (type and action): {actions}. `redact` leaves "
                     "a typed placeholder (`<EMAIL>`), `mask` keeps the format with letters and "
                     "digits hidden, `hash` a salted pseudonym, `keep` the value.")
    else:
        lines.append("Before filtering, ingest replaced identifiers by the domain's "
                     "`ingest.pii` policy (types and per-type action; the run's copy of this "
                     "card, `runs/<run_id>/model-card.md`, lists them).")
    lines.append(f"Documents changed: {ingest_counts.get('pii_docs', 0):,}; identifiers "
                 "replaced: " + (", ".join(f"{t} {n:,}" for t, n in found.items()) or "none")
                 + ". Patterns and NER miss some identifiers (see dapt's docs/pii.md): treat "
                 "the model as able to reproduce personal data its corpus held.")
    if ingest_counts.get("ner_docs_skipped"):
        lines.append(f"NER read {ingest_counts['ner_docs_scanned']:,} of "
                     f"{ingest_counts['ner_docs_scanned'] + ingest_counts['ner_docs_skipped']:,}"
                     " documents (`ingest.pii.ner_share`): names and places in the others were "
                     "not looked for.")
    return lines


def export_card(config: PretrainConfig, pretrain: Manifest, ingest: Manifest) -> str:
    """The card of a pretrain export (``hf/README.md``), from the stage's config, its manifest
    (counts, metrics, extra) and the ingest manifest it trained on."""
    names = list(ingest.extra.get("source_names", []))
    return "".join([*_header(config, pretrain, names), *_training_data(pretrain, ingest, names),
                    *_recipe(config, pretrain), *_evaluation_and_use(pretrain, ingest)])


def _header(config: PretrainConfig, pretrain: Manifest, names: list[str]) -> list[str]:
    """The front matter and the opening paragraph."""
    extra = pretrain.extra
    continued = config.mode == "continue"
    hub = HUB_BASES.get(config.base_model) if continued else None
    meta: dict[str, Any] = {}
    if hub:
        meta["base_model"] = hub[0]
    # dapt cannot know the corpus's terms: `other` until the publisher sets the right licence.
    meta["license"] = hub[1] if hub else "other"
    meta["datasets"] = names  # the domain's sources: local files, not Hub datasets
    meta["tags"] = ["dapt", "domain-adaptive-pretraining", "causal-lm", "deepspeed",
                    "continued-pretraining" if continued else "from-scratch"]
    meta["library_name"] = "transformers"
    meta["pipeline_tag"] = "text-generation"

    base_line = (f"continued from {hub[0] if hub else config.base_model} ({extra.get('init')})"
                 if continued else "trained from scratch")
    out = [_front_matter(meta), "\n# Domain-adapted causal language model (dapt)\n\n",
           f"A causal language model {base_line} on a domain corpus by dapt's pretrain stage "
           f"(DeepSpeed, {extra.get('precision', 'fp32')}). The weights are the "
           + ("checkpoint chosen on the dev split" if config.select_checkpoint
              else "final step's") + ".\n"]
    return out


def _training_data(pretrain: Manifest, ingest: Manifest, names: list[str]) -> list[str]:
    counts, extra = pretrain.counts, pretrain.extra
    general = set(ingest.extra.get("general_sources", []))
    out = ["\n## Training data\n\n"]
    sources, files = ingest.extra.get("sources", {}), ingest.extra.get("files", {})
    rows = [[n, "general (replay)" if n in general else "domain", len(files.get(n, [])),
             f"{sources.get(n, {}).get('docs_in', 0):,}", f"{sources.get(n, {}).get('kept', 0):,}"]
            for n in names]
    out.append(_table(["source", "kind", "files", "documents read", "kept"], rows))
    out.append(f"\nIngest read {ingest.counts.get('docs_in', 0):,} documents and kept "
               f"{ingest.counts.get('kept', 0):,} (filters, dedup, decontamination); "
               f"{ingest.counts.get('train_docs', 0):,} training documents "
               f"({ingest.counts.get('train_chars', 0):,} characters), "
               f"{ingest.counts.get('eval_docs', 0):,} held out. Packed: "
               f"{counts.get('train_tokens', 0):,} training tokens in "
               f"{counts.get('train_seqs', 0):,} sequences; trained on "
               f"{counts.get('tokens_trained', 0):,} tokens.")
    shares = [f"{n} {m['achieved_share']:.1%} of tokens (target {m['target_share']:.1%})"
              for n, m in (extra.get("mixture") or {}).items()
              if isinstance(m, dict) and {"achieved_share", "target_share"} <= set(m)]
    if shares:
        out.append(f" Mixture: {'; '.join(shares)}.")
    out.append("\n")
    return out


def _recipe(config: PretrainConfig, pretrain: Manifest) -> list[str]:
    counts, extra = pretrain.counts, pretrain.extra
    continued = config.mode == "continue"
    out = ["\n## Training recipe\n\n"]
    recipe = [["mode", config.mode], ["tokenizer", extra.get("tokenizer", "-")],
              ["parameters", f"{counts.get('params', 0):,}"],
              ["steps", config.max_steps], ["sequence length", config.seq_len],
              ["batch (micro x accumulation x GPUs x nodes)",
               f"{config.micro_batch_size} x {config.grad_accum_steps} x {config.num_gpus} x "
               f"{config.num_nodes}"],
              ["learning rate (peak, warmup steps)", f"{config.lr:g}, {config.warmup_steps}"],
              ["ZeRO stage", config.zero_stage], ["precision", extra.get("precision", "-")]]
    if not continued:
        m = config.model
        recipe.append(["architecture", f"{m.num_layers} layers, hidden {m.hidden_size}, "
                       f"{m.num_heads} heads"])
    out.append(_table(["setting", "value"], recipe))
    return out


def _evaluation_and_use(pretrain: Manifest, ingest: Manifest) -> list[str]:
    metrics = pretrain.metrics
    out = ["\n## Evaluation\n\n"]
    shown = {"eval_loss": "domain dev loss", "eval_perplexity": "domain dev perplexity",
             "general_eval_loss": "general dev loss", "final_train_loss": "final train loss"}
    out.append(_table(["metric (pretraining)", "value"],
                      [[label, f"{metrics[k]:.4g}"] for k, label in shown.items()
                       if k in metrics]))
    out.append(LATER)

    out.append("\n## Intended use\n\n")
    out.append("Research on domain adaptation: a starting point for fine-tuning or probing on "
               "the domain's tasks, and for comparing against the base model. It is a language "
               "model of raw domain text, not an assistant; it was not tuned to follow "
               "instructions or to refuse.\n")
    out.append("\n## Limitations\n\n")
    out.append("A small model trained on a small corpus: what it writes can be wrong however "
               "fluent it reads. It was not evaluated for bias, toxicity or factual accuracy; "
               "domain text (medical, "
               "legal, financial) from it is not advice. It can reproduce passages of its "
               "training text.\n")
    out.append("\n## PII policy\n\n")
    out.append(" ".join(pii_lines(ingest.counts)) + "\n")
    return out


def run_card(export: str, *, domain: str, profile: str, run_id: str, verdict: str,
             rows: list[list[Any]], pii: PiiConfig | None, ingest_counts: Mapping[str, int]
             ) -> str:
    """The export card with the run's domain, evaluation (``verdict``: the report's verdict
    paragraph; ``rows``: its key table, metric | base | adapted | change) and PII policy added.
    The report renders both (pipeline/lifecycle/report.py stays out of pretrain's code version)."""
    front, body = _split(export)
    meta = yaml.safe_load(front) or {}
    meta["tags"] = [*meta.get("tags", []), domain]
    evaluated = [f"Run `{run_id}` of domain `{domain}` (profile `{profile}`)."]
    if verdict:
        evaluated.append(verdict)
    if rows:
        evaluated.append(_table(["metric", "base", "adapted", "change"], rows))
    section = "\n\n".join(evaluated) + "\n\n"
    body = body.replace(LATER, "").replace("## Evaluation\n\n", "## Evaluation\n\n" + section, 1)
    body = re.sub(r"## PII policy\n.*", lambda _: "## PII policy\n\n" + " ".join(
        pii_lines(ingest_counts, pii)) + "\n", body, count=1, flags=re.S)
    return _front_matter(meta) + body


def _split(card: str) -> tuple[str, str]:
    """(front matter YAML, body) of a card."""
    match = re.match(r"---\n(.*?)\n---\n(.*)", card, flags=re.S)
    if not match:
        raise ValueError("a model card starts with YAML front matter between '---' lines")
    return match.group(1), match.group(2)
