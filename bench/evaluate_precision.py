"""The evaluate stage in bf16 autocast against fp32 (``evaluate.precision``), on a built run's
artifacts: the speed ratio of the two precisions measured side by side in this run, the stage's
time in bf16, and the verdict's figures in both precisions.

    .venv/bin/python -m bench.evaluate_precision --domain legal --profile cpu \\
        --store /work/runs/lg/artifacts --build evaluate/KEY --out /tmp/evp [--fp32]

``--build`` names an fp32 evaluate build in ``--store``: its manifest gives the inputs
(ingest, tokenizer, models, control, pretrain, finetune) and its ``metrics.json`` the fp32
figures. With ``--fp32`` the stage also runs in fp32 here (a baseline built by this checkout in
this run; it takes as long as a first run's evaluate). Steps:

1. **Speed, side by side**: the adapted model scores the first ``--docs`` test documents in
   fp32 and in bf16, alternating (A B A B, ``--rounds`` each); min and median seconds and their
   ratio, and the largest relative difference of a document's NLL.
2. **The stage in bf16** (and in fp32 with ``--fp32``): each into its own directory under
   ``--out/evaluate``, timed; a gate failure still writes the report and is reported.
3. **The verdict in both precisions**: the figures the verdict and the zero-shot table print,
   side by side, and how many zero-shot answers differ, per model, under ``acc`` and under
   ``acc_mutual_info``.

Not a test: it scores the real 135M models (minutes per model on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bench.evaluate_memo import _artifacts, build
from pipeline import domains
from pipeline.stages.evaluate import stage as evaluate
from pipeline.stages.evaluate.scoring import score_documents
from pipeline.stages.ingest.artifact import IngestOutput

FIGURES = [  # the verdict's and the zero-shot table's figures
    "domain_change_vs_control_masked", "domain_change_vs_control_ci_low",
    "domain_change_vs_control_ci_high", "general_change_vs_control_masked",
    "general_change_vs_control_ci_low", "general_change_vs_control_ci_high",
    "domain_bits_per_byte_change_masked", "general_bits_per_byte_change_masked",
    "heldout_bits_per_byte_masked", "control_heldout_bits_per_byte_masked",
    "base_heldout_bits_per_byte_masked", "general_bits_per_byte_masked",
    "control_general_bits_per_byte_masked", "base_general_bits_per_byte_masked",
    "zeroshot_accuracy", "zeroshot_control_accuracy", "zeroshot_base_accuracy",
    "zeroshot_gain_vs_control", "zeroshot_gain_vs_control_ci_low",
    "zeroshot_gain_vs_control_ci_high",
]


def speed(config, inputs: dict, docs: int, rounds: int) -> dict:
    """fp32 and bf16 scoring of the adapted model on the first ``docs`` test documents,
    alternating; seconds per pass and the NLLs' largest relative difference."""
    texts = evaluate.test_text(config, IngestOutput(inputs["ingest"])).texts[:docs]
    given = evaluate.Inputs.of(inputs)
    seconds: dict[str, list[float]] = {"fp32": [], "bf16": []}
    nll: dict[str, np.ndarray] = {}
    model = AutoModelForCausalLM.from_pretrained(given.pretrain.hf_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(given.pretrain.hf_dir)
    for _ in range(rounds):
        for precision in ("fp32", "bf16"):
            start = time.perf_counter()
            s = score_documents(model, tok, texts, given.pretrain.seq_len, config.batch_size,
                                precision=precision)  # after the EOS
            seconds[precision].append(time.perf_counter() - start)
            nll[precision] = np.array([d.nll for d in s])
    out = {p: {"min": min(v), "median": statistics.median(v)} for p, v in seconds.items()}
    out["ratio_median"] = out["bf16"]["median"] / out["fp32"]["median"]
    out["max_rel_nll_diff"] = float(np.max(np.abs(nll["bf16"] / nll["fp32"] - 1)))
    return out


def answers(build_dir: Path) -> dict[tuple[str, str, int], tuple[int, int]]:
    """(task, model, id) -> the chosen answer under acc (the highest log-likelihood) and under
    acc_mutual_info (the highest log-likelihood minus the choice's unconditional one)."""
    details = json.loads((build_dir / "metrics.json").read_text())["zeroshot"]["tasks"]
    unconditional = {(t["task"], model): np.array(u) for t in details
                     for model, u in t["unconditional"].items()}
    rows = [json.loads(x) for x in (build_dir / "zeroshot_scores.jsonl").read_text().splitlines()]
    return {(r["task"], r["model"], r["id"]): (
        int(np.argmax(r["loglikelihoods"])),
        int(np.argmax(np.array(r["loglikelihoods"]) - unconditional[r["task"], r["model"]])))
        for r in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domain", default="legal")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--build", required=True, help="an fp32 evaluate build: evaluate/KEY")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--docs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--fp32", action="store_true", help="also run the stage in fp32 here")
    args = parser.parse_args()
    config = domains.get(args.domain).resolve(args.profile).evaluate
    manifest = json.loads((args.store / args.build / "manifest.json").read_text())
    inputs = _artifacts(args.store, [f"{s}/{k}" for s, k in manifest["inputs"].items()])
    fast = speed(config, inputs, args.docs, args.rounds)
    print(f"speed, adapted model, {args.docs} test documents, {args.rounds} rounds A B: fp32 "
          f"{fast['fp32']['median']:.1f} s (min {fast['fp32']['min']:.1f}), bf16 "
          f"{fast['bf16']['median']:.1f} s (min {fast['bf16']['min']:.1f}); bf16/fp32 = "
          f"{fast['ratio_median']:.2f}; largest relative NLL difference of a document "
          f"{fast['max_rel_nll_diff']:.2e}", flush=True)
    reference = args.store / args.build
    ref_metrics = json.loads((reference / "metrics.json").read_text())
    if args.fp32:
        seconds, ref_metrics = build(config.model_copy(update={"precision": "fp32"}), inputs,
                                     args.out / "evaluate" / "fp32")
        reference = args.out / "evaluate" / "fp32"
        print(f"stage, fp32: {seconds:.0f} s", flush=True)
    seconds, bf16 = build(config.model_copy(update={"precision": "bf16"}), inputs,
                          args.out / "evaluate" / "bf16")
    print(f"stage, bf16: {seconds:.0f} s; scoring: {bf16['scoring']}", flush=True)
    print(f"{'figure':42} {'fp32':>10} {'bf16':>10} {'bf16-fp32':>10}")
    for name in FIGURES:
        a, b = ref_metrics["metrics"].get(name), bf16["metrics"].get(name)
        if a is not None and b is not None:
            print(f"{name:42} {a:10.5f} {b:10.5f} {b - a:+10.5f}")
    print(f"zero-shot rule: fp32 {ref_metrics['zeroshot']['rule']}, "
          f"bf16 {bf16['zeroshot']['rule']}")
    old, new = answers(reference), answers(args.out / "evaluate" / "bf16")
    for i, rule in enumerate(("acc", "acc_mutual_info")):
        per = {m: sum(old[k][i] != new[k][i] for k in old if k[1] == m)
               for m in sorted({k[1] for k in old})}
        print(f"zero-shot answers under {rule} that differ: {sum(per.values())} of {len(old)} "
              f"({', '.join(f'{m} {n}' for m, n in per.items())})")
    print(f"verdict, fp32: {ref_metrics['verdict']['text']}")
    print(f"verdict, bf16: {bf16['verdict']['text']}")


if __name__ == "__main__":
    main()
