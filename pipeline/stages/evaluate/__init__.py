"""Evaluate stage: held-out perplexity and bits-per-byte of the pretrained model (and, in

The step: ``stage.run``; its spec: ``spec.SPEC``."""
