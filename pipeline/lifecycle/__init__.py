"""Around runs: promotion of a domain's model, the LR x replay sweep, reports, and operations on
a workdir (lineage, compare, inspect, gc)."""
