"""What the linear probe (``finetune.method: probe``) costs on SmolLM2-135M: feature-extraction
tokens/s and the wall time of the finetune stage's probe path for one real task and one model.

    .venv/bin/python -m bench.probe [--domain medical] [--task organ_system]
        [--max-train 1000] [--max-test 500] [--seq 64] [--seeds 0 1 2] [--workdir DIR]

The base model is prepared (dequantised, about 25 s) into ``DIR/artifacts`` on first use and
scored as the "adapted" model alone, so the figures are per model: a run with base, control and
adapted pays the extraction three times. Not a test: it reads the real 135M model.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from transformers import AutoTokenizer

from pipeline import domains, samples
from pipeline.config import FinetuneConfig
from pipeline.engine.artifacts import ArtifactStore
from pipeline.stages.finetune import stage as finetune
from pipeline.stages.models import stage as models


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--domain", default="medical")
    ap.add_argument("--task", default="organ_system")
    ap.add_argument("--max-train", type=int, default=1000)
    ap.add_argument("--max-test", type=int, default=500)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/dapt-bench-probe"))
    ap.add_argument("--project-train", type=int, default=None,
                    help="also count (tokenize only) the tokens of this max_train_examples")
    ap.add_argument("--project-test", type=int, default=None)
    args = ap.parse_args()

    spec = domains.get(args.domain).spec
    task = next(t for t in spec.finetune["tasks"] if t["name"] == args.task)
    sample_root = args.workdir / "samples"
    path = Path(task["path"].replace("${samples}", str(sample_root)))
    if not path.exists():
        samples.build(args.domain, sample_root)
    config = FinetuneConfig.model_validate({
        "tasks": [{**task, "path": str(path)}], "method": "probe", "seeds": args.seeds,
        "max_train_examples": args.max_train, "max_test_examples": args.max_test,
        "max_seq_len": args.seq, "probe": {"batch_size": args.batch_size}})
    start = time.perf_counter()
    art = models.prepare("smollm2-135m", ArtifactStore(args.workdir / "artifacts"))
    prepared = time.perf_counter() - start
    out = args.workdir / "out"
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    manifest = finetune.run(config, {"pretrain": SimpleNamespace(path=models.hf_dir(art).parent)},
                            out)
    wall = time.perf_counter() - start
    result = manifest.extra["tasks"][args.task]
    projected = {}
    if args.project_train:
        big = config.model_copy(update={"max_train_examples": args.project_train,
                                        "max_test_examples": args.project_test or args.max_test})
        data, _ = finetune.prepare_task(big.tasks[0], big)
        rows = sorted(set().union(*data.splits.values()))
        tok = AutoTokenizer.from_pretrained(models.hf_dir(art))
        ids = tok([data.texts[i] for i in rows], truncation=True, max_length=args.seq)
        projected = {"examples": len(rows), "tokens": sum(len(x) for x in ids["input_ids"]),
                     **{f"{s}_examples": len(r) for s, r in data.splits.items()}}
    feats = result["features"]["adapted"]
    print(json.dumps({
        "task": f"{args.domain}/{args.task}", "counts": result["counts"], "seq": args.seq,
        "seeds": args.seeds, "torch_threads": torch.get_num_threads(),
        "prepare_s": round(prepared, 1), "probe_wall_s": round(wall, 1),
        "extract_s": round(feats["seconds"], 1), "fit_s": round(wall - feats["seconds"], 1),
        "extract_cpu_s": round(feats["cpu_seconds"], 1),
        "examples": feats["examples"], "tokens": feats["tokens"],
        "tokens_per_s": round(feats["tokens_per_s"], 1),
        "tokens_per_cpu_s": round(feats["tokens"] / feats["cpu_seconds"], 1),
        "projected": projected,
        "macro_f1": round(manifest.metrics["macro_f1"], 4),
        "macro_f1_std": round(manifest.metrics["macro_f1_std"], 4),
        "majority_rate": round(manifest.metrics["majority_rate"], 4),
        "chosen_c": [r["c"] for r in result["adapted"]["runs"]],
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }, indent=1))


if __name__ == "__main__":
    main()
