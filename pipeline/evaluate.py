"""Evaluate stage: held-out perplexity and bits-per-byte of the pretrained model (and, in
continue mode, of the base model, with quality gates), the fine-tune metrics and the tokenizer's
efficiency, gathered into ``metrics.json`` and the report (``report.md``, ``report.html``,
``plots/``).

Perplexity is computed from the ``hf/`` export (not the training process), so it also checks
that the export loads and predicts. Each held-out document is scored on its own, preceded by the
EOS token as context and split into windows of the training sequence length. Bits-per-byte
(total NLL in bits / UTF-8 bytes) is reported beside perplexity because it does not depend on the
tokenizer, so models with different tokenizers can be compared.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from pipeline import QualityGateError, models, progress
from pipeline.artifacts import Artifact, Manifest
from pipeline.config import EvaluateConfig
from pipeline.ingest import held_out
from pipeline.metrics import bits_per_byte, perplexity
from pipeline.report import write_report


@torch.no_grad()
def score_documents(model: torch.nn.Module, tok: PreTrainedTokenizerBase, texts: list[str],
                    window: int, batch_size: int) -> list[tuple[float, int]]:
    """(NLL in nats, scored tokens) per document; every document token is predicted once."""
    eos = tok.eos_token_id
    pieces: list[tuple[int, list[int]]] = []  # (doc index, [context] + tokens to score)
    for d, ids in enumerate(tok(texts, add_special_tokens=False)["input_ids"]):
        seq = [eos, *ids]
        for start in range(0, len(ids), window):
            pieces.append((d, seq[start:start + window + 1]))
    pieces.sort(key=lambda p: len(p[1]))  # similar lengths per batch: less padding
    out = [[0.0, 0] for _ in texts]
    device = next(model.parameters()).device
    model.eval()
    bar = progress.track("evaluate: scoring", -(-len(pieces) // batch_size), "batches")
    for i in range(0, len(pieces), batch_size):
        chunk = pieces[i:i + batch_size]
        width = max(len(p) for _, p in chunk)
        ids = torch.full((len(chunk), width), tok.pad_token_id)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (_, p) in enumerate(chunk):
            ids[row, :len(p)] = torch.tensor(p)
            mask[row, :len(p)] = 1
        ids, mask = ids.to(device), mask.to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        target = ids[:, 1:]
        nll = (torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), target, reduction="none") * mask[:, 1:]).cpu()
        for row, (d, p) in enumerate(chunk):
            out[d][0] += nll[row].sum().item()
            out[d][1] += len(p) - 1
        bar.update(loss=nll.sum().item() / max(1, mask[:, 1:].sum().item()))
    bar.close()
    return [(nll, n) for nll, n in out]


def slice_scores(model: torch.nn.Module, tok: PreTrainedTokenizerBase, texts: list[str],
                 sources: list[str], is_general: list[bool], window: int, batch_size: int
                 ) -> dict[str, dict[str, float]]:
    """Perplexity and bits-per-byte of ``model`` on the domain slice, the general slice and
    each source."""
    scores = score_documents(model, tok, texts, window, batch_size)
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0, 0])
    for text, source, general, (nll, n) in zip(texts, sources, is_general, scores, strict=True):
        for key in ("general" if general else "domain", f"source:{source}"):
            totals[key][0] += nll
            totals[key][1] += n
            totals[key][2] += len(text.encode("utf-8"))
    return {key: {"perplexity": perplexity(nll, n), "bits_per_byte": bits_per_byte(nll, b),
                  "tokens": n, "bytes": b}
            for key, (nll, n, b) in sorted(totals.items())}


def comparison(config: EvaluateConfig, adapted: dict[str, dict[str, float]],
               base: dict[str, dict[str, float]]) -> dict[str, float]:
    """Base vs adapted bits-per-byte (comparable across tokenizers), and the quality gates."""
    out = {"base_heldout_bits_per_byte": base["domain"]["bits_per_byte"],
           "domain_bits_per_byte_gain": base["domain"]["bits_per_byte"]
           - adapted["domain"]["bits_per_byte"]}
    if "general" in base:
        out["base_general_bits_per_byte"] = base["general"]["bits_per_byte"]
        out["general_bits_per_byte_change"] = (adapted["general"]["bits_per_byte"]
                                               / base["general"]["bits_per_byte"] - 1.0)
    failures = []
    gain = config.min_domain_gain
    if gain is not None and out["domain_bits_per_byte_gain"] < gain:
        failures.append(
            f"domain bits-per-byte {adapted['domain']['bits_per_byte']:.4f} is not "
            f"{gain:g} below the base model's {base['domain']['bits_per_byte']:.4f} "
            "(evaluate.min_domain_gain)")
    limit = config.max_general_degradation
    if limit is not None and out.get("general_bits_per_byte_change", 0.0) > limit:
        failures.append(
            f"general bits-per-byte rose {out['general_bits_per_byte_change']:+.1%} over the "
            f"base model's ({base['general']['bits_per_byte']:.4f} -> "
            f"{adapted['general']['bits_per_byte']:.4f}); evaluate.max_general_degradation "
            f"is {limit:.1%}")
    if failures:
        raise QualityGateError("evaluate: the adapted model fails its quality gates: "
                               + "; ".join(failures))
    return out


def run(config: EvaluateConfig, inputs: dict[str, Artifact], out_dir: Path) -> Manifest:
    pretrain, finetune = inputs["pretrain"], inputs["finetune"]
    hf_dir = pretrain.path / "hf"
    tok = AutoTokenizer.from_pretrained(hf_dir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForCausalLM.from_pretrained(hf_dir).to(device)
    window = json.loads((pretrain.path / "spec.json").read_text())["config"]["seq_len"]
    parts = held_out(inputs["ingest"], ["source", "text"])
    # up to max_eval_docs of each slice (a prefix is a fair sample: the file is in hash order)
    domain, general = (parts[k].slice(0, config.max_eval_docs) for k in ("domain", "general"))
    if not domain.num_rows:
        raise QualityGateError("evaluate: the held-out slice has no domain documents")
    held = pa.concat_tables([domain, general])
    texts, sources = held.column("text").to_pylist(), held.column("source").to_pylist()
    is_general = [False] * domain.num_rows + [True] * general.num_rows
    per_source = slice_scores(model, tok, texts, sources, is_general, window, config.batch_size)
    base_scores = None
    if "models" in inputs:  # continue mode: the base model on the same text, same windows
        base_dir = models.hf_dir(inputs["models"])
        base_scores = slice_scores(AutoModelForCausalLM.from_pretrained(base_dir).to(device),
                                   AutoTokenizer.from_pretrained(base_dir), texts, sources,
                                   is_general, window, config.batch_size)
    ft, tk = finetune.manifest, inputs["tokenizer"].manifest
    metrics = {
        **(comparison(config, per_source, base_scores) if base_scores else {}),
        "heldout_perplexity": per_source["domain"]["perplexity"],
        "heldout_bits_per_byte": per_source["domain"]["bits_per_byte"],
        **({"general_perplexity": per_source["general"]["perplexity"],
            "general_bits_per_byte": per_source["general"]["bits_per_byte"]}
           if "general" in per_source else {}),
        # finetune_accuracy, finetune_macro_f1(_std), finetune_base_macro_f1, ..._gain
        **{f"finetune_{k}": v for k, v in ft.metrics.items()},
        # the tokenizer training used: domain (from scratch), base or extended (continue)
        "tokenizer_fertility": tk.extra["efficiency"][
            pretrain.manifest.extra.get("tokenizer", "domain")]["domain"]["fertility"],
        "vocab_size": float(len(tok)),
    }
    evaluation = {"metrics": metrics, "per_source": per_source, "base_per_source": base_scores}
    (out_dir / "metrics.json").write_text(json.dumps(evaluation, indent=2))
    write_report(out_dir, "Evaluation report", [], inputs, evaluation)
    return Manifest(
        stage="evaluate",
        counts={"eval_docs": len(texts), "eval_tokens": int(per_source["domain"]["tokens"])},
        metrics=metrics,
        extra={"per_source": per_source, "base_per_source": base_scores},
    )
