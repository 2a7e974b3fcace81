"""One training rank, started by DeepSpeed's launcher from the pretrain stage.

``python -m deepspeed.launcher.runner --num_gpus N --module pipeline.stages.pretrain.worker --spec
SPEC``
(a single process is started as ``env RANK=0 WORLD_SIZE=1 ... python -m
pipeline.stages.pretrain.worker``,
the launcher's environment for one rank: ``pretrain.launch_command``).

Reads the spec written by ``pipeline.stages.pretrain.stage``, builds a Llama-style model, trains it
through a DeepSpeed engine on the packed token stream, logs to ``metrics.jsonl``, checkpoints every
``checkpoint_every`` steps (keeping the newest ``keep_checkpoints``) and on SIGTERM/SIGINT, and
exports ``hf/`` with safetensors and the tokenizer. ``main`` is four steps: ``setup`` (model
and engine), ``resume``, ``loop`` and ``export``. Progress reaches the stage as ``WorkerEvent``
JSON lines on stdout (``pipeline.stages.pretrain.worker_io``).

Checkpoint choice (``select_checkpoint``): the dev streams are scored before training (step 0,
the base model) and at every eval point, each eval point's weights are kept under
``candidates/``, and ``export`` writes the one ``worker_io.choose`` picks as ``hf/``; the
general limit is measured from the spec's ``reference`` (the control's general dev loss on the
same sequences, computed by the stage) or, without one, from step 0.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator
from tokenizers import Tokenizer
from transformers import LlamaConfig, LlamaForCausalLM

from pipeline.config import ModelConfig, PretrainConfig
from pipeline.stages.pretrain.packing import TokenBatches
from pipeline.stages.pretrain.vocab import init_new_embeddings
from pipeline.stages.pretrain.worker_io import (
    Candidate,
    WorkerEvent,
    WorkerSpec,
    WorkerSummary,
    choose,
)


def llama_config(model: ModelConfig, *, vocab_size: int, seq_len: int, eos_id: int,
                 pad_id: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=model.hidden_size,
        intermediate_size=model.intermediate_size,
        num_hidden_layers=model.num_layers,
        num_attention_heads=model.num_heads,
        num_key_value_heads=model.num_heads,
        max_position_embeddings=seq_len,
        tie_word_embeddings=model.tie_embeddings,
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


def save_hf(engine: Any, zero_stage: int, rank: int, out: Path) -> None:
    """The engine's weights as an HF directory (every rank calls it: ZeRO-3 gathers)."""
    state = engine._zero3_consolidated_16bit_state_dict() if zero_stage == 3 else None
    if rank == 0:
        if state is not None:
            export = LlamaForCausalLM(engine.module.config)
            export.load_state_dict(state)
        else:
            export = engine.module
        export.save_pretrained(out, safe_serialization=True)


def emit(rank: int, event: WorkerEvent) -> None:
    if rank == 0:
        print(event.line(), flush=True)


@dataclass
class Run:
    """One rank's state: the spec, the engine and the data, the step to start from."""

    spec: WorkerSpec
    engine: Any
    scheduler: Any
    rank: int
    world: int
    device: Any
    train: TokenBatches
    held: TokenBatches
    general: TokenBatches | None
    n_params: int
    new_embeddings: int
    first: int = 1
    window: list[float] = field(default_factory=list)
    scored: tuple[int, float, float | None] | None = None  # the last dev scoring: step, losses

    @property
    def out_dir(self) -> Path:
        return Path(self.spec.out_dir)

    @property
    def tokens_per_step(self) -> int:
        c = self.spec.config
        return c.micro_batch_size * c.grad_accum_steps * self.world * c.seq_len

    def dev_losses(self, step: int) -> tuple[float, float | None]:
        """Loss on the dev streams at ``step`` (scored once per step: the final eval point is
        not scored again for the export)."""
        if self.scored is not None and self.scored[0] == step:
            return self.scored[1], self.scored[2]
        c = self.spec.config
        held = held_out_loss(self.engine, self.held, c.eval_max_seqs, c.micro_batch_size,
                             self.device)
        general = (held_out_loss(self.engine, self.general, c.eval_max_seqs,
                                 c.micro_batch_size, self.device)
                   if self.general is not None else None)
        self.scored = (step, held, general)
        return held, general


