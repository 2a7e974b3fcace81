"""The general text's own ingest: the general sources through ingest's cleaning with one fixed,
domain-independent policy, read by the control run; shared by every domain.

The step: ``stage.run``; its spec: ``spec.SPEC``; its reader: ``IngestOutput``
(``pipeline/stages/ingest/artifact.py``), as for ingest's own artifact."""
