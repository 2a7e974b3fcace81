"""One training rank, started by DeepSpeed's launcher from the pretrain stage.

``python -m deepspeed.launcher.runner --num_gpus N --module pipeline.train_worker --spec SPEC``

Reads the spec written by ``pipeline.pretrain``, builds a Llama-style model, trains it through a
DeepSpeed engine on the packed token stream, logs to ``metrics.jsonl``, saves a DeepSpeed
checkpoint and exports ``hf/`` with safetensors and the tokenizer. Batch ``g`` (a global
micro-batch index) is a pure function of the seed and ``g``, so every rank reads its own slice
and a resume from step ``k`` sees exactly the batches an uninterrupted run would have.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import deepspeed
import numpy as np
import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator
from transformers import LlamaConfig, LlamaForCausalLM


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


class TokenBatches:
    """Seeded, epoch-wise shuffled sequences of a flat token stream, addressable by index."""

    def __init__(self, path: Path, dtype: str, seq_len: int, seed: int):
        self.tokens = np.memmap(path, dtype=np.dtype(dtype), mode="r")
        self.seq_len, self.seed = seq_len, seed
        self.num_seqs = len(self.tokens) // seq_len
        self._epoch, self._order = -1, np.empty(0, dtype=np.int64)

    def sequence_ids(self, start: int, count: int) -> list[int]:
        """Ids of the global sequence positions ``start .. start+count`` across epochs."""
        ids = []
        for pos in range(start, start + count):
            epoch, i = divmod(pos, self.num_seqs)
            if epoch != self._epoch:
                self._epoch = epoch
                self._order = np.random.default_rng([self.seed, epoch]).permutation(self.num_seqs)
            ids.append(int(self._order[i]))
        return ids

    def batch(self, ids: list[int]) -> torch.Tensor:
        rows = [self.tokens[i * self.seq_len:(i + 1) * self.seq_len] for i in ids]
        return torch.from_numpy(np.stack(rows).astype(np.int64))


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
        x = data.batch(ids[i:i + micro]).to(device)
        total += engine(input_ids=x, labels=x).loss.float().item() * len(x)
        n += len(x)
    engine.train()
    return total / max(n, 1)


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

    model = LlamaForCausalLM(llama_config(
        cfg["model"], vocab_size=spec["vocab_size"], seq_len=seq_len,
        eos_id=spec["eos_id"], pad_id=spec["pad_id"]))
    n_params = sum(p.numel() for p in model.parameters())
    engine, _, _, scheduler = deepspeed.initialize(
        model=model, model_parameters=model.parameters(), config=spec["ds_config"])

    train = TokenBatches(out_dir / "data/train.bin", spec["dtype"], seq_len, cfg["seed"])
    held = TokenBatches(out_dir / "data/eval.bin", spec["dtype"], seq_len, cfg["seed"])
    metrics_path = out_dir / "metrics.jsonl"
    tokens_per_step = micro * accum * world * seq_len
    g = 0  # global micro-batch index
    start = last = time.perf_counter()
    window: list[float] = []
    grad_norm = float("nan")
    for step in range(1, cfg["max_steps"] + 1):
        for _ in range(accum):
            ids = train.sequence_ids(g * micro * world + rank * micro, micro)
            x = train.batch(ids).to(device)
            loss = engine(input_ids=x, labels=x).loss
            engine.backward(loss)
            if engine.is_gradient_accumulation_boundary() and cfg["zero_stage"] == 0:
                grad_norm = full_grad_norm(engine.module)  # ZeRO-0 does not track it
            engine.step()
            window.append(loss.detach().float().item())
            g += 1
        if step % cfg["log_every"] == 0 or step == cfg["max_steps"]:
            mean = torch.tensor([sum(window) / len(window)], device=device)
            dist.all_reduce(mean)
            mean_loss = mean.item() / world
            window.clear()
            if not math.isfinite(mean_loss):
                raise FloatingPointError(f"non-finite training loss {mean_loss} at step {step}")
            now = time.perf_counter()
            record = {
                "step": step, "loss": mean_loss, "lr": scheduler.get_last_lr()[0],
                "grad_norm": float(grad_norm if cfg["zero_stage"] == 0
                                   else engine.get_global_grad_norm()),
                "tokens_per_s": tokens_per_step * cfg["log_every"] / max(now - last, 1e-9),
                "tokens": step * tokens_per_step,
            }
            last = now
            if rank == 0:
                with open(metrics_path, "a") as fh:
                    fh.write(json.dumps(record) + "\n")
                eta = (now - start) / step * (cfg["max_steps"] - step)
                print(f"[dapt] step {step}/{cfg['max_steps']} loss {mean_loss:.4f} "
                      f"lr {record['lr']:.2e} {record['tokens_per_s']:.0f} tok/s "
                      f"eta {eta:.0f}s", flush=True)
    elapsed = time.perf_counter() - start
    eval_loss = held_out_loss(engine, held, cfg["eval_max_seqs"], micro, device)

    tag = f"global_step{cfg['max_steps']}"
    engine.save_checkpoint(str(out_dir / "checkpoint"), tag=tag)
    state = engine._zero3_consolidated_16bit_state_dict() if cfg["zero_stage"] == 3 else None
    if rank == 0:
        hf_dir = out_dir / "hf"
        if state is not None:
            export = LlamaForCausalLM(engine.module.config)
            export.load_state_dict(state)
        else:
            export = engine.module
        export.save_pretrained(hf_dir, safe_serialization=True)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(Path(spec["tokenizer_dir"]) / name, hf_dir / name)
        (out_dir / "summary.json").write_text(json.dumps({
            "steps": cfg["max_steps"], "tokens_trained": cfg["max_steps"] * tokens_per_step,
            "params": n_params, "world_size": world, "final_train_loss": mean_loss,
            "eval_loss": eval_loss, "eval_perplexity": math.exp(min(eval_loss, 50.0)),
            "tokens_per_s": cfg["max_steps"] * tokens_per_step / elapsed,
            "checkpoint": f"checkpoint/{tag}",
        }, indent=2))
    dist.barrier()


if __name__ == "__main__":
    main()