def setup(spec: WorkerSpec) -> Run:
    """Distributed init, the model (fresh, or the base with extended embeddings), the engine."""
    cfg = spec.config
    accel = get_accelerator()
    deepspeed.init_distributed(dist_backend=accel.communication_backend_name())
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(accel.device_name(accel.current_device()))
    torch.manual_seed(cfg.seed)
    new_embeddings = 0
    if spec.base_dir:  # continued pretraining
        model = LlamaForCausalLM.from_pretrained(spec.base_dir, dtype=torch.float32,
                                                 attn_implementation="sdpa")
        if spec.base_tokenizer_dir:  # extended vocabulary: new rows = mean of pieces
            base_tok, tok = (Tokenizer.from_file(str(Path(d) / "tokenizer.json"))
                             for d in (spec.base_tokenizer_dir, spec.tokenizer_dir))
            new_embeddings = init_new_embeddings(model, base_tok, tok)
    else:
        model = LlamaForCausalLM(llama_config(
            cfg.model, vocab_size=spec.vocab_size, seq_len=cfg.seq_len,
            eos_id=spec.eos_id, pad_id=spec.pad_id))
    n_params = sum(p.numel() for p in model.parameters())
    if cfg.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ds_config = spec.ds_config
    board = ds_config.get("tensorboard", {})
    out_dir = Path(spec.out_dir)
    if board.get("enabled") and not Path(board.get("output_path") or ".").is_absolute():
        board["output_path"] = str(out_dir / (board.get("output_path") or "tensorboard"))
    engine, _, _, scheduler = deepspeed.initialize(
        model=model, model_parameters=model.parameters(), config=ds_config)
    if cfg.compile:
        engine.compile(backend=cfg.compile_backend)
    data = out_dir / "data"
    return Run(spec=spec, engine=engine, scheduler=scheduler, rank=rank, world=world,
               device=device, train=TokenBatches(data, "train", cfg.seed),
               held=TokenBatches(data, "eval", cfg.seed),
               general=TokenBatches(data, "eval_general", cfg.seed) if spec.general_eval
               else None, n_params=n_params, new_embeddings=new_embeddings)


def _truncate_jsonl(path: Path, first: int) -> None:
    """Drop the records logged at or after step ``first`` (they come again after a resume)."""
    if path.exists():
        kept = [r for r in path.read_text().splitlines() if json.loads(r)["step"] < first]
        path.write_text("".join(r + "\n" for r in kept))


def resume(run: Run) -> None:
    """Continue from ``checkpoint/latest`` when a killed build left one; else score the base
    model on the dev streams first when choosing a checkpoint (step 0)."""
    ckpt_dir, candidates = run.out_dir / "checkpoint", run.out_dir / "candidates.jsonl"
    if (ckpt_dir / "latest").exists():
        _, client = run.engine.load_checkpoint(str(ckpt_dir))
        run.first, run.window = client["step"] + 1, client["window"]
        torch.set_rng_state(client["torch_rng"])
        if run.rank == 0:
            for path in (run.out_dir / "metrics.jsonl", candidates):
                _truncate_jsonl(path, run.first)
            for stale in (run.out_dir / "candidates").glob("step*"):
                if int(stale.name[4:]) >= run.first:
                    shutil.rmtree(stale, ignore_errors=True)
        emit(run.rank, WorkerEvent(kind="resumed", step=run.first - 1,
                                   max_steps=run.spec.config.max_steps,
                                   message=f"resumed from checkpoint at step {run.first - 1}"))
    if run.spec.config.select_checkpoint and not candidates.exists():
        record_candidate(run, 0, *run.dev_losses(0), keep_weights=False)


def record_candidate(run: Run, step: int, eval_loss: float, general_loss: float | None,
                     keep_weights: bool = True) -> None:
    if keep_weights:
        save_hf(run.engine, run.spec.config.zero_stage, run.rank,
                run.out_dir / "candidates" / f"step{step}")
    if run.rank == 0:
        with open(run.out_dir / "candidates.jsonl", "a") as fh:
            fh.write(Candidate(step=step, eval_loss=eval_loss,
                               general_loss=general_loss).model_dump_json() + "\n")
    emit(run.rank, WorkerEvent(kind="eval", step=step, max_steps=run.spec.config.max_steps,
                               heldout_loss=eval_loss, general_loss=general_loss))


