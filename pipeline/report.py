"""Markdown report of one domain model: data, tokenizer, training, fine-tune, held-out metrics."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pipeline.artifacts import Artifact


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def render_report(inputs: Mapping[str, Artifact], metrics: Mapping[str, float],
                  per_source: Mapping[str, Mapping[str, float]],
                  base: Mapping[str, Mapping[str, float]] | None = None) -> str:
    ing, tok = inputs["ingest"].manifest, inputs["tokenizer"].manifest
    pre, ft = inputs["pretrain"].manifest, inputs["finetune"].manifest
    curve = [json.loads(line) for line in
             (inputs["pretrain"].path / "metrics.jsonl").read_text().splitlines()]
    every = max(1, len(curve) // 10)
    sampled = curve[::every] + ([curve[-1]] if curve and (len(curve) - 1) % every else [])
    labels = ft.extra["labels"]
    excluded = {k.removeprefix("excluded_"): v for k, v in ing.counts.items()
                if k.startswith("excluded_")}
    parts = [
        "## Artifacts",
        _table(["stage", "key"], [[a.stage, a.key] for a in inputs.values()]),
        "## Held-out language modelling",
        f"Domain text: perplexity **{metrics['heldout_perplexity']:.2f}** (vocabulary "
        f"{int(metrics['vocab_size'])}), bits-per-byte **{metrics['heldout_bits_per_byte']:.3f}**"
        + (f"; general text (forgetting): perplexity {metrics['general_perplexity']:.2f}, "
           f"bits-per-byte {metrics['general_bits_per_byte']:.3f}"
           if "general_perplexity" in metrics else "") + ".",
        _table(["slice", "perplexity", "bits/byte", "tokens", "bytes"],
               [[s, v["perplexity"], v["bits_per_byte"], v["tokens"], v["bytes"]]
                for s, v in per_source.items()]),
        *([f"### Base vs adapted ({pre.extra.get('base_model')})",
           "Bits-per-byte, which does not depend on the tokenizer; lower is better.",
           _table(["slice", "base", "adapted", "change"],
                  [[s, base[s]["bits_per_byte"], v["bits_per_byte"],
                    f"{v['bits_per_byte'] / base[s]['bits_per_byte'] - 1:+.2%}"]
                   for s, v in per_source.items() if s in base])] if base else []),
        f"## Fine-tune: {ft.extra['task']}",
        f"Accuracy **{metrics['finetune_accuracy']:.3f}** vs majority-class rate "
        f"{metrics['finetune_majority_rate']:.3f}; macro-F1 **{metrics['finetune_macro_f1']:.3f}** "
        f"({ft.counts['train_examples']} train / {ft.counts['test_examples']} test examples, "
        f"{len(labels)} labels).",
        _table(["label", "F1", "support"],
               [[lab, f1, n] for lab, f1, n in
                zip(labels, ft.extra["per_class_f1"], ft.extra["support"], strict=True)]),
        "## Pretraining",
        f"{pre.counts['params']:,} parameters, {pre.counts['steps']} steps, "
        f"{pre.counts['tokens_trained']:,} tokens at {pre.metrics['tokens_per_s']:.0f} tokens/s "
        f"({pre.extra['precision']}, world size {pre.counts['world_size']}); held-out loss "
        f"{pre.metrics['eval_loss']:.3f}"
        + (f", general held-out loss {pre.metrics['general_eval_loss']:.3f}"
           if "general_eval_loss" in pre.metrics else "") + ".",
        _table(["step", "loss", "held-out loss", "general loss", "lr", "grad norm", "tokens/s"],
               [[r["step"], r["loss"], r.get("heldout_loss", ""), r.get("general_loss", ""),
                 r["lr"], r["grad_norm"], r["tokens_per_s"]] for r in sampled]),
        "Training mixture (share of packed training tokens):",
        _table(["source", "target", "achieved", "tokens", "passes"],
               [[s, v["target_share"], v["achieved_share"], v["tokens"], v["passes"]]
                for s, v in pre.extra.get("mixture", {}).items()]),
        "## Tokenizer",
        f"Domain {tok.extra.get('model', 'bpe')} tokenizer of {tok.counts['vocab_size']} tokens"
        + (f"; base tokenizer extended by {tok.counts['new_tokens']} domain tokens"
           if "new_tokens" in tok.counts else "")
        + f"; training used the {pre.extra.get('tokenizer', 'domain')} tokenizer. Exact "
        f"round-trip on {tok.counts['roundtrip_checked']} held-out documents.",
        _table(["tokenizer", "text", "fertility (tokens/word)", "characters/token"],
               [[name, part, v["fertility"], v["chars_per_token"]]
                for name, parts in tok.extra.get("efficiency", {}).items()
                for part, v in parts.items()]),
        "## Corpus",
        f"{ing.counts['docs_in']:,} documents in, {ing.counts['kept']:,} kept "
        f"({ing.counts['train_docs']:,} train, {ing.counts['eval_docs']:,} held out), "
        f"{ing.counts['excluded']:,} excluded.",
        _table(["reason", "documents"], [[k, v] for k, v in sorted(excluded.items())]),
        _table(["source", "in", "kept"],
               [[s, v["docs_in"], v["kept"]] for s, v in ing.extra["sources"].items()]),
    ]
    return "\n\n".join(parts) + "\n"
