"""Tokenizer stage: a domain tokenizer trained on the ingest shards, and the base one extended.

The step: ``stage.run``; its spec: ``spec.SPEC``."""
