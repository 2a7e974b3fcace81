"""The report of one domain model: ``report.md``, a self-contained ``report.html`` (plots
embedded) and ``plots/*.png``, built from the artifacts' manifests alone.

Sections: a header (artifact keys, config hashes and lineage), the key table (base vs adapted),
held-out language modelling per slice and source, fine-tuning (mean +- std over seeds, per-class
F1, confusion matrix), zero-shot accuracy, pretraining curves and mixture, tokenizer efficiency,
and the corpus. The evaluate stage writes one into its artifact; ``dapt run`` and ``dapt report
RUN`` write one per run, with the run's stages, under ``runs/<run_id>/``.

A report is a list of blocks rendered twice (Markdown, HTML), so the two never disagree.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.engine.artifacts import Artifact
from pipeline.lifecycle.report_plots import plots
from pipeline.stages.finetune.output import FinetuneOutput
from pipeline.stages.ingest.artifact import IngestOutput
from pipeline.stages.pretrain.output import PretrainOutput
from pipeline.stages.tokenizer.output import TokenizerOutput

Block = tuple[Any, ...]  # ("h1"|"h2"|"h3"|"p", text) | ("table", header, rows) | ("img", name, alt)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _pm(summary: Mapping[str, float], metric: str) -> str:
    return f"{summary[metric]:.3f} +- {summary[f'{metric}_std']:.3f}"


def key_rows(evaluation: Mapping[str, Any], finetune: FinetuneOutput) -> list[list[Any]]:
    """metric | base | adapted | change: the numbers a reviewer decides on."""
    m, base = evaluation["metrics"], evaluation.get("base_per_source") or {}
    adapted = evaluation["per_source"]
    rows = []
    for slice_ in ("domain", "general"):
        if slice_ in adapted:
            a = adapted[slice_]["bits_per_byte"]
            b = base[slice_]["bits_per_byte"] if slice_ in base else None
            rows.append([f"{slice_} bits/byte (lower is better)", _fmt(b) if b else "-", _fmt(a),
                         f"{a / b - 1:+.2%}" if b else "-"])
    for task, result in finetune.tasks:
        for metric in ("macro_f1", "accuracy"):
            a, b = result["adapted"], result.get("base")
            rows.append([f"{task} {metric.replace('_', '-')} (mean +- std, "
                         f"{len(a['runs'])} seeds)", _pm(b, metric) if b else "-",
                         _pm(a, metric), f"{a[metric] - b[metric]:+.3f}" if b else "-"])
    rows.append(["tokenizer fertility (tokens/word, domain text)", "-",
                 _fmt(m["tokenizer_fertility"]), "-"])
    return rows


def verdict_blocks(evaluation: Mapping[str, Any]) -> list[Block]:
    """The verdict in plain numbers and each gate's outcome: the first thing a reader sees."""
    verdict = evaluation.get("verdict")
    if not verdict:
        return []
    gates = verdict.get("gates", [])
    text = f"**Verdict**: {verdict['text']}."
    if gates:
        text += " Gates: " + "; ".join(
            f"{g['gate']} {'passed' if g['passed'] else 'FAILED'} ({g['value']:+.4g}, limit "
            f"{g['limit']:g})" for g in gates) + "."
    warnings = [("p", f"**Warning**: {w}.") for w in verdict.get("warnings", [])]
    return [("p", text), *warnings, *split_blocks(evaluation)]


def split_blocks(evaluation: Mapping[str, Any]) -> list[Block]:
    """How far the test text is from the training text: near-twins and covered documents."""
    split = evaluation.get("twins")
    if not split:
        return []
    rows = [[name, row["docs"], f"{row['twin_rate']:.1%}", f"{row['covered_rate']:.1%}"]
            for name, row in split.items()]
    return [("p", "Test text against the training text: *twins* have a training document "
                  "one word away; *covered* documents have >= 90% of their word 3-grams in "
                  "the training text (docs/adaptation.md, \"The held-out split\")."),
            ("table", ["test text", "docs", "twins", "covered"], rows)]


