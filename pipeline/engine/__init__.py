"""The engine: the content-addressed artifact store, the DuckDB catalog, code versions, live
progress, and the planner and driver that run a domain's steps. It names no stage: the steps are
data (``pipeline.stages``)."""