def train_step(run: Run, step: int, g: int) -> tuple[int, float]:
    """One optimizer step of ``grad_accum_steps`` micro-batches from global micro-batch ``g``;
    returns the next ``g`` and the gradient norm (before clipping)."""
    cfg, engine = run.spec.config, run.engine
    micro, grad_norm = cfg.micro_batch_size, float("nan")
    for _ in range(cfg.grad_accum_steps):
        ids = run.train.sequence_ids(g * micro * run.world + run.rank * micro, micro)
        x = torch.from_numpy(run.train.batch(ids)).to(run.device)
        loss = engine(input_ids=x, labels=x).loss
        value = loss.detach().float().item()
        if not math.isfinite(value):
            latest = run.out_dir / "checkpoint" / "latest"
            raise FloatingPointError(
                f"non-finite training loss {value} at step {step}; last good checkpoint: "
                + (latest.read_text().strip() if latest.exists() else "none")
                + f" in {latest.parent}")
        engine.backward(loss)
        if engine.is_gradient_accumulation_boundary() and cfg.zero_stage == 0:
            grad_norm = full_grad_norm(engine.module)  # ZeRO-0 does not track it
        engine.step()
        run.window.append(value)
        g += 1
    if cfg.zero_stage != 0:
        grad_norm = engine.get_global_grad_norm()
    return g, float(grad_norm)


def log_step(run: Run, step: int, grad_norm: float, seconds: float, started: float) -> None:
    """Reduce the loss window, write ``metrics.jsonl`` and TensorBoard, emit the event; at eval
    points also score the dev streams (and keep the weights when choosing a checkpoint)."""
    cfg = run.spec.config
    mean = torch.tensor([sum(run.window) / len(run.window)], device=run.device)
    dist.all_reduce(mean)
    run.window.clear()
    record: dict[str, Any] = {
        "step": step, "loss": mean.item() / run.world, "lr": run.scheduler.get_last_lr()[0],
        "grad_norm": grad_norm,
        "tokens_per_s": run.tokens_per_step * cfg.log_every / max(seconds, 1e-9),
        "tokens": step * run.tokens_per_step,
    }
    if cfg.eval_every and step % cfg.eval_every == 0:
        record["heldout_loss"], general = run.dev_losses(step)
        if general is not None:  # forgetting: loss on general text held out
            record["general_loss"] = general
        if cfg.select_checkpoint:
            record_candidate(run, step, record["heldout_loss"], general)
    if run.rank == 0:
        with open(run.out_dir / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if run.engine.monitor.enabled:  # TensorBoard, by optimizer step
            run.engine.monitor.write_events([(f"dapt/{k}", v, step) for k, v in
                                             record.items() if k != "step"])
    eta = (time.perf_counter() - started) / (step - run.first + 1) * (cfg.max_steps - step)
    emit(run.rank, WorkerEvent(kind="step", step=step, max_steps=cfg.max_steps,
                               loss=record["loss"], lr=record["lr"],
                               tokens_per_s=record["tokens_per_s"], eta_s=eta,
                               heldout_loss=record.get("heldout_loss"),
                               general_loss=record.get("general_loss")))


def wants_checkpoint(cfg: PretrainConfig, step: int) -> bool:
    """Every ``checkpoint_every`` steps, but the last only with ``keep_final_checkpoint``: the
    stage deletes a finished build's checkpoint once ``hf/`` is exported, so writing one there
    (about 16 bytes a parameter) would serve only a crash during the export."""
    if step == cfg.max_steps:
        return cfg.keep_final_checkpoint
    return step % cfg.checkpoint_every == 0


def loop(run: Run) -> float:
    """Train from ``run.first`` to ``max_steps``, checkpointing, and stopping cleanly on
    SIGTERM/SIGINT; returns the training seconds (held-out scoring excluded)."""
    cfg = run.spec.config
    stop: list[int] = []  # the signal that asked us to stop, once one arrives
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda s, _f: stop.append(s))
    g = (run.first - 1) * cfg.grad_accum_steps  # global micro-batch index
    start = last = time.perf_counter()
    scoring = 0.0
    for step in range(run.first, cfg.max_steps + 1):
        g, grad_norm = train_step(run, step, g)
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            now = time.perf_counter()
            log_step(run, step, grad_norm, now - last, start)
            last = time.perf_counter()  # held-out evaluation is not training time
            scoring += last - now
        stopping = bool(stop)
        if stopping or wants_checkpoint(cfg, step):
            save(run.engine, run.out_dir / "checkpoint", step, run.window,
                 cfg.keep_checkpoints, run.rank)
        if stopping:
            emit(run.rank, WorkerEvent(
                kind="stopped", step=step, max_steps=cfg.max_steps,
                message=f"signal {stop[0]}: checkpoint saved at step {step}; rerun the same "
                "command to resume"))
            raise SystemExit(128 + stop[0])
    return time.perf_counter() - start - scoring