def control_rows(evaluation: Mapping[str, Any]) -> list[list[Any]]:
    """slice | base | control | adapted | adapted vs base | adapted vs control (bits/byte)."""
    m = evaluation["metrics"]
    per, base = evaluation["per_source"], evaluation.get("base_per_source") or {}
    ctrl = evaluation.get("control_per_source") or {}

    def change(name: str, ci: str = "") -> str:
        if name not in m:
            return "-"
        se, low = m.get(f"{name}_se"), m.get(f"{ci}_ci_low")
        return (f"{m[name]:+.2%}" + (f" +- {se:.2%}" if se is not None else "")
                + (f" (95% CI {low:+.2%} to {m[f'{ci}_ci_high']:+.2%})" if low is not None
                   else ""))

    rows = []
    for masked in ("", "_masked"):  # the masked rows: placeholders and URLs out (the verdict's)
        for slice_, vs_base, vs_ctrl in (
                ("domain", "domain_bits_per_byte_change", "domain_change_vs_control"),
                ("general", "general_bits_per_byte_change", "general_change_vs_control")):
            if slice_ in per and slice_ in ctrl and f"bits_per_byte{masked}" in per[slice_]:
                rows.append([slice_ + (" (masked)" if masked else ""),
                             base.get(slice_, {}).get(f"bits_per_byte{masked}", "-"),
                             ctrl[slice_][f"bits_per_byte{masked}"],
                             per[slice_][f"bits_per_byte{masked}"], change(vs_base + masked),
                             change(vs_ctrl + masked, vs_ctrl if masked else "")])
    return rows


def seed_blocks(evaluation: Mapping[str, Any]) -> list[Block]:
    """With pretrain.seeds > 1: each training seed's figures, then each one's mean, spread
    over seeds and two-level bootstrap interval (pipeline/stages/evaluate/seeds.py)."""
    seeds = evaluation.get("seeds")
    if not seeds:
        return []
    names = [s["metric"] for s in seeds["summary"]]
    interval = [f"{s['ci_low']:+.4g} to {s['ci_high']:+.4g}" if s["ci_low"] is not None
                else "-" for s in seeds["summary"]]
    return [
        ("h3", f"Training seeds ({seeds['train_seeds']})"),
        ("p", "Each training seed's models (adapted; control, if any: seed i paired with seed "
         "i) trained with the same recipe and scored on the same test documents. The 95% "
         "interval of a change resamples seeds and, within, held-out clusters "
         f"(`{seeds['clusters']}`), {seeds['bootstrap_samples']} replicates. The headline "
         "figures above are the first seed's: the model the gates judge and promotion moves."),
        ("table", ["seed", *names], [[r["seed"], *(r[n] for n in names)] for r in seeds["rows"]]),
        ("table", ["metric", "mean over seeds", "std over seeds", "95% interval"],
         [[s["metric"], s["mean"], s["std"], i] for s, i in zip(seeds["summary"], interval,
                                                                 strict=True)]),
    ]


def _reference_text(sel: Mapping[str, Any]) -> str:
    """Which loss the rule's general limit was measured from (selections written before the
    control could be the reference have no ``reference``: the base)."""
    if sel.get("reference") == "control":
        return (f"Reference: the control (control/`{sel['control_key']}`), general dev loss "
                f"{sel['control_general_loss']:.4f} on the same general dev sequences; the "
                "domain change is vs the base model (step 0). ")
    why = f" ({sel['reference_note']})" if sel.get("reference_note") else ""
    return f"Reference: the base model (step 0){why}. "


def _pct(value: float | None) -> str:
    return f"{value:+.2%}" if value is not None else "-"


def selection_blocks(evaluation: Mapping[str, Any]) -> list[Block]:
    sel = evaluation.get("selection")
    if not sel:
        return []
    vs_control = sel.get("reference") == "control"
    return [
        ("h3", "Checkpoint choice"),
        ("p", f"Rule: {sel['rule']} (limit {sel['max_general_degradation']:.1%}). "
         + _reference_text(sel) + "Scored on the dev part of the held-out text, never on the "
         f"test part reported above. Chosen: step **{sel['chosen_step']}**"
         + ("" if sel["within_limit"] else " (no eval point stayed within the limit)") + "."),
        ("img", "checkpoints.png", "dev loss change vs the base model at each eval point"),
        ("table", ["step", "domain dev loss", "general dev loss", "domain change",
                   "general change", *(["general vs control"] if vs_control else []),
                   "within limit", "chosen"],
         [[c["step"], c["eval_loss"], c["general_loss"] if c["general_loss"] is not None
           else "-", _pct(c["domain_change"]), _pct(c["general_change"]),
           *([_pct(c.get("general_change_vs_control"))] if vs_control else []),
           c["within_limit"], "yes" if c["step"] == sel["chosen_step"] else ""]
          for c in sel["candidates"]]),
    ]


