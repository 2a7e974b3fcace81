"""Multi-node launch helpers: turn a scheduler's host list into a DeepSpeed hostfile.

DeepSpeed's launcher reads a hostfile (one ``HOST slots=N`` line per node) and reaches every
node over ssh (pdsh). This module builds that file from what the scheduler already knows:

- SLURM: ``SLURM_JOB_NODELIST`` in its compact form (``gpu[01-03,07],cpu5``),
- Kubernetes: ``DAPT_K8S_HOSTS``, a comma list of pod DNS names that the launch script builds
  from an Indexed Job's headless Service (``dapt-pretrain-0.dapt-pretrain,...``).

From a launch script (``infra/slurm/pretrain.sbatch``, ``infra/k8s/deepspeed-multinode.yaml``)::

    python -m pipeline.stages.pretrain.launch hostfile --slots 8 --out "$DAPT_HOSTFILE"

then point ``pretrain.hostfile`` at that file and set ``pretrain.num_nodes``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Mapping
from itertools import product
from pathlib import Path

NODELIST_VAR = "SLURM_JOB_NODELIST"
K8S_HOSTS_VAR = "DAPT_K8S_HOSTS"

_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")
_NAME_PART = re.compile(r"^[A-Za-z0-9._-]*$")


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets: ``a[1,2],b`` -> ``["a[1,2]", "b"]``."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return items


def _expand_group(group: str, nodelist: str) -> list[str]:
    """``01-03,07`` -> ``["01", "02", "03", "07"]``; the width of the lower bound is kept."""
    out = []
    for part in group.split(","):
        m = _RANGE.match(part)
        if not m:
            raise ValueError(
                f"malformed nodelist {nodelist!r}: {part!r} in [{group}] is not a number "
                "or a range like 01-04"
            )
        lo, hi = m.group(1), m.group(2) if m.group(2) is not None else m.group(1)
        if int(hi) < int(lo):
            raise ValueError(f"malformed nodelist {nodelist!r}: range {part!r} runs backwards")
        out.extend(str(n).zfill(len(lo)) for n in range(int(lo), int(hi) + 1))
    return out


def _expand_item(item: str, nodelist: str) -> list[str]:
    # Alternate literal text and bracket groups: "rack[1-2]-n[01-02]" ->
    # ["rack"], ["1", "2"], ["-n"], ["01", "02"]; hosts are their cartesian product, in order.
    pieces: list[list[str]] = []
    rest = item
    while rest:
        open_at = rest.find("[")
        literal = rest if open_at < 0 else rest[:open_at]
        if "]" in literal or not _NAME_PART.match(literal):
            raise ValueError(
                f"malformed nodelist {nodelist!r}: unexpected character in {item!r} "
                "(host names are letters, digits, '.', '-', '_')"
            )
        pieces.append([literal])
        if open_at < 0:
            break
        close_at = rest.find("]", open_at)
        if close_at < 0 or "[" in rest[open_at + 1:close_at]:
            raise ValueError(f"malformed nodelist {nodelist!r}: unbalanced '[' in {item!r}")
        pieces.append(_expand_group(rest[open_at + 1:close_at], nodelist))
        rest = rest[close_at + 1:]
    return ["".join(parts) for parts in product(*pieces)]


def expand_nodelist(nodelist: str) -> list[str]:
    """Expand SLURM's compact host list: ``gpu[01-03,07],cpu5`` -> gpu01 gpu02 gpu03 gpu07 cpu5.

    Zero padding is kept (the width of a range's lower bound), and several bracket groups in one
    name expand as a cartesian product in order (``rack[1-2]-n[01-02]`` -> 4 hosts).
    """
    text = nodelist.strip()
    if not text:
        raise ValueError("malformed nodelist: it is empty")
    hosts: list[str] = []
    for item in _split_top_level(text):
        if not item:
            raise ValueError(f"malformed nodelist {nodelist!r}: empty entry between commas")
        hosts.extend(_expand_item(item, nodelist))
    return hosts


def render_hostfile(hosts: list[str], slots: int) -> str:
    """DeepSpeed's hostfile: one ``HOST slots=N`` line per host, in order (the first is rank 0)."""
    if not hosts:
        raise ValueError("hostfile needs at least one host")
    if slots < 1:
        raise ValueError(f"slots must be at least 1, got {slots}")
    dupes = sorted({h for h in hosts if hosts.count(h) > 1})
    if dupes:
        raise ValueError(f"hostfile hosts must be unique; repeated: {', '.join(dupes)}")
    bad = [h for h in hosts if not h or any(c.isspace() for c in h)]
    if bad:
        raise ValueError(f"host names must be non-empty without whitespace, got {bad}")
    return "".join(f"{host} slots={slots}\n" for host in hosts)


def hosts_from_env(env: Mapping[str, str]) -> list[str]:
    """The job's hosts: ``SLURM_JOB_NODELIST`` if set, else ``DAPT_K8S_HOSTS`` (comma list)."""
    nodelist = env.get(NODELIST_VAR, "").strip()
    if nodelist:
        return expand_nodelist(nodelist)
    k8s = [h.strip() for h in env.get(K8S_HOSTS_VAR, "").split(",") if h.strip()]
    if k8s:
        return k8s
    raise ValueError(
        f"no host list in the environment: set {NODELIST_VAR} (SLURM sets it inside a job) or "
        f"{K8S_HOSTS_VAR} (comma-separated pod DNS names, e.g. from an Indexed Job's Service)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.stages.pretrain.launch",
                                     description="Multi-node launch helpers for DeepSpeed.")
    commands = parser.add_subparsers(dest="command", required=True)
    hostfile = commands.add_parser(
        "hostfile", help=f"write a DeepSpeed hostfile from ${NODELIST_VAR} or ${K8S_HOSTS_VAR}")
    hostfile.add_argument("--slots", type=int, required=True, help="GPUs (ranks) per node.")
    hostfile.add_argument("--out", type=Path, default=None,
                          help="Write here (parent directories are created); default: stdout.")
    args = parser.parse_args(argv)
    try:
        text = render_hostfile(hosts_from_env(os.environ), args.slots)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