def export(run: Run, elapsed: float) -> None:
    """``hf/`` (the final weights, or the chosen candidate's) with the tokenizer, and
    ``summary.json``."""
    cfg, out_dir = run.spec.config, run.out_dir
    eval_loss, general_loss = run.dev_losses(cfg.max_steps)
    # Data parallelism must leave every rank with the same weights (ZeRO-3 shards them instead).
    digests: list[str | None] = [None] * run.world
    dist.all_gather_object(digests, None if cfg.zero_stage == 3 else param_digest(run.engine))
    selection = None
    hf_dir = out_dir / "hf"
    if cfg.select_checkpoint:
        path = out_dir / "candidates.jsonl"
        if cfg.max_steps % cfg.eval_every:  # the final weights are a candidate too
            record_candidate(run, cfg.max_steps, eval_loss, general_loss)
        found = [Candidate.model_validate_json(r) for r in path.read_text().splitlines()]
        selection = choose(found, cfg.select_max_general_degradation, run.spec.reference)
        chosen = next(c for c in selection.candidates if c.step == selection.chosen_step)
        eval_loss, general_loss = chosen.eval_loss, chosen.general_loss
        if run.rank == 0:
            (out_dir / "candidates" / f"step{chosen.step}").rename(hf_dir)
            shutil.rmtree(out_dir / "candidates", ignore_errors=True)
    else:
        save_hf(run.engine, cfg.zero_stage, run.rank, hf_dir)
    if run.rank == 0:
        for pattern in ("tokenizer*", "special_tokens_map.json", "chat_template*"):
            for path in Path(run.spec.tokenizer_dir).glob(pattern):
                shutil.copy(path, hf_dir / path.name)
        last = json.loads((out_dir / "metrics.jsonl").read_text().splitlines()[-1])
        summary = WorkerSummary(
            steps=cfg.max_steps, tokens_trained=cfg.max_steps * run.tokens_per_step,
            params=run.n_params, world_size=run.world, final_train_loss=last["loss"],
            eval_loss=eval_loss, eval_perplexity=math.exp(min(eval_loss, 50.0)),
            general_eval_loss=general_loss, new_embeddings=run.new_embeddings,
            tokens_per_s=(cfg.max_steps - run.first + 1) * run.tokens_per_step
            / max(elapsed, 1e-9),
            peak_memory_gb=get_accelerator().max_memory_allocated() / 2**30,
            resumed_from_step=run.first - 1, param_digests=digests,
            checkpoint=f"checkpoint/global_step{cfg.max_steps}" if cfg.keep_final_checkpoint
            else None, selection=selection)
        (out_dir / "summary.json").write_text(summary.model_dump_json(indent=2))
    dist.barrier()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spec", required=True)
    parser.add_argument("--local_rank", type=int, default=0)  # set by the launcher
    args = parser.parse_args()
    run = setup(WorkerSpec.model_validate_json(Path(args.spec).read_text()))
    resume(run)
    export(run, loop(run))
    # Tear the process group down before the interpreter does: leaving it to exit once ended a
    # 2-rank CPU run with "terminate called without an active exception" (exit 250).
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