def header_blocks(artifacts: Mapping[str, Artifact]) -> list[Block]:
    rows = []
    for stage, art in artifacts.items():
        m = art.manifest
        rows.append([stage, f"`{art.key}`", f"`{m.config_hash}`", f"`{m.code_version}`",
                     ", ".join(f"{s}/`{k}`" for s, k in m.inputs.items()) or "source files"])
    return [("table", ["stage", "artifact key", "config hash", "code", "inputs (lineage)"], rows)]


def training_curve(artifacts: Mapping[str, Artifact]) -> list[dict[str, Any]]:
    return PretrainOutput(artifacts["pretrain"]).curve()


def body_blocks(artifacts: Mapping[str, Artifact], evaluation: Mapping[str, Any],
                curve: list[dict[str, Any]]) -> list[Block]:
    pre, ft = PretrainOutput(artifacts["pretrain"]), FinetuneOutput(artifacts["finetune"])
    base = evaluation.get("base_per_source")
    blocks: list[Block] = [
        ("h2", "Key results" + (f": {evaluation.get('base_label') or f'base `{pre.base_model}`'}"
                                " (the starting point) vs adapted" if base else "")),
        ("table", ["metric", "base", "adapted", "change"], key_rows(evaluation, ft)),
        *_language_blocks(evaluation, pre),
        *seed_blocks(evaluation),
        *selection_blocks(evaluation),
        *_finetune_blocks(ft),
        *zeroshot_blocks(evaluation),
        *_pretrain_blocks(pre, curve),
        *_tokenizer_blocks(TokenizerOutput(artifacts["tokenizer"]), pre),
        *_corpus_blocks(IngestOutput(artifacts["ingest"])),
    ]
    return blocks


def _language_blocks(evaluation: Mapping[str, Any], pre: PretrainOutput) -> list[Block]:
    """Held-out language modelling: the adapted model, beside the base and the control."""
    metrics, per_source = evaluation["metrics"], evaluation["per_source"]
    base = evaluation.get("base_per_source")
    blocks: list[Block] = [
        ("h2", "Held-out language modelling"),
        ("p", f"Domain text: perplexity **{metrics['heldout_perplexity']:.2f}** (vocabulary "
         f"{int(metrics['vocab_size'])}), bits-per-byte **{metrics['heldout_bits_per_byte']:.3f}**"
         + (f"; general text (forgetting): perplexity {metrics['general_perplexity']:.2f}, "
            f"bits-per-byte {metrics['general_bits_per_byte']:.3f}"
            if "general_perplexity" in metrics else "") + "."),
        ("table", ["slice", "perplexity", "bits/byte", "bits/byte masked", "tokens", "bytes"],
         [[s, v["perplexity"], v["bits_per_byte"], v.get("bits_per_byte_masked", "-"),
           v["tokens"], v["bytes"]] for s, v in per_source.items()]),
        *([("p", evaluation["scoring"])] if evaluation.get("scoring") else []),  # verdict.py
    ]
    if base:
        blocks += [
            ("h3", f"Base vs adapted ({pre.base_model})"),
            ("p", "Bits-per-byte, which does not depend on the tokenizer; lower is better."),
            ("table", ["slice", "base", "adapted", "change"],
             [[s, base[s]["bits_per_byte"], v["bits_per_byte"],
               f"{v['bits_per_byte'] / base[s]['bits_per_byte'] - 1:+.2%}"]
              for s, v in per_source.items() if s in base]),
        ]
    if evaluation.get("control_per_source"):
        blocks += [
            ("h3", "Base, control and adapted"),
            ("p", "The control continued the base model on general text only, with the same "
             "recipe and budget: adapted vs control is the effect of the domain data, and the "
             "verdict's headline. Changes are relative bits-per-byte +- a bootstrap standard "
             "error over the held-out groups (a group is drawn whole; each document where "
             "ingest wrote none); the masked rows (the verdict's figures) leave placeholders "
             "and URLs out, with the 95% interval of the paired resamples vs control."),
            ("table", ["slice", "base", "control", "adapted", "adapted vs base",
                       "adapted vs control"], control_rows(evaluation)),
        ]
    blocks.append(("img", "bits_per_byte.png", "bits-per-byte per slice, base vs adapted"))
    return blocks


