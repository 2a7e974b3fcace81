"""Another model's loss on the dev sequences a pretrain artifact was scored on, computed as the
training worker scores its eval points (``worker.held_out_loss``: the first ``eval_max_seqs``
sequences of a packed dev stream, in order, the mean of the micro-batches' token losses
weighted by their sizes).

The sweep (``pipeline/lifecycle/sweep_control.py``) scores its control proxies with it on the
very sequences its grid points recorded, so that a point's dev loss over the control's is a
ratio on the same tokens. The pretrain stage scores its control with it before training, the
reference of its checkpoint rule (``reference.py``), so this module is in pretrain's (and the
control's) code version: editing it rebuilds them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.stages.pretrain.output import PretrainOutput
from pipeline.stages.pretrain.packing import PackedSequences

# The slices of the dev text and the packed stream of each (``stage.pack``).
STREAMS = {"domain": "eval", "general": "eval_general"}


def dev_sequences(artifact: PretrainOutput) -> dict[str, np.ndarray]:
    """The dev sequences the worker scored, by slice (``domain``, and ``general`` when the run
    scored general text), as the int64 token ids of the artifact's tokenizer."""
    spec = artifact.spec
    return packed_dev_sequences(artifact.path / "data", spec.config.eval_max_seqs,
                                ("domain", "general") if spec.general_eval else ("domain",))


def packed_dev_sequences(data_dir: Path, max_seqs: int, slices: tuple[str, ...]
                         ) -> dict[str, np.ndarray]:
    """The first ``max_seqs`` sequences of each slice's packed dev stream in ``data_dir`` (a
    build's packed streams, before its worker ran), as int64 token ids; an empty slice is
    left out."""
    out = {}
    for slice_ in slices:
        stream = PackedSequences(data_dir, STREAMS[slice_])
        n = min(max_seqs, stream.num_seqs)
        if n:
            out[slice_] = np.stack([stream[i] for i in range(n)]).astype(np.int64)
    return out


def dev_losses(model_dir: Path, sequences: dict[str, np.ndarray], micro_batch: int,
               bf16: bool) -> dict[str, float]:
    """The mean token loss of the HF model in ``model_dir`` on each slice's sequences (bf16
    weights where the run trained in bf16, as its engine scored)."""
    import torch
    from transformers import AutoModelForCausalLM

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.bfloat16 if bf16 else torch.float32,
        attn_implementation="sdpa").to(device).eval()
    out = {}
    with torch.no_grad():
        for slice_, seqs in sequences.items():
            total = 0.0
            for i in range(0, len(seqs), micro_batch):
                x = torch.from_numpy(seqs[i:i + micro_batch]).to(device)
                total += model(input_ids=x, labels=x).loss.float().item() * len(x)
            out[slice_] = total / len(seqs)
    return out
