"""Finetune stage: sequence classification on each of the domain's labelled tasks, for the

The step: ``stage.run``; its spec: ``spec.SPEC``."""
