"""Pretrain stage: pack the corpus into token sequences and train a causal LM with DeepSpeed.

1. Tokenize and pack the ingest shards (``pipeline.stages.pretrain.packing``): the training stream
follows
   ``mixture``, and the held-out text becomes two streams, ``eval`` (domain sources) and
   ``eval_general`` (general sources, when the domain has any: the forgetting loss). The
   tokenizer is the domain one (from_scratch), or the base model's, extended when the tokenizer
   stage extended it (continue; new embeddings start as the mean of their pieces').
2. Generate the DeepSpeed JSON from ``PretrainConfig`` (``ds_overrides`` is merged over it) and
   launch ``pipeline.stages.pretrain.worker`` through DeepSpeed's launcher as a subprocess: one
   process
   here, ``num_gpus`` ranks on a GPU node. The command, config and log are kept in the artifact.
3. The worker trains, checkpoints, and exports ``hf/`` (safetensors + tokenizer) that
   ``AutoModelForCausalLM.from_pretrained`` loads: the final weights, or with
   ``select_checkpoint`` the eval point chosen on the dev half of the held-out text (its
   general limit measured from the control's loss where the run has a control:
   ``reference.py``).
4. ``hf/README.md`` is the export's model card in the Hub's format
   (``pipeline.stages.pretrain.model_card``): base model, sources, tokens, recipe, dev losses,
   intended use, limitations, PII replaced.

``pack`` and ``train`` take plain files and tables, so the control run
(``pipeline.stages.control.stage``) trains through the same code on general text.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import torch
from tokenizers import Tokenizer

from pipeline import QualityGateError
from pipeline.config import PretrainConfig, deep_merge
from pipeline.engine import progress
from pipeline.engine.artifacts import Artifact, Manifest
from pipeline.files import write_atomic
from pipeline.stages.ingest.artifact import IngestOutput
from pipeline.stages.models import stage as models
from pipeline.stages.pretrain import model_card, packing, reference
from pipeline.stages.pretrain.output import PretrainOutput
from pipeline.stages.pretrain.worker_io import Reference, WorkerEvent, WorkerSpec, WorkerSummary
from pipeline.stages.tokenizer.output import TokenizerOutput

log = logging.getLogger("dapt")


def use_bf16(config: PretrainConfig) -> bool:
    return config.precision == "bf16" or (config.precision == "auto" and torch.cuda.is_available())


def deepspeed_config(config: PretrainConfig, *, bf16: bool) -> dict[str, Any]:
    """The DeepSpeed JSON for this run; ``config.ds_overrides`` wins over every generated key."""
    generated = {
        "train_micro_batch_size_per_gpu": config.micro_batch_size,
        "gradient_accumulation_steps": config.grad_accum_steps,
        "gradient_clipping": config.grad_clip,
        "steps_per_print": 1_000_000_000,  # the worker logs; DeepSpeed's own print is noise
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": config.lr, "betas": [0.9, 0.95], "eps": 1e-8,
                       "weight_decay": config.weight_decay, "torch_adam": True},
        },
        "scheduler": {
            "type": "WarmupCosineLR",
            "params": {"total_num_steps": config.max_steps,
                       # DeepSpeed rejects 0; one step of warmup is no warmup in effect
                       "warmup_num_steps": max(1, config.warmup_steps), "warmup_type": "linear",
                       "warmup_min_ratio": 0.0, "cos_min_ratio": config.min_lr_ratio},
        },
        "zero_optimization": {"stage": config.zero_stage},
        "bf16": {"enabled": bf16},
        # relative to the artifact directory; the worker resolves it
        "tensorboard": {"enabled": config.tensorboard, "output_path": "tensorboard",
                        "job_name": "pretrain"},
    }
    if config.zero_stage == 3:
        generated["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = True
    if config.offload_optimizer:
        generated["zero_optimization"]["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        generated["optimizer"]["params"]["torch_adam"] = False  # DeepSpeedCPUAdam does the step
    return deep_merge(generated, config.ds_overrides)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def release_shm(port: int, shm_dir: Path = Path("/dev/shm")) -> list[Path]:
    """Unlink the shared-memory segments DeepSpeed's CPU allreduce left for this launch.

    Its shm backend creates ``deepspeed_allreduce_buffer_*_<addr>_<port>_<rank>`` (67 MB per
    rank) and never unlinks them, so every CPU run would hold RAM until reboot. Only this
    launch's port is touched; other nodes of a multi-node CPU run keep theirs."""
    leftovers = sorted(shm_dir.glob(f"deepspeed_allreduce_buffer_*_{port}_*"))
    for path in leftovers:
        path.unlink(missing_ok=True)
    return leftovers


