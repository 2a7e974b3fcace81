"""The control run: the base model continued on general text only, with the adapted model's

The step: ``stage.run``; its spec: ``spec.SPEC``."""