def _pretrain_blocks(pre: PretrainOutput, curve: list[dict[str, Any]]) -> list[Block]:
    every = max(1, len(curve) // 10)
    sampled = curve[::every] + ([curve[-1]] if curve and (len(curve) - 1) % every else [])
    general = pre.general_eval_loss
    return [
        ("h2", "Pretraining"),
        ("p", f"{pre.params:,} parameters, {pre.steps} steps, "
         f"{pre.tokens_trained:,} tokens at {pre.tokens_per_s:.0f} "
         f"tokens/s ({pre.precision}, world size {pre.world_size}); held-out "
         f"loss {pre.eval_loss:.3f}"
         + (f", general held-out loss {general:.3f}" if general is not None else "") + "."),
        ("img", "loss_curves.png", "training, held-out and general loss"),
        ("table", ["step", "loss", "held-out loss", "general loss", "lr", "grad norm",
                   "tokens/s"],
         [[r["step"], r["loss"], r.get("heldout_loss", ""), r.get("general_loss", ""),
           r["lr"], r["grad_norm"], r["tokens_per_s"]] for r in sampled]),
        ("p", "Training mixture (share of packed training tokens):"),
        ("table", ["source", "target", "achieved", "tokens", "passes"],
         [[s, v["target_share"], v["achieved_share"], v["tokens"], v["passes"]]
          for s, v in pre.mixture.items()]),
    ]


def _tokenizer_blocks(tok: TokenizerOutput, pre: PretrainOutput) -> list[Block]:
    return [
        ("h2", "Tokenizer"),
        ("p", f"Domain {tok.model} tokenizer of {tok.vocab_size} tokens"
         + (f"; base tokenizer extended by {tok.new_tokens} domain tokens"
            if tok.new_tokens is not None else "")
         + f"; training used the {pre.tokenizer} tokenizer. Exact "
         f"round-trip on {tok.roundtrip_checked} held-out documents."),
        ("img", "fertility.png", "tokens per word by tokenizer"),
        ("table", ["tokenizer", "text", "fertility (tokens/word)", "characters/token"],
         [[name, part, v["fertility"], v["chars_per_token"]]
          for name, parts in tok.efficiency.items() for part, v in parts.items()]),
    ]


def _corpus_blocks(ing: IngestOutput) -> list[Block]:
    ner = ing.ner_coverage
    return [
        ("h2", "Corpus"),
        ("p", f"{ing.docs_in:,} documents in, {ing.kept:,} kept "
         f"({ing.train_docs:,} train, {ing.eval_docs:,} held out), "
         f"{ing.excluded:,} excluded."),
        *([("p", ner.sentence())] if ner and ner.skipped else []),  # pii.ner_share < 1
        ("table", ["reason", "documents"],
         [[k, v] for k, v in sorted(ing.excluded_by_reason.items())]),
        ("table", ["source", "in", "kept"],
         [[s, v["docs_in"], v["kept"]] for s, v in ing.sources.items()]),
    ]


def _finetune_blocks(ft: FinetuneOutput) -> list[Block]:
    blocks: list[Block] = [("h2", "Fine-tuning")]
    blocks.append(("p", f"Method {ft.method}, seeds {ft.seeds}, models: "
                   + ", ".join(ft.models) + ". Same splits and hyperparameters for every "
                   "model; mean +- sample standard deviation over seeds."))
    blocks.append(("img", "finetune.png", "fine-tune accuracy and macro-F1, mean +- std"))
    for task, r in ft.tasks:
        c, a, b = r["counts"], r["adapted"], r.get("base")
        blocks += [
            ("h3", f"Task {task}"),
            ("p", f"{c['train_examples']} train / {c['validation_examples']} validation / "
             f"{c['test_examples']} test examples, {len(r['labels'])} labels"
             + (f", {c['unmapped_rows']} rows outside the label map" if c["unmapped_rows"]
                else "") + f"; majority-class rate {a['majority_rate']:.3f}."),
            # probe runs have the C chosen on validation where fine-tunes have a best epoch
            ("table", ["model", "accuracy", "macro-F1", "per seed macro-F1",
                       "chosen C" if ft.method == "probe" else "best epochs"],
             [[name, _pm(s, "accuracy"), _pm(s, "macro_f1"),
               ", ".join(f"{x['macro_f1']:.3f}" for x in s["runs"]),
               ", ".join(f"{x.get('best_epoch', x.get('c'))}" for x in s["runs"])]
              for name, s in (("adapted", a), ("base", b), ("control", r.get("control")))
              if s]),
            ("table", ["label", "support", "F1 adapted"] + (["F1 base"] if b else []),
             [[lab, n, f1] + ([b["per_class_f1"][i]] if b else [])
              for i, (lab, n, f1) in enumerate(zip(r["labels"], a["support"], a["per_class_f1"],
                                                   strict=True))]),
            ("img", f"confusion_{task}.png", f"confusion matrix of {task}, adapted, all seeds"),
        ]
    return blocks


def zeroshot_blocks(evaluation: Mapping[str, Any]) -> list[Block]:
    """Zero-shot accuracy per task and model on the fine-tuning test split, and the gain."""
    zs, m = evaluation.get("zeroshot"), evaluation["metrics"]
    if not zs:
        return []
    models = [k for k in ("base", "control", "adapted") if k in zs["tasks"][0]["models"]]
    gains = "".join(f"adapted - {r} {m[f'zeroshot_gain_vs_{r}']:+.3f} (95% CI, paired bootstrap: "
                    f"{m[f'zeroshot_gain_vs_{r}_ci_low']:+.3f} to "
                    f"{m[f'zeroshot_gain_vs_{r}_ci_high']:+.3f}). " for r in ("control", "base")
                    if f"zeroshot_gain_vs_{r}_ci_low" in m)
    rule = zs.get("rule", "acc")  # evaluations from before the rule was chosen: acc
    how = zs.get("rule_choice", {}).get("text", rule)
    rules = [r for r in ("acc", "acc_norm", "acc_mutual_info")
             if r in zs["tasks"][0]["models"]["adapted"]]
    return [("h2", "Zero-shot downstream"),
            ("p", "Each test example as multiple choice over the class names, no training: acc "
             "by summed log-likelihood, acc_norm per character, acc_mutual_info minus the class "
             "name's log-likelihood without the text; majority: always the most frequent "
             f"class. Headline rule: {how}; the accuracies "
             "and gains below use it unless a column names another rule. " + gains
             + f"lm_eval reruns it: `--include_path {zs['lm_eval_dir']}` in the evaluate "
             "artifact."),
            ("table", ["task", "examples", "chance", "majority",
                       *(f"{k} {rule}" for k in models),
                       *(f"adapted {r}" for r in rules if r != rule)],
             [[t["task"], t["examples"], f"{t['chance']:.3f}",
               f"{t['majority']:.3f}" if "majority" in t else "-",
               *(f"{t['models'][k][rule]:.3f}" for k in models),
               *(f"{t['models']['adapted'][r]:.3f}" for r in rules if r != rule)]
              for t in zs["tasks"]])] + _zeroshot_seed_blocks(zs.get("seeds"), m)


def _zeroshot_seed_blocks(table: Mapping[str, Any] | None, m: Mapping[str, float]
                          ) -> list[Block]:
    """Every training seed's zero-shot accuracy (mean over tasks) and gain vs the control of
    its seed, with the interval over seeds and examples (``zeroshot_seeds.py``)."""
    if not table:
        return []
    gain = "zeroshot_gain_vs_control"
    ci = (f", 95% CI over seeds and examples {m[f'{gain}_seed_ci_low']:+.3f} to "
          f"{m[f'{gain}_seed_ci_high']:+.3f} ({table['bootstrap_samples']} replicates)"
          if f"{gain}_seed_ci_low" in m else "")
    return [("h3", f"Zero-shot over training seeds ({table['train_seeds']})"),
            ("p", f"Each seed's adapted model and control on the same test rows, rule "
             f"{table['rule']} (chosen on the first seed's models). Adapted - control: mean "
             f"{m[f'{gain}_seed_mean']:+.3f}, sd {m[f'{gain}_seed_std']:.3f}{ci}. The "
             "interval above the table is the first seed's, over examples only."),
            ("table", ["seed", "adapted", "control", "adapted - control"],
             [[r["seed"], f"{r['adapted']:.3f}", f"{r['control']:.3f}", f"{r['gain']:+.3f}"]
              for r in table["rows"]])]


# --- rendering ----------------------------------------------------------------------------------


def to_markdown(blocks: Sequence[Block]) -> str:
    parts = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            parts.append("#" * int(kind[1]) + " " + block[1])
        elif kind == "p":
            parts.append(block[1])
        elif kind == "table":
            header, rows = block[1], block[2]
            lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
            parts.append("\n".join(lines))
        elif kind == "img":
            parts.append(f"![{block[2]}](plots/{block[1]})")
    return "\n\n".join(parts) + "\n"


def _inline(text: str) -> str:
    text = html.escape(text, quote=False)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


STYLE = ("body{font-family:sans-serif;max-width:60em;margin:2em auto;color:#222}"
         "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
         "padding:.25em .6em;text-align:left}th{background:#f3f3f3}img{max-width:100%}"
         "code{background:#f3f3f3}")


def to_html(blocks: Sequence[Block], images: Mapping[str, bytes], title: str) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
             f"</title><style>{STYLE}</style></head><body>"]
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            parts.append(f"<{kind}>{_inline(block[1])}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{_inline(block[1])}</p>")
        elif kind == "table":
            head = "".join(f"<th>{_inline(h)}</th>" for h in block[1])
            body = "".join("<tr>" + "".join(f"<td>{_inline(_fmt(v))}</td>" for v in row)
                           + "</tr>" for row in block[2])
            parts.append(f"<table><tr>{head}</tr>{body}</table>")
        elif kind == "img" and block[1] in images:
            data = base64.b64encode(images[block[1]]).decode()
            parts.append(f"<figure><img alt='{html.escape(block[2])}' "
                         f"src='data:image/png;base64,{data}'><figcaption>"
                         f"{html.escape(block[2])}</figcaption></figure>")
    return "\n".join(parts) + "\n</body></html>\n"


