"""Training throughput: our DeepSpeed pretrain stage vs a plain PyTorch loop vs HF Trainer.

    .venv/bin/python -m bench.train [--steps 100] [--profile tiny]
    .venv/bin/python -m bench.train --profile cpu --steps 12 --warmup 2 [--variants]

Same model (the profile's Llama config and the domain tokenizer, or with ``--profile cpu`` the
real SmolLM2-135M continued from its weights), same packed sequences in the same order, same
micro-batch and gradient accumulation, AdamW, fp32 on CPU. Tokens/s is measured after
``--warmup`` steps, inside each trainer's step loop, so start-up (imports, DeepSpeed's launcher)
is not counted; the stage's start-up is printed separately. Goal: the stage >= 0.95 of the plain
loop.

It also prints the achieved FLOP/s as a share of this CPU's fp32 matmul peak, measured in the
same run (the best of square fp32 matmuls of a few sizes, all threads). Training FLOPs per token
are ``6 * N + 12 * L * d * T`` (Kaplan et al. 2020 / PaLM appendix B: 6N for the forward and
backward matmuls of the N parameters, the tied LM head included, plus attention's QK^T and AV
over a T-token context, L layers of width d).

``--variants`` times the plain loop under changes that may help on a CPU (threads, eager vs
SDPA attention, micro-batch and sequence shape at the same tokens per step, foreach/fused AdamW,
a frozen tied embedding, torch.compile), each against the default loop in the same run.
Not a test: timings vary with the machine.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from pipeline import domains, samples
from pipeline.driver import Session
from pipeline.stages.pretrain.output import PretrainOutput
from pipeline.stages.pretrain.packing import TokenBatches
from pipeline.stages.pretrain.worker import llama_config
from pipeline.stages.pretrain.worker_io import WorkerSpec


def build_model(spec: WorkerSpec, attn: str = "sdpa") -> torch.nn.Module:
    from transformers import LlamaForCausalLM

    cfg = spec.config
    torch.manual_seed(cfg.seed)
    if spec.base_dir:  # continued pretraining: the real base model
        return LlamaForCausalLM.from_pretrained(spec.base_dir, dtype=torch.float32,
                                                attn_implementation=attn)
    config = llama_config(cfg.model, vocab_size=spec.vocab_size, seq_len=cfg.seq_len,
                          eos_id=spec.eos_id, pad_id=spec.pad_id)
    config._attn_implementation = attn
    return LlamaForCausalLM(config)


@dataclass(frozen=True)
class LoopTiming:
    """A plain loop's timed steps (after warmup)."""

    tokens_per_s: float
    step_s: float
    steps: int
    peak_memory_gb: float | None  # torch's allocator peak on a GPU; None on a CPU


def plain_loop(spec: WorkerSpec, data: TokenBatches, steps: int, warmup: int, *,
               micro: int | None = None, seq_len: int | None = None, attn: str = "sdpa",
               adamw: str = "default", freeze_embedding: bool = False,
               compile_model: bool = False, device: str = "cpu", bf16: bool = False,
               seconds: float | None = None) -> LoopTiming:
    """A plain PyTorch loop on the stage's batches: AdamW, clipping, accumulation. ``bf16``:
    autocast to bfloat16 over fp32 weights (the usual mixed-precision loop). ``seconds``: stop
    once the timed steps (after ``warmup``) took that long, or at ``steps``."""
    cfg = spec.config
    model = build_model(spec, attn).to(device)
    if freeze_embedding:
        model.get_input_embeddings().requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    kwargs = {"foreach": True} if adamw == "foreach" else {"fused": True} if adamw == "fused" \
        else {}
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95),
                            weight_decay=cfg.weight_decay, **kwargs)
    forward = torch.compile(model) if compile_model else model
    micro = micro or cfg.micro_batch_size
    accum = cfg.grad_accum_steps * cfg.micro_batch_size // micro  # same tokens per step
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16)
    g = timed = 0
    for step in range(steps):
        if step == warmup:
            if cuda:
                torch.cuda.synchronize(device)
            start = time.perf_counter()
        for _ in range(accum):
            x = torch.from_numpy(data.batch(data.sequence_ids(g * micro, micro))).to(device)
            if seq_len and seq_len != x.shape[1]:  # same tokens, other shape
                x = x.reshape(-1, seq_len)
            with autocast:
                loss = forward(input_ids=x, labels=x).loss
            (loss / accum).backward()
            g += 1
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= warmup:
            timed += 1
            if seconds is not None:
                if cuda:
                    torch.cuda.synchronize(device)
                if time.perf_counter() - start >= seconds:
                    break
    if cuda:
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
    tokens = timed * accum * micro * cfg.seq_len
    return LoopTiming(tokens / elapsed, elapsed / timed, timed, peak)