def launch_command(config: PretrainConfig, spec_path: Path, port: int) -> list[str]:
    """DeepSpeed launcher command; with ``num_nodes > 1`` it reaches the hostfile's nodes over
    ssh (pdsh), so ``spec_path`` and the artifact directory must be on a shared filesystem.

    One process on one node starts the worker itself, with the environment the launcher's
    ``launch`` gives its one rank (its two extra Python processes cost seconds per run and
    would only start that same command); the worker initialises DeepSpeed from that
    environment as it would under the launcher."""
    worker = ["-m", "pipeline.stages.pretrain.worker", "--spec", str(spec_path)]
    if config.num_gpus == 1 and config.num_nodes == 1:
        rank_env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "WORLD_SIZE": 1,
                    "RANK": 0, "LOCAL_RANK": 0, "LOCAL_SIZE": 1, "CROSS_RANK": 0,
                    "CROSS_SIZE": 1}
        return ["env", *(f"{k}={v}" for k, v in rank_env.items()), sys.executable, "-u",
                *worker]
    multi_node: list[str] = []
    if config.num_nodes > 1:
        if not config.hostfile:  # PretrainConfig rejects this; -O must not skip the check
            raise ValueError("pretrain.num_nodes > 1 needs pretrain.hostfile")
        multi_node = ["--hostfile", os.path.expandvars(config.hostfile),
                      "--num_nodes", str(config.num_nodes)]
        if config.master_addr:
            multi_node += ["--master_addr", os.path.expandvars(config.master_addr)]
    return [
        sys.executable, "-m", "deepspeed.launcher.runner",
        "--num_gpus", str(config.num_gpus), "--master_port", str(port), *multi_node,
        "--module", *worker[1:],
    ]


def _forward_signals(proc: subprocess.Popen) -> dict[int, Any]:
    """Pass SIGTERM/SIGINT on to the launcher, which passes them to every rank; the ranks
    checkpoint and exit, and the next run of this artifact resumes from that checkpoint.
    Only the main thread may install handlers; elsewhere the signals reach the process group."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, lambda s, _f: proc.send_signal(s))
    return previous


def _log_event(event: WorkerEvent, label: str = "pretrain") -> None:
    if event.kind != "step":  # step events drive the progress bar, which logs them
        log.info("%s: %s", label, event.describe())


def _stream(cmd: list[str], log_path: Path, env: dict[str, str],
            on_event: Callable[[WorkerEvent], None] | None = None,
            label: str = "pretrain") -> None:
    """Run the launcher, appending its output to ``log_path``; each worker event line is
    parsed and handed to ``on_event`` (default: logged); ``label`` names the progress line and
    the log lines."""
    on_event = on_event or (lambda event: _log_event(event, label))
    tail: deque[str] = deque(maxlen=40)
    bar = None
    with open(log_path, "a") as log_fh:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=env, bufsize=1)
        forwarded = _forward_signals(proc)
        if proc.stdout is None:
            raise RuntimeError("pretrain: the training process has no stdout pipe")
        try:
            for line in proc.stdout:
                log_fh.write(line)
                log_fh.flush()  # so `tail -f train.log` follows a long run
                tail.append(line)
                event = WorkerEvent.parse(line)
                if event is not None:
                    if event.kind == "step" and event.loss is not None:  # the live bar
                        bar = bar or progress.track(label, event.max_steps, "steps")
                        bar.update(completed=event.step, loss=event.loss,
                                   **({"tok/s": round(event.tokens_per_s)}
                                      if event.tokens_per_s is not None else {}))
                    on_event(event)
            code = proc.wait()
        finally:
            if bar is not None:
                bar.close()
            for sig, handler in forwarded.items():
                signal.signal(sig, handler)
    if code != 0:
        raise RuntimeError(
            f"{label}: training process exited with code {code}; its log is {log_path.name} in "
            "the build directory. Last lines:\n" + "".join(tail)
        )


def trained_sequences(config: PretrainConfig) -> int:
    """Sequences a run reads: every rank's micro-batches of every optimizer step."""
    return (config.max_steps * config.grad_accum_steps * config.micro_batch_size
            * config.num_gpus * config.num_nodes)


