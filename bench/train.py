"""Training throughput: our DeepSpeed pretrain stage vs a plain PyTorch loop vs HF Trainer.

    .venv/bin/python -m bench.train [--steps 100] [--profile tiny]

Same model (the profile's Llama config and the domain tokenizer), same packed sequences in the
same order, same micro-batch, AdamW, fp32 on CPU. Tokens/s is measured after ``--warmup``
steps, inside each trainer's step loop, so start-up (imports, DeepSpeed's launcher) is not
counted; the stage's start-up is printed separately. Goal: the stage >= 0.95 of the plain loop.
Not a test: timings vary with the machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch
import yaml

from pipeline import domains, samples
from pipeline.runner import Session
from pipeline.train.packing import TokenBatches
from pipeline.train.worker import llama_config


def plain_loop(spec: dict, data: TokenBatches, steps: int, warmup: int) -> float:
    cfg = spec["config"]
    torch.manual_seed(cfg["seed"])
    model = llama_config(cfg["model"], vocab_size=spec["vocab_size"], seq_len=cfg["seq_len"],
                         eos_id=spec["eos_id"], pad_id=spec["pad_id"])
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(model)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], betas=(0.9, 0.95),
                            weight_decay=cfg["weight_decay"])
    micro = cfg["micro_batch_size"]
    for step in range(steps):
        if step == warmup:
            start = time.perf_counter()
        x = torch.from_numpy(data.batch(data.sequence_ids(step * micro, micro)))
        model(input_ids=x, labels=x).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        opt.step()
        opt.zero_grad(set_to_none=True)
    return (steps - warmup) * micro * cfg["seq_len"] / (time.perf_counter() - start)


def hf_trainer(spec: dict, data: TokenBatches, steps: int, warmup: int, out: Path) -> float:
    from transformers import LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments

    cfg = spec["config"]
    torch.manual_seed(cfg["seed"])
    model = LlamaForCausalLM(llama_config(
        cfg["model"], vocab_size=spec["vocab_size"], seq_len=cfg["seq_len"],
        eos_id=spec["eos_id"], pad_id=spec["pad_id"]))
    micro = cfg["micro_batch_size"]
    order = data.sequence_ids(0, steps * micro)

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
        learning_rate=cfg["lr"], weight_decay=cfg["weight_decay"], adam_beta2=0.95,
        max_grad_norm=cfg["grad_clip"], lr_scheduler_type="cosine", report_to=[],
        save_strategy="no", logging_strategy="no", dataloader_drop_last=True,
        use_cpu=True, seed=cfg["seed"])
    Trainer(model=model, args=args, train_dataset=Sequences(),
            callbacks=[Clock()]).train()
    return (steps - warmup) * micro * cfg["seq_len"] / (times[-1] - times[warmup - 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domain", default="medical")
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="dapt-bench-train-"))
    try:
        samples.build(args.domain, root / "samples")
        doc = domains.get(args.domain).spec.model_dump(exclude_none=True)
        doc["profiles"].setdefault(args.profile, {}).setdefault("pretrain", {}).update(
            max_steps=args.steps, warmup_steps=args.warmup, log_every=args.warmup,
            checkpoint_every=10 * args.steps)
        path = root / "domain.yaml"  # ${samples} resolves to root/samples
        path.write_text(yaml.safe_dump(doc))
        session = Session.open(None, args.profile, workdir=root, domain_file=path)
        t0 = time.perf_counter()
        session.run_stage("pretrain")
        stage_wall = time.perf_counter() - t0
        art = session.artifacts["pretrain"]
        spec = json.loads((art.path / "spec.json").read_text())
        records = [json.loads(r) for r in (art.path / "metrics.jsonl").read_text().splitlines()]
        timed = [r for r in records if r["step"] > args.warmup]
        stage = sum(r["tokens_per_s"] for r in timed) / len(timed)
        data = TokenBatches(art.path / "data", "train", spec["config"]["seed"])
        plain = plain_loop(spec, data, args.steps, args.warmup)
        trainer = hf_trainer(spec, data, args.steps, args.warmup, root / "trainer")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    train_s = (args.steps - args.warmup) * spec["config"]["micro_batch_size"] * \
        spec["config"]["seq_len"] / stage
    print(f"{args.domain}/{args.profile}, {args.steps} steps x "
          f"{spec['config']['micro_batch_size']} x {spec['config']['seq_len']} tokens, fp32 CPU")
    print(f"plain PyTorch loop : {plain:8.0f} tokens/s")
    print(f"HF Trainer         : {trainer:8.0f} tokens/s  ({trainer / plain:.3f} of plain)")
    print(f"dapt stage (DS)    : {stage:8.0f} tokens/s  ({stage / plain:.3f} of plain; "
          "goal >= 0.95)")
    print(f"stage wall time {stage_wall:.1f} s of which training ~{train_s:.1f} s "
          "(the rest: packing, launcher, imports, checkpoint, export)")


if __name__ == "__main__":
    main()
