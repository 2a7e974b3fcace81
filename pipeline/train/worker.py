"""One training rank, started by DeepSpeed's launcher from the pretrain stage.

``python -m deepspeed.launcher.runner --num_gpus N --module pipeline.train.worker --spec SPEC``

Reads the spec written by ``pretrain.py``, builds a Llama-style model, trains it through a
DeepSpeed engine on the packed token stream, logs to ``metrics.jsonl``, checkpoints every
``checkpoint_every`` steps (keeping the newest ``keep_checkpoints``) and on SIGTERM/SIGINT, and
exports ``hf/`` with safetensors and the tokenizer.

Resume: when ``checkpoint/latest`` exists (the artifact store hands a killed build's directory
back to the next build of the same key), the engine reloads model, optimizer and scheduler, and
the client state restores the step, the partly filled loss window and the RNG. Batch ``g`` (a
global micro-batch index) is a pure function of the seed and ``g``, so the resumed run sees
exactly the batches an uninterrupted one would have: on CPU fp32 the loss curve is bitwise equal.
A non-finite loss stops the run naming the step and the last good checkpoint.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator
from tokenizers import Tokenizer
from transformers import LlamaConfig, LlamaForCausalLM

from pipeline.train.packing import TokenBatches
from pipeline.train.vocab import init_new_embeddings


def llama_config(model: dict[str, Any], *, vocab_size: int, seq_len: int, eos_id: int,
                 pad_id: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=model["hidden_size"],
        intermediate_size=model["intermediate_size"],
        num_hidden_layers=model["num_layers"],
        num_attention_heads=model["num_heads"],
        num_key_value_heads=model["num_heads"],
        max_position_embeddings=seq_len,
        tie_word_embeddings=model["tie_embeddings"],
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        attn_implementation="sdpa",
    )


@torch.no_grad()
def full_grad_norm(model: torch.nn.Module) -> float:
    """L2 norm of all gradients before clipping (valid where grads are not partitioned)."""
    norms = [p.grad.detach().float().norm() for p in model.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(norms)).item() if norms else 0.0


@torch.no_grad()
def held_out_loss(engine: Any, data: TokenBatches, max_seqs: int, micro: int, device: Any
                  ) -> float:
    engine.eval()
    total, n = 0.0, 0
    ids = list(range(min(max_seqs, data.num_seqs)))
    for i in range(0, len(ids), micro):
        x = torch.from_numpy(data.batch(ids[i:i + micro])).to(device)
        total += engine(input_ids=x, labels=x).loss.float().item() * len(x)
        n += len(x)
    engine.train()
    return total / n if n else float("nan")


def param_digest(engine: Any) -> str:
    h = hashlib.sha256()
    for p in engine.module.parameters():
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def save(engine: Any, ckpt_dir: Path, step: int, window: list[float], keep: int,
         rank: int) -> None:
    client = {"step": step, "window": list(window), "torch_rng": torch.get_rng_state()}
    engine.save_checkpoint(str(ckpt_dir), tag=f"global_step{step}", client_state=client)
    if rank == 0:
        tags = sorted(ckpt_dir.glob("global_step*"), key=lambda p: int(p.name[11:]))
        for old in tags[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spec", required=True)
    parser.add_argument("--local_rank", type=int, default=0)  # set by the launcher
    args = parser.parse_args()
    spec = json.loads(Path(args.spec).read_text())
    cfg, out_dir = spec["config"], Path(spec["out_dir"])

    accel = get_accelerator()
    deepspeed.init_distributed(dist_backend=accel.communication_backend_name())
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(accel.device_name(accel.current_device()))
    torch.manual_seed(cfg["seed"])
    seq_len, micro, accum = cfg["seq_len"], cfg["micro_batch_size"], cfg["grad_accum_steps"]

    new_embeddings = 0
    if spec.get("base_dir"):  # continued pretraining
        model = LlamaForCausalLM.from_pretrained(spec["base_dir"], torch_dtype=torch.float32,
                                                 attn_implementation="sdpa")
        if spec.get("base_tokenizer_dir"):  # extended vocabulary: new rows = mean of pieces
            base_tok, tok = (Tokenizer.from_file(str(Path(spec[k]) / "tokenizer.json"))
                             for k in ("base_tokenizer_dir", "tokenizer_dir"))
            new_embeddings = init_new_embeddings(model, base_tok, tok)
    else:
        model = LlamaForCausalLM(llama_config(
            cfg["model"], vocab_size=spec["vocab_size"], seq_len=seq_len,
            eos_id=spec["eos_id"], pad_id=spec["pad_id"]))
    n_params = sum(p.numel() for p in model.parameters())
    if cfg["activation_checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ds_config = spec["ds_config"]
    board = ds_config.get("tensorboard", {})
    if board.get("enabled") and not Path(board.get("output_path") or ".").is_absolute():
        board["output_path"] = str(out_dir / (board.get("output_path") or "tensorboard"))
    engine, _, _, scheduler = deepspeed.initialize(
        model=model, model_parameters=model.parameters(), config=ds_config)

    train = TokenBatches(out_dir / "data", "train", cfg["seed"])
    held = TokenBatches(out_dir / "data", "eval", cfg["seed"])
    general = TokenBatches(out_dir / "data", "eval_general", cfg["seed"]) \
        if spec.get("general_eval") else None
    metrics_path, ckpt_dir = out_dir / "metrics.jsonl", out_dir / "checkpoint"
    tokens_per_step = micro * accum * world * seq_len
    window: list[float] = []
    first = 1
    if (ckpt_dir / "latest").exists():
        _, client = engine.load_checkpoint(str(ckpt_dir))
        first, window = client["step"] + 1, client["window"]
        torch.set_rng_state(client["torch_rng"])
        if rank == 0 and metrics_path.exists():  # drop records logged after the checkpoint
            kept = [r for r in metrics_path.read_text().splitlines()
                    if json.loads(r)["step"] < first]
            metrics_path.write_text("".join(r + "\n" for r in kept))
        print(f"[dapt] resumed from checkpoint at step {first - 1}", flush=True)

    stop: list[int] = []  # the signal that asked us to stop, once one arrives
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda s, _f: stop.append(s))
    g = (first - 1) * accum  # global micro-batch index
    start = last = time.perf_counter()
    grad_norm = float("nan")
    for step in range(first, cfg["max_steps"] + 1):
        for _ in range(accum):
            ids = train.sequence_ids(g * micro * world + rank * micro, micro)
            x = torch.from_numpy(train.batch(ids)).to(device)
            loss = engine(input_ids=x, labels=x).loss
            value = loss.detach().float().item()
            if not math.isfinite(value):
                latest = ckpt_dir / "latest"
                raise FloatingPointError(
                    f"non-finite training loss {value} at step {step}; last good checkpoint: "
                    + (latest.read_text().strip() if latest.exists() else "none")
                    + f" in {ckpt_dir}")
            engine.backward(loss)
            if engine.is_gradient_accumulation_boundary() and cfg["zero_stage"] == 0:
                grad_norm = full_grad_norm(engine.module)  # ZeRO-0 does not track it
            engine.step()
            window.append(value)
            g += 1
        if step % cfg["log_every"] == 0 or step == cfg["max_steps"]:
            mean = torch.tensor([sum(window) / len(window)], device=device)
            dist.all_reduce(mean)
            mean_loss = mean.item() / world
            window.clear()
            now = time.perf_counter()
            record = {
                "step": step, "loss": mean_loss, "lr": scheduler.get_last_lr()[0],
                "grad_norm": float(grad_norm if cfg["zero_stage"] == 0
                                   else engine.get_global_grad_norm()),
                "tokens_per_s": tokens_per_step * cfg["log_every"] / max(now - last, 1e-9),
                "tokens": step * tokens_per_step,
            }
            if cfg["eval_every"] and step % cfg["eval_every"] == 0:
                record["heldout_loss"] = held_out_loss(engine, held, cfg["eval_max_seqs"],
                                                       micro, device)
                if general is not None:  # forgetting: loss on general text held out
                    record["general_loss"] = held_out_loss(engine, general, cfg["eval_max_seqs"],
                                                           micro, device)
            last = time.perf_counter()  # held-out evaluation is not training time
            if rank == 0:
                with open(metrics_path, "a") as fh:
                    fh.write(json.dumps(record) + "\n")
                if engine.monitor.enabled:  # TensorBoard, by optimizer step
                    engine.monitor.write_events([(f"dapt/{k}", v, step) for k, v in
                                                 record.items() if k != "step"])
                eta = (now - start) / (step - first + 1) * (cfg["max_steps"] - step)
                print(f"[dapt] step {step}/{cfg['max_steps']} loss {mean_loss:.4f} "
                      f"lr {record['lr']:.2e} {record['tokens_per_s']:.0f} tok/s "
                      f"eta {eta:.0f}s", flush=True)
        stopping = bool(stop)
        if step % cfg["checkpoint_every"] == 0 or step == cfg["max_steps"] or stopping:
            save(engine, ckpt_dir, step, window, cfg["keep_checkpoints"], rank)
        if stopping:
            print(f"[dapt] signal {stop[0]}: checkpoint saved at step {step}; rerun the same "
                  "command to resume", flush=True)
            raise SystemExit(128 + stop[0])
    elapsed = time.perf_counter() - start
    eval_loss = held_out_loss(engine, held, cfg["eval_max_seqs"], micro, device)
    general_loss = (held_out_loss(engine, general, cfg["eval_max_seqs"], micro, device)
                    if general is not None else None)
    # Data parallelism must leave every rank with the same weights (ZeRO-3 shards them instead).
    digests: list[str | None] = [None] * world
    dist.all_gather_object(digests, None if cfg["zero_stage"] == 3 else param_digest(engine))

    tag = f"global_step{cfg['max_steps']}"
    state = engine._zero3_consolidated_16bit_state_dict() if cfg["zero_stage"] == 3 else None
    if rank == 0:
        hf_dir = out_dir / "hf"
        if state is not None:
            export = LlamaForCausalLM(engine.module.config)
            export.load_state_dict(state)
        else:
            export = engine.module
        export.save_pretrained(hf_dir, safe_serialization=True)
        for pattern in ("tokenizer*", "special_tokens_map.json", "chat_template*"):
            for path in Path(spec["tokenizer_dir"]).glob(pattern):
                shutil.copy(path, hf_dir / path.name)
        (out_dir / "summary.json").write_text(json.dumps({
            "steps": cfg["max_steps"], "tokens_trained": cfg["max_steps"] * tokens_per_step,
            "params": n_params, "world_size": world,
            "final_train_loss": json.loads(metrics_path.read_text().splitlines()[-1])["loss"],
            "eval_loss": eval_loss, "eval_perplexity": math.exp(min(eval_loss, 50.0)),
            **({"general_eval_loss": general_loss} if general_loss is not None else {}),
            "new_embeddings": new_embeddings,
            "tokens_per_s": (cfg["max_steps"] - first + 1) * tokens_per_step / max(elapsed, 1e-9),
            "resumed_from_step": first - 1,
            "param_digests": digests,
            "checkpoint": f"checkpoint/{tag}",
        }, indent=2))
    dist.barrier()


if __name__ == "__main__":
    main()