def pack(config: PretrainConfig, train_files: list[Path], dev: pa.Table, names: list[str],
         general: set[str], tokenizer_path: Path, eos_id: int, data_dir: Path,
         earlier_files: list[Path] | None = None) -> dict[str, Any]:
    """Packed ``train``, ``eval`` and (with general sources) ``eval_general`` streams; the held-out
    streams come from ``dev`` (the held-out slice's dev part: ``IngestOutput.held_out_parts``).
    ``earlier_files`` (a continued run's earlier drops): their domain text is replayed at
    ``config.earlier_share`` of the training tokens, their general text mixes as usual; only
    the sample of them those shares need is tokenized (``packing.replay_subset``)."""
    common = {"source_names": names, "num_workers": config.num_pack_workers}
    stagings = [data_dir / "staging-train.bin", data_dir / "staging-eval.bin",
                data_dir / "staging-dev.parquet", data_dir / "staging-earlier.parquet"]
    try:
        if earlier_files:  # only what the replay shares need, not the whole history
            earlier_files = [packing.replay_subset(
                train_files, earlier_files, config.mixture, config.earlier_share, general,
                config.seed, stagings[3])]
        train = packing.encode(tokenizer_path, train_files + (earlier_files or []), eos_id,
                               stagings[0], **common)
        shares = config.mixture
        if earlier_files:
            new_docs = ds.dataset([str(f) for f in train_files], format="parquet").count_rows()
            train = packing.mark_earlier(train, new_docs, general)
            if (train.sources == len(names)).any():
                shares = {**shares, packing.EARLIER: config.earlier_share}
        selection, mixture = packing.mixture_selection(train, shares, config.seed)
        packed = {"train": packing.write_sequences(train, selection, data_dir, "train",
                                                   config.seq_len, config.max_shard_tokens),
                  "mixture": mixture}
        packed["document_starts"] = packing.trained_document_starts(
            data_dir, "train", config.seed, trained_sequences(config))
        pq.write_table(dev.select(["text", "source"]), stagings[2])
        held = packing.encode(tokenizer_path, [stagings[2]], eos_id, stagings[1], **common)
        is_general = np.isin(held.sources, [i for i, n in enumerate(names) if n in general])
        for name, docs in (("eval", np.flatnonzero(~is_general)),
                           ("eval_general", np.flatnonzero(is_general))):
            if len(docs):
                packed[name] = packing.write_sequences(held, docs, data_dir, name,
                                                       config.seq_len, config.max_shard_tokens)
    finally:
        for staging in stagings:
            staging.unlink(missing_ok=True)
    return packed


def packed_streams(config: PretrainConfig, out_dir: Path, pack_fn: Callable[[Path], dict]
                   ) -> dict[str, Any]:
    """The packed streams of this build: packed now, or read back when resuming a killed one."""
    data_dir, marker = out_dir / "data", out_dir / "data" / "packed.json"
    if marker.exists():  # resuming a killed build: the packed streams are complete
        log.info("resuming the build in %s (its packed streams are complete)", out_dir)
        return json.loads(marker.read_text())
    packed = pack_fn(data_dir)
    write_atomic(marker, json.dumps(packed, indent=2))  # a resume must never find half a marker
    return packed


