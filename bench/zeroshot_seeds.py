"""The evaluate stage's zero-shot part over training seeds, on the models of a built seed study:
``stage.zero_shot`` (``zeroshot.evaluate`` for the first seed's base, control and adapted
model, then ``zeroshot_seeds.over_seeds`` for the other seeds of both arms), without scoring
the held-out text again.

    .venv/bin/python -m bench.zeroshot_seeds --domain legal --profile cpu \\
        --store /work/runs/lg/artifacts --build evaluate/KEY --out /work/runs/zss/legal

``--build`` names an evaluate build in ``--store`` whose inputs hold every seed's models
(``pretrain[seed1]``, ``control[seed1]``, ...: a run with ``--seeds N``); its manifest gives
the finetune artifact (the tasks' test and validation rows) and the models. The config is the
domain's profile's evaluate section (zero-shot on, whatever the study ran with). It writes
what the stage writes for zero-shot (``zeroshot_scores.jsonl``, ``zeroshot_seed_scores.jsonl``,
``memo/``, the lm-eval export) and ``zeroshot_seeds.json`` (metrics and the per-seed table)
under ``--out/evaluate/build``, and prints the verdict's zero-shot words. Not a test: it scores
the real 135M models (2-7 minutes per model on 2 cores, by the domain's tasks).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from bench.evaluate_memo import build_inputs, build_parser
from pipeline import domains
from pipeline.stages.evaluate import stage as evaluate
from pipeline.stages.evaluate import zeroshot_seeds
from pipeline.stages.evaluate.memo import Memo


def main() -> None:
    parser = build_parser(__doc__)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    config = domains.get(args.domain).resolve(args.profile).evaluate.model_copy(
        update={"zeroshot": True})
    given = evaluate.Inputs.of(build_inputs(args.store, args.build))
    out_dir = args.out / "evaluate" / "build"
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    metrics, details = evaluate.zero_shot(config, given, out_dir, Memo(out_dir))
    seconds = time.perf_counter() - start
    words = zeroshot_seeds.verdict_text(
        {**metrics, "train_seeds": float(len(details["seeds"]["rows"]))})
    (out_dir / "zeroshot_seeds.json").write_text(json.dumps(
        {"metrics": metrics, "seeds": details["seeds"], "rule_choice": details["rule_choice"],
         "seconds": seconds, "verdict": words}, indent=1))
    print(f"{args.domain}: {seconds:.0f} s; {words}", flush=True)
    for row in details["seeds"]["rows"]:
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
