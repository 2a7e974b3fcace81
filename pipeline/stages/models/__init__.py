"""Base models for continued pretraining, prepared once as content-addressed artifacts.

The step: ``stage.run``; its spec: ``spec.SPEC``."""
