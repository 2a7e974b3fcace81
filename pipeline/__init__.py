"""dapt's library: stages as plain functions ``run(config, inputs, out_dir) -> Manifest``.

Nothing in this package imports Prefect; ``flows/`` wires the stages together.
"""

import os
import sys

# DeepSpeed JIT-compiles its CPU ops (~40 s for shm_comm, ~70 s for cpu_adam) into
# TORCH_EXTENSIONS_DIR, by default the user's ~/.cache. The Makefile points it next to the venv;
# setting the same place here, before any module of this package imports DeepSpeed, means
# `dapt` run from an activated venv, a notebook or a training rank (this package is imported
# before `deepspeed` in pipeline.stages.pretrain.worker) finds the ops `make install` compiled.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(sys.prefix, "torch_extensions"))


class QualityGateError(RuntimeError):
    """A quality gate between stages failed: the run stops rather than train on garbage."""


class StageError(RuntimeError):
    """A stage failed; the message names the stage and the artifact key it was building."""


class GateFailure(QualityGateError):
    """The evaluated model fails a promotion gate (``evaluate.min_domain_gain``,
    ``evaluate.max_general_degradation``): a verdict on the model, not a broken run."""


class NotPromoted(StageError):
    """Evaluate's gates failed: the run ends without promoting its model
    (pipeline.lifecycle.promotion)."""