def write_report(out_dir: Path, title: str, intro: Sequence[Block],
                 artifacts: Mapping[str, Artifact], evaluation: Mapping[str, Any],
                 images: Mapping[str, bytes] | None = None) -> Path:
    """Write ``report.md``, ``report.html`` and ``plots/`` into ``out_dir``; the .md path.
    ``images``: the plots already drawn from these very artifacts (else they are drawn)."""
    curve = training_curve(artifacts)
    blocks = [("h1", title), *verdict_blocks(evaluation), *intro, *header_blocks(artifacts),
              *body_blocks(artifacts, evaluation, curve)]
    images = images or plots(artifacts, evaluation, curve)
    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    for name, png in images.items():
        (out_dir / "plots" / name).write_bytes(png)
    (out_dir / "report.html").write_text(to_html(blocks, images, title))
    (out_dir / "report.md").write_text(to_markdown(blocks))
    return out_dir / "report.md"


def summary_markdown(title: str, artifacts: Mapping[str, Artifact],
                     evaluation: Mapping[str, Any]) -> str:
    """The key table alone: what the Prefect UI shows as the run's markdown artifact."""
    return to_markdown([("h2", title), *verdict_blocks(evaluation),
                        ("table", ["metric", "base", "adapted", "change"],
                                        key_rows(evaluation,
                                                 FinetuneOutput(artifacts["finetune"]))),
                        *header_blocks(artifacts)])
