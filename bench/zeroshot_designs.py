"""Zero-shot task designs on a built run's models, scored on finetune's *validation* rows only:
does a different verbalisation of the classes, or k in-context examples, lift the models above
the majority-class rate (the question before any adapted-vs-control comparison can mean much)?

    .venv/bin/python -m bench.zeroshot_designs --domain medical --profile cpu \\
        --store /work/runs/lg/artifacts --build evaluate/KEY --examples 100 \\
        --design as-is --design short --design 5-shot

``--build`` names an evaluate build in ``--store``; its manifest gives the finetune artifact and
the models (base, control, adapted: the first seed's). Designs:

- ``as-is``: the stage's prompt and class names (``zeroshot.tasks_of``);
- ``short``: the class names with ``--strip`` patterns removed (default: a trailing
  parenthesised code range such as ``(A00-B99)`` and a leading ``Abnormality of (the)``);
- ``K-shot``: the stage's prompt after K solved examples (fixed for every question: the first
  validation rows after the scored ones, one per class until K), as lm-eval's ``num_fewshot``
  with a ``first_n`` sampler would build them.

For each design it prints every model's accuracy per task under the three rules and the rule
the stage would choose (the best mean over the models), beside each task's majority-class rate
on the same rows. Test rows are never read. Not a test: it scores the real 135M models (about a
minute per model and design for 100 rows per task on 2 cores, a few minutes with shots).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import torch

from bench.evaluate_memo import _artifacts, build_parser
from pipeline import domains
from pipeline.stages.evaluate import zeroshot as zs
from pipeline.stages.evaluate import zeroshot_rules as rules
from pipeline.stages.evaluate.stage import Inputs
from pipeline.stages.finetune.output import FinetuneOutput

STRIP = [r"\s*\([A-Z0-9]{3}-[A-Z0-9]{3}\)$", r"^Abnormality of (the )?"]


def design_tasks(pool: list[zs.ZeroShotTask], n: int, design: str, strip: list[str]
                 ) -> list[zs.ZeroShotTask]:
    """The first ``n`` validation rows of each task as ``design`` asks them."""
    shots = int(design.split("-")[0]) if design.endswith("-shot") else 0
    out = []
    for t in pool:
        choices = list(t.choices)
        if design == "short":
            for pattern in strip:
                choices = [re.sub(pattern, "", c) for c in choices]
        seen: set[int] = set()
        demos = []
        for q, g in zip(t.queries[n:], t.gold[n:], strict=True):
            if g not in seen and len(demos) < shots:
                seen.add(g)
                demos.append(f"{q}{zs.TARGET_DELIMITER}{choices[g]}\n\n")
        prefix = "".join(demos)
        out.append(zs.ZeroShotTask(t.name, choices, t.ids[:n], [prefix + q for q in t.queries[:n]],
                                   t.gold[:n]))
    return out


def main() -> None:
    parser = build_parser(__doc__)
    parser.add_argument("--examples", type=int, default=100, help="validation rows per task")
    parser.add_argument("--design", action="append", default=None,
                        help="as-is, short or K-shot (repeatable; default: all three, 5-shot)")
    parser.add_argument("--strip", action="append", default=None,
                        help="a regex removed from each class name by the short design")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    args = parser.parse_args()
    built = _artifacts(args.store, [args.build])["evaluate"]
    inputs = _artifacts(args.store, [f"{s}/{k}" for s, k in built.manifest.inputs.items()
                                     if s in ("finetune", "models", "control", "pretrain",
                                              "ingest", "tokenizer")])
    dirs = Inputs.of(inputs).model_dirs()
    config = domains.get(args.domain).resolve(args.profile).evaluate.model_copy(
        update={"zeroshot_rule_examples": args.examples + 200})
    pool = zs.tasks_of(FinetuneOutput(inputs["finetune"]), config, "validation")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results = {}
    for design in args.design or ["as-is", "short", "5-shot"]:
        tasks = design_tasks(pool, args.examples, design, args.strip or STRIP)
        per: dict[str, dict[str, dict[str, float]]] = {}
        for model, path in dirs.items():
            start = time.perf_counter()
            s = zs._score_model(path, tasks, [], config.batch_size, model, device)
            per[model] = {t.name: {k: float(v.mean()) for k, v in
                                   zs.judge(s.test[t.name], t, s.unconditional[t.name]).items()}
                          for t in tasks}
            print(f"{design} {model} ({time.perf_counter() - start:.0f} s): "
                  f"{json.dumps(per[model])}", flush=True)
        chosen = max(rules.RULES, key=lambda r: np.mean([x[r] for m in per.values()
                                                         for x in m.values()]))
        rates = rules.majority_rates(tasks)  # the stage's own floor
        majority = {t.name: rates[f"zeroshot_{t.name}_majority_rate"] for t in tasks}
        results[design] = {"models": per, "rule": chosen, "majority": majority}
        print(f"{design}: rule {chosen}; majority {majority}; " + ", ".join(
            f"{m} {np.mean([x[chosen] for x in v.values()]):.3f}" for m, v in per.items()),
            flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
