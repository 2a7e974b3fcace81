"""dapt's library: stages as plain functions ``run(config, inputs, out_dir) -> Manifest``.

Nothing in this package imports Prefect; ``flows/`` wires the stages together.
"""


class QualityGateError(RuntimeError):
    """A quality gate between stages failed: the run stops rather than train on garbage."""


class StageError(RuntimeError):
    """A stage failed; the message names the stage and the artifact key it was building."""