def train(config: PretrainConfig, packed: dict[str, Any], out_dir: Path, *, tok_dir: Path,
          base_dir: Path | None, base_tok_dir: Path | None, eos_id: int, pad_id: int,
          ref: Reference | None = None, step: str = "pretrain") -> dict[str, Any]:
    """Check the packed streams, launch the worker through DeepSpeed's launcher, and return
    its summary (``summary.json``); ``ref``: the checkpoint rule's reference (None: the
    base); ``step`` names the logs and the progress line (the control trains here too)."""
    n_train_seqs = packed["train"]["sequences"]
    n_eval_seqs = packed["eval"]["sequences"] if "eval" in packed else 0
    per_step = config.micro_batch_size * config.num_gpus * config.num_nodes
    if n_train_seqs < per_step or n_eval_seqs < 1:
        raise QualityGateError(
            f"pretrain: {n_train_seqs} training and {n_eval_seqs} held-out (dev) sequences of "
            f"{config.seq_len} tokens; need at least {per_step} and 1"
        )
    if "eval_general" in packed and not packed["eval_general"]["sequences"]:
        log.warning("pretrain: the general held-out text is shorter than one sequence of %d "
                    "tokens; no general (forgetting) loss", config.seq_len)
    bf16 = use_bf16(config)
    label = step + (f" seed {config.seed}" if config.seeds > 1 else "")
    earlier = _trained_before(out_dir)
    if earlier is not None:  # a resumed build whose worker had finished: its export stands
        log.info("%s: trained and exported by an earlier attempt of this build", label)
        return {"summary": _drop_checkpoint(config, out_dir, earlier), "bf16": bf16,
                "cmd": shlex.split((out_dir / "launch.sh").read_text())}
    ds_config = deepspeed_config(config, bf16=bf16)
    (out_dir / "ds_config.json").write_text(json.dumps(ds_config, indent=2))
    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    spec = WorkerSpec(
        config=config, ds_config=ds_config, tokenizer_dir=str(tok_dir),
        base_dir=str(base_dir) if base_dir else None,
        base_tokenizer_dir=str(base_tok_dir) if base_tok_dir else None,
        vocab_size=tok.get_vocab_size(), eos_id=eos_id, pad_id=pad_id,
        general_eval=packed.get("eval_general", {}).get("sequences", 0) > 0,
        out_dir=str(out_dir), reference=ref)
    spec_path = out_dir / "spec.json"
    spec_path.write_text(spec.model_dump_json(indent=2))
    port = free_port()
    cmd = launch_command(config, spec_path, port)
    (out_dir / "launch.sh").write_text(shlex.join(cmd) + "\n")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    log.info("%s: launching %s", label, shlex.join(cmd))
    try:
        _stream(cmd, out_dir / "train.log", env, label=label)
    finally:
        release_shm(port)
    summary = WorkerSummary.model_validate_json((out_dir / "summary.json").read_text())
    return {"summary": _drop_checkpoint(config, out_dir, summary), "cmd": cmd, "bf16": bf16}


def _trained_before(out_dir: Path) -> WorkerSummary | None:
    """The summary of a worker that finished in an earlier attempt of this build (the worker
    writes ``summary.json`` last, after ``hf/``), or None."""
    done = out_dir / "summary.json"
    if done.exists() and (out_dir / "hf").is_dir() and (out_dir / "launch.sh").exists():
        return WorkerSummary.model_validate_json(done.read_text())
    return None


def _drop_checkpoint(config: PretrainConfig, out_dir: Path,
                     summary: WorkerSummary) -> WorkerSummary:
    """Without ``keep_final_checkpoint``, delete ``checkpoint/`` (only a resume reads it; hf/
    is the output) and say so in ``summary.json``."""
    if config.keep_final_checkpoint:
        return summary
    shutil.rmtree(out_dir / "checkpoint", ignore_errors=True)  # the earlier steps' checkpoints
    if summary.checkpoint is None:
        return summary
    summary = summary.model_copy(update={"checkpoint": None})
    write_atomic(out_dir / "summary.json", summary.model_dump_json(indent=2))
    return summary


@dataclass(frozen=True)
class Inputs:
    """What the step reads: the corpus, the tokenizer, in continue mode the base model's HF
    directory, with ``init: promoted`` the promoted model it continues, and when the
    checkpoint choice compares with a control, the control of its seed (the input is named by
    its step: ``control`` or ``control[seed1]``)."""

    ingest: IngestOutput
    tokenizer: TokenizerOutput
    base: Path | None
    promoted: PretrainOutput | None
    control: PretrainOutput | None = None

    @classmethod
    def of(cls, inputs: Mapping[str, Artifact]) -> Inputs:
        base, promoted = inputs.get("models"), inputs.get("promoted")
        control = next((a for n, a in inputs.items()
                        if n == "control" or n.startswith("control[")), None)
        return cls(IngestOutput(inputs["ingest"]), TokenizerOutput(inputs["tokenizer"]),
                   models.hf_dir(base) if base is not None else None,
                   PretrainOutput(promoted) if promoted is not None else None,
                   PretrainOutput(control) if control is not None else None)


@dataclass(frozen=True)
class Start:
    """Where training starts: the weights (None: fresh), the tokenizer it trains with, the base
    tokenizer an extension grew from (for the new embeddings), and the special ids."""

    base_dir: Path | None
    tok_dir: Path
    base_tok_dir: Path | None
    eos_id: int
    pad_id: int


def _special_ids(model_dir: Path) -> tuple[int, int]:
    base_config = json.loads((model_dir / "config.json").read_text())
    eos_id = base_config["eos_token_id"]
    return eos_id, base_config.get("pad_token_id") or eos_id


