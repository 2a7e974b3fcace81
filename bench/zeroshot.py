"""Zero-shot scoring (pipeline/stages/evaluate/zeroshot.py) on SmolLM2-135M: the stage's native
scorer (the context's KV cache reused across choices) against lm-evaluation-harness's HF backend
on the same exported task, with the agreement of their accuracies and per-choice
log-likelihoods and the two timings.

    .venv/bin/python -m bench.zeroshot [--domain medical] [--task organ_system] [--examples 200]
        [--batch-size 8] [--max-chars 1000] [--workdir DIR]

The examples are the task's test split exactly as the finetune stage draws it (``split_rows``
with the default split seed and fractions, in hash order), the first ``--examples`` of them.
The base model is prepared (dequantised, about 25 s) into ``DIR/artifacts`` on first use. Both
scorers run in float32 on the CPU with the same batch size; lm-eval runs offline
(HF_DATASETS_OFFLINE=1) on the YAML and JSONL the stage writes. The export lists
``acc_mutual_info``, so lm-eval also scores each example's choices after an empty context
(twice the requests); the native timing includes the stage's unconditional terms (once per
task). Not a test: it reads the real 135M model.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline import domains, samples
from pipeline.config import EvaluateConfig, FinetuneConfig
from pipeline.engine.artifacts import ArtifactStore
from pipeline.stages.evaluate import zeroshot, zeroshot_rules
from pipeline.stages.finetune.stage import prepare_task
from pipeline.stages.models import stage as models


def _task(args: argparse.Namespace) -> zeroshot.ZeroShotTask:
    """The first ``--examples`` rows of the task's test split, as the stages see them."""
    tasks = FinetuneConfig.model_validate(domains.get(args.domain).spec.finetune).tasks
    task = next(t for t in tasks if t.name == args.task)  # (the domain's split defaults)
    sample_root = args.workdir / "samples"
    path = Path(task.path.replace("${samples}", str(sample_root)))
    if not path.exists():
        samples.build(args.domain, sample_root)
    config = FinetuneConfig(tasks=[task.model_copy(update={"path": str(path)})])
    data, _ = prepare_task(config.tasks[0], config)
    test = data.splits["test"][:args.examples]
    max_chars = EvaluateConfig(zeroshot_max_chars=args.max_chars).zeroshot_max_chars
    return zeroshot.ZeroShotTask(
        args.task, [zeroshot.readable(x) for x in data.label_names],
        [data.ids[i] for i in test],
        [zeroshot.prompt(data.texts[i], args.task, max_chars) for i in test],
        [data.labels[i] for i in test])


def _lm_eval(hf: Path, root: Path, task: zeroshot.ZeroShotTask, batch_size: int
             ) -> tuple[dict, list[dict], float]:
    """lm-eval's HF backend on the exported task; the time excludes loading the model (as the
    native timing does) but includes building the task from its JSONL (well under a second)."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    os.environ["HF_DATASETS_OFFLINE"] = "1"
    manager = TaskManager(include_path=str(root), include_defaults=False)
    lm = HFLM(pretrained=str(hf), dtype="float32", device="cpu", batch_size=batch_size)
    start = time.perf_counter()
    out = lm_eval.simple_evaluate(model=lm, tasks=[task.lm_eval_name], task_manager=manager,
                                  bootstrap_iters=0, log_samples=True)
    return out["results"][task.lm_eval_name], out["samples"][task.lm_eval_name], \
        time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--domain", default="medical")
    ap.add_argument("--task", default="organ_system")
    ap.add_argument("--examples", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-chars", type=int, default=1000)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/dapt-bench-zeroshot"))
    args = ap.parse_args()

    task = _task(args)
    hf = models.hf_dir(models.prepare("smollm2-135m", ArtifactStore(args.workdir / "artifacts")))
    root = args.workdir / "lm_eval"
    zeroshot.export(task, root)

    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(hf)
    start = time.perf_counter()
    ll = zeroshot.score_choices(model, tok, task.queries, task.choices, args.batch_size)
    unconditional = zeroshot_rules.unconditional_loglikelihoods(
        model, tok, [zeroshot.TARGET_DELIMITER + c for c in task.choices])
    native_s = time.perf_counter() - start
    judged = zeroshot.judge(ll, task, unconditional)
    del model

    results, logged, lm_eval_s = _lm_eval(hf, root, task, args.batch_size)
    by_id = {s["doc"]["id"]: [r[0][0] if isinstance(r[0], (list, tuple)) else r[0]
                              for r in s["resps"]] for s in logged}
    n = len(task.choices)  # then the n unconditional ones
    theirs = np.array([by_id[i][:n] for i in task.ids])
    theirs_unconditional = np.array([by_id[i][n:] for i in task.ids])
    acc = {k: float(v.mean()) for k, v in judged.items()}
    print(json.dumps({
        "task": f"{args.domain}/{args.task}", "examples": len(task.ids),
        "choices": len(task.choices), "batch_size": args.batch_size,
        "torch_threads": torch.get_num_threads(),
        "native": {"acc": acc["acc"], "acc_norm": acc["acc_norm"],
                   "acc_mutual_info": acc["acc_mutual_info"], "seconds": round(native_s, 1)},
        "lm_eval": {"acc": results["acc,none"], "acc_norm": results["acc_norm,none"],
                    "acc_mutual_info": results["acc_mutual_info,none"],
                    "seconds": round(lm_eval_s, 1)},
        "same_prediction_acc": float(np.mean(ll.argmax(1) == theirs.argmax(1))),
        "max_abs_loglikelihood_diff": float(np.abs(ll - theirs).max()),
        "max_abs_unconditional_diff": float(np.abs(unconditional - theirs_unconditional).max()),
        "speedup": round(lm_eval_s / native_s, 2),
    }, indent=2))


if __name__ == "__main__":
    main()