def stage_rate(curve: list[dict], warmup: int) -> float:
    """The stage's tokens/s over the steps after ``warmup``, from its ``metrics.jsonl`` records
    (each covers the steps since the one before): tokens over the summed record times."""
    timed = [r for r in curve if r["step"] > warmup]
    if not timed:
        raise ValueError(f"no logged step after the {warmup} warmup steps to time")
    per_step = timed[0]["tokens"] / timed[0]["step"]
    steps = [b["step"] - a["step"] for a, b in zip([{"step": warmup}, *timed], timed,
                                                    strict=False)]
    seconds = sum(n * per_step / r["tokens_per_s"] for n, r in zip(steps, timed, strict=True))
    return sum(steps) * per_step / seconds


def matmul_peak(sizes: tuple[int, ...] = (1024, 2048, 3072), repeats: int = 5) -> float:
    """This CPU's fp32 matmul FLOP/s: the best of square matmuls of a few sizes."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b  # warm up
        t0 = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = max(best, 2 * n ** 3 * repeats / (time.perf_counter() - t0))
    return best


def flops_per_token(spec: WorkerSpec, n_params: int) -> float:
    """``6 N + 12 L d T`` (see the module docstring)."""
    from transformers import AutoConfig

    c = spec.config
    if spec.base_dir:
        hf = AutoConfig.from_pretrained(spec.base_dir)
        layers, width = hf.num_hidden_layers, hf.hidden_size
    else:
        layers, width = c.model.num_layers, c.model.hidden_size
    return 6 * n_params + 12 * layers * width * c.seq_len


def hf_trainer(spec: WorkerSpec, data: TokenBatches, steps: int, warmup: int, out: Path
               ) -> float:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    cfg = spec.config
    model = build_model(spec)
    micro, accum = cfg.micro_batch_size, cfg.grad_accum_steps
    order = data.sequence_ids(0, steps * micro * accum)

    class Sequences(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(order)

        def __getitem__(self, i: int) -> dict:
            x = torch.from_numpy(data.batch([order[i]])[0])
            return {"input_ids": x, "labels": x}

    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001, ANN003
            times.append(time.perf_counter())

    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=micro, max_steps=steps,
        gradient_accumulation_steps=accum,
        learning_rate=cfg.lr, weight_decay=cfg.weight_decay, adam_beta2=0.95,
        max_grad_norm=cfg.grad_clip, lr_scheduler_type="cosine", report_to=[],
        save_strategy="no", logging_strategy="no", dataloader_drop_last=True,
        use_cpu=True, seed=cfg.seed)
    Trainer(model=model, args=args, train_dataset=Sequences(),
            callbacks=[Clock()]).train()
    return (steps - warmup) * micro * accum * cfg.seq_len / (times[-1] - times[warmup - 1])


VARIANTS: dict[str, dict] = {
    "default (sdpa, AdamW default impl)": {},
    "eager attention": {"attn": "eager"},
    "foreach AdamW": {"adamw": "foreach"},
    "fused AdamW": {"adamw": "fused"},
    "frozen tied embedding": {"freeze_embedding": True},
    "half the micro-batch, 2x accumulation": {"micro": "half"},
    "sequences of 128 (same tokens per step)": {"seq_len": 128},
    "torch.compile": {"compile_model": True},
}


def variants(spec: WorkerSpec, data: TokenBatches, steps: int, warmup: int,
             skip: tuple[str, ...] = ()) -> None:
    """Each variant against the default loop, same run; then 1 vs all threads."""
    rows = []
    for name, kw in VARIANTS.items():
        if name in skip:
            continue
        kw = dict(kw)
        if kw.get("micro") == "half":
            kw["micro"] = max(1, spec.config.micro_batch_size // 2)
        try:
            rows.append((name, plain_loop(spec, data, steps, warmup, **kw).tokens_per_s))
        except Exception as exc:  # a variant that does not run here is a result too
            rows.append((name, f"failed: {type(exc).__name__}: {str(exc)[:120]}"))
        print(f"variant {name}: {rows[-1][1]}", flush=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows.append((f"1 thread (of {threads})",
                 plain_loop(spec, data, steps, warmup).tokens_per_s))
    torch.set_num_threads(threads)
    base = rows[0][1]
    print("\nvariants of the plain loop (same batches; tokens/s, ratio to the default):")
    for name, value in rows:
        shown = f"{value:8.1f} tokens/s  ({value / base:.3f})" if isinstance(value, float) \
            else value
        print(f"  {name:<40} {shown}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domain", default="medical")
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--variants", action="store_true",
                        help="Also time the plain loop under CPU-specific variants.")
    parser.add_argument("--no-trainer", action="store_true", help="Skip the HF Trainer row.")
    parser.add_argument("--no-compile", action="store_true",
                        help="Skip the torch.compile variant (its compile takes minutes here).")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="dapt-bench-train-"))
    try:
        for name in dict.fromkeys([args.domain, "general"]):  # the replayed news too
            samples.build(name, root / "samples")
        doc = domains.get(args.domain).spec.model_dump(exclude_none=True)
        # Training throughput does not depend on PII: skip the NER types (minutes of ingest).
        pii = doc["ingest"].setdefault("pii", {})
        pii["types"] = [t for t in pii.get("types", ["email", "phone", "ip", "credit_card",
                                                     "iban", "ssn"])
                        if t not in ("person", "location")]
        doc["profiles"].setdefault(args.profile, {}).setdefault("pretrain", {}).update(
            max_steps=args.steps, warmup_steps=args.warmup, log_every=1, eval_every=0,
            select_checkpoint=False, control=False, checkpoint_every=10 * args.steps)
        path = root / "domain.yaml"  # ${samples} resolves to root/samples
        path.write_text(yaml.safe_dump(doc))
        session = Session.open(None, args.profile, workdir=root, domain_file=path)
        t0 = time.perf_counter()
        session.run_stage("pretrain")
        stage_wall = time.perf_counter() - t0
        art = session.artifacts["pretrain"]
        out = PretrainOutput(art.path)
        spec = out.spec
        stage = stage_rate(out.curve(), args.warmup)
        data = TokenBatches(art.path / "data", "train", spec.config.seed)
        plain = plain_loop(spec, data, args.steps, args.warmup).tokens_per_s
        print(f"stage {stage:.1f} tokens/s, plain loop {plain:.1f} tokens/s", flush=True)
        trainer = None if args.no_trainer else hf_trainer(spec, data, args.steps, args.warmup,
                                                          root / "trainer")
        peak = matmul_peak()
        n_params = out.summary.params
        flops = flops_per_token(spec, n_params)
        if args.variants:
            variants(spec, data, args.steps, args.warmup,
                     skip=("torch.compile",) if args.no_compile else ())
    finally:
        shutil.rmtree(root, ignore_errors=True)
    c = spec.config
    tokens_per_step = c.micro_batch_size * c.grad_accum_steps * c.seq_len
    train_s = (args.steps - args.warmup) * tokens_per_step / stage
    print(f"\n{args.domain}/{args.profile}, {args.steps} steps x {c.micro_batch_size} x "
          f"{c.grad_accum_steps} accumulation x {c.seq_len} tokens, fp32 CPU, "
          f"{torch.get_num_threads()} threads")
    print(f"plain PyTorch loop : {plain:8.1f} tokens/s")
    if trainer is not None:
        print(f"HF Trainer         : {trainer:8.1f} tokens/s  ({trainer / plain:.3f} of plain)")
    print(f"dapt stage (DS)    : {stage:8.1f} tokens/s  ({stage / plain:.3f} of plain; "
          "goal >= 0.95)")
    print(f"fp32 matmul peak   : {peak / 1e9:8.1f} GFLOP/s (measured now)")
    print(f"model FLOPs/token  : {flops / 1e9:8.3f} GFLOP (6 N + 12 L d T, N = "
          f"{n_params:,})")
    print(f"achieved           : stage {stage * flops / 1e9:.1f} GFLOP/s = "
          f"{stage * flops / peak:.1%} of peak; plain {plain * flops / peak:.1%}")
    print(f"stage wall time {stage_wall:.1f} s of which training ~{train_s:.1f} s "
          "(the rest: packing, launcher, imports, checkpoint, export)")


if __name__ == "__main__":
    main()