def start(config: PretrainConfig, given: Inputs) -> Start:
    if given.promoted is not None:  # init: promoted: the lineage's model, frozen tokenizer
        model_dir = given.promoted.hf_dir
        return Start(model_dir, model_dir, None, *_special_ids(model_dir))
    if config.mode == "continue":  # the base model's own tokenizer, or its extension
        assert given.base is not None, "continue mode plans the models step"
        extended = given.tokenizer.extended_dir
        return Start(given.base, extended or given.base, given.base if extended else None,
                     *_special_ids(given.base))
    tok = given.tokenizer
    return Start(None, tok.dir, None, tok.eos_id, tok.pad_id)


def pack_inputs(config: PretrainConfig, given: Inputs, tok_dir: Path, eos_id: int,
                data_dir: Path) -> dict[str, Any]:
    """Pack the corpus (with a promoted model: the new drop, the earlier drops replayed)."""
    ingest, promoted = given.ingest, given.promoted
    held = ingest.held_out_parts(["source", "text"])
    dev = pa.concat_tables([held["domain"]["dev"], held["general"]["dev"]])
    if promoted is None:
        train_files, earlier = ingest.train_shards, None
    else:  # the new drop, and the earlier drops to replay
        train_files = ingest.drop_train_shards
        earlier = [f for f in ingest.train_shards if f not in set(train_files)]
        if not train_files:
            raise QualityGateError(
                f"pretrain.init: promoted: the new drop has no training documents (ingest/"
                f"{ingest.artifact.key}); nothing to continue pretrain/{promoted.key} on")
    return pack(config, train_files, dev, ingest.source_names, set(ingest.general_sources),
                tok_dir / "tokenizer.json", eos_id, data_dir, earlier_files=earlier)


def run(config: PretrainConfig, inputs: Mapping[str, Artifact], out_dir: Path) -> Manifest:
    given = Inputs.of(inputs)
    at = start(config, given)
    packed = packed_streams(config, out_dir, lambda data_dir: pack_inputs(
        config, given, at.tok_dir, at.eos_id, data_dir))
    ref = reference.reference(config, given.control, tokenizer_label(config, given.promoted, at),
                              packed, out_dir, use_bf16(config))
    trained = train(config, packed, out_dir, tok_dir=at.tok_dir, base_dir=at.base_dir,
                    base_tok_dir=at.base_tok_dir, eos_id=at.eos_id, pad_id=at.pad_id, ref=ref)
    built = manifest(config, packed, trained, given.promoted, at)
    card = model_card.export_card(config, built, given.ingest.artifact.manifest)
    (PretrainOutput(out_dir).hf_dir / model_card.CARD_FILE).write_text(card)
    return built


def tokenizer_label(config: PretrainConfig, promoted: PretrainOutput | None, at: Start) -> str:
    """Which tokenizer training uses: the promoted model's, domain, extended or base."""
    if promoted is not None:
        return promoted.tokenizer
    if config.mode == "from_scratch":
        return "domain"
    return "extended" if at.base_tok_dir else "base"


def manifest(config: PretrainConfig, packed: dict[str, Any], trained: dict[str, Any],
             promoted: PretrainOutput | None, at: Start) -> Manifest:
    summary: WorkerSummary = trained["summary"]
    return Manifest(
        stage="pretrain",
        counts={
            "train_tokens": packed["train"]["tokens"], "train_docs": packed["train"]["documents"],
            "train_seqs": packed["train"]["sequences"],
            "train_shards": len(packed["train"]["shards"]),
            "document_starts": packed.get("document_starts", 0),
            "eval_tokens": packed["eval"]["tokens"], "eval_seqs": packed["eval"]["sequences"],
            "new_embeddings": summary.new_embeddings,
            "steps": summary.steps, "tokens_trained": summary.tokens_trained,
            "params": summary.params, "world_size": summary.world_size,
        },
        metrics=summary.metrics(),
        extra={"precision": "bf16" if trained["bf16"] else "fp32", "launch": trained["cmd"],
               "mode": config.mode,
               "base_model": config.base_model if config.mode == "continue" else None,
               "checkpoint": summary.checkpoint, "mixture": packed["mixture"],
               "selection": summary.selection.model_dump() if summary.selection else None,
               "tokenizer": tokenizer_label(config, promoted, at),
               "init": f"promoted pretrain/{promoted.key}" if promoted else "base"},
    )
