"""Orchestration overhead: the tiny medical run through the Prefect flow vs the same stages
called directly, and a fully cached rerun; the flow both in Prefect's ephemeral mode and against
a running local server (``dapt server start``).

    .venv/bin/python -m bench.flow_overhead [--domain medical] [--profile tiny]
                                            [--modes ephemeral,server] [--parallel]

``--built DIR [--domain-file F]`` times only fully cached reruns of a run that completed in DIR,
server and ephemeral mode alternating (``--repeat`` each): a cheap check of the cached-rerun goal.
``--modes server`` skips the full ephemeral run (one tiny run less); the ephemeral cached rerun is
timed either way, on the server mode's artifacts with the server stopped. ``--parallel`` runs the
full runs at the same time (on a machine others load, they then see the same load); the cached
reruns always run alone.

Each measurement is a fresh process on a fresh workdir (same samples), so all include the same
imports and the same DeepSpeed launch; the flow run is the user's path, ``dapt run``:

- ephemeral: no server; Prefect starts a temporary one for each run (``PREFECT_API_URL`` unset);
- server: ``dapt server start`` in the workdir first (its start-up is reported, not counted),
  then ``dapt run`` finds and uses it.

Training speed varies by a few percent from run to run on a shared CPU, so besides the wall-time
ratio the benchmark reports the time spent outside the stages (wall time minus the stage
durations the catalog records), which is what orchestration costs. Goals, against a running
server: overhead <= 5% of the run, fully cached rerun <= 5 s. Not a test.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

DIRECT = """
import sys
from pipeline.driver import Session
Session.open(sys.argv[1], sys.argv[2], workdir=sys.argv[3]).run_all()
"""
DAPT = [sys.executable, "-m", "flows.cli"]
ENV = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
# ephemeral mode's temporary server on a loaded machine: 90 s (dapt's default) was seen to expire
ENV.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "600")


def stage_seconds(workdir: Path) -> float:
    """Total stage time of the newest run recorded in ``workdir``'s catalog."""
    from pipeline.engine.catalog import Catalog

    catalog = Catalog(workdir / "catalog.duckdb")
    run = catalog.runs(limit=1)[0]
    return sum(s["duration_s"] for s in catalog.stage_runs(run["run_id"]))


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   cwd=ROOT, env=ENV)
    return time.perf_counter() - start


def timed_alone(cmd: list[str]) -> tuple[float, float, float]:
    """(wall s, CPU s of the command and its children, 1-minute load average before): on a
    machine others load, CPU time says what the command cost where wall time cannot. A local
    server's own CPU is not included (it is not our child)."""
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = timed(cmd)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime), load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domain", default="medical")
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--modes", default="ephemeral,server",
                        help="Flow modes to measure, comma-separated: ephemeral, server.")
    parser.add_argument("--parallel", action="store_true",
                        help="Run the full (uncached) runs at the same time, so they share the "
                             "machine's load; the cached reruns still run alone.")
    parser.add_argument("--built", type=Path, default=None,
                        help="Only the cached reruns, on this workdir where a run of the domain "
                             "(or --domain-file) completed; the workdir is left as it was.")
    parser.add_argument("--domain-file", type=Path, default=None,
                        help="With --built: the domain YAML that run used.")
    parser.add_argument("--repeat", type=int, default=3, help="With --built: reruns per mode.")
    args = parser.parse_args()
    if args.built:
        cached_only(args)
        return
    modes = args.modes.split(",")
    if not set(modes) <= {"ephemeral", "server"}:
        parser.error(f"--modes {args.modes!r}: allowed: ephemeral, server")
    root = Path(tempfile.mkdtemp(prefix="dapt-bench-"))
    works = {name: root / name for name in ("direct", *modes)}
    run = {m: [*DAPT, "run", args.domain, "--profile", args.profile, "--workdir", str(w)]
           for m, w in works.items()}
    run["direct"] = [sys.executable, "-c", DIRECT, args.domain, args.profile,
                     str(works["direct"])]
    figures: dict[str, dict[str, float]] = {name: {} for name in works}
    figures["load"] = {"start": os.getloadavg()[0]}
    try:
        for name in ("medical", "general"):  # general: the domains' replay text
            subprocess.run([*DAPT, "samples", "build", name, "--workdir", str(root / "shared")],
                           check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
        for work in works.values():
            work.mkdir()
            (work / "samples").symlink_to(root / "shared" / "samples")
        if "server" in modes:
            figures["server"]["server_start"] = timed(
                [*DAPT, "server", "start", "--workdir", str(works["server"]), "--port", "0"])
        try:
            with ThreadPoolExecutor(max_workers=len(works) if args.parallel else 1) as pool:
                walls = {name: pool.submit(timed, run[name]) for name in works}
                for name, wall in walls.items():
                    figures[name]["wall"] = wall.result()
                    figures[name]["stages"] = stage_seconds(works[name])
            for mode in modes:
                figures[mode]["cached"], figures[mode]["cached_cpu"], figures[mode][
                    "cached_load"] = timed_alone(run[mode])
        finally:
            if "server" in modes:
                subprocess.run([*DAPT, "server", "stop", "--workdir", str(works["server"])],
                               cwd=ROOT, stdout=subprocess.DEVNULL)
        if "server" in modes:  # the same cached rerun with the server stopped: ephemeral mode
            (figures["server"]["cached_ephemeral"], figures["server"]["cached_ephemeral_cpu"],
             figures["server"]["cached_ephemeral_load"]) = timed_alone(run["server"])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report(args, figures)


def _show(mode: str, timing: tuple[float, float, float]) -> None:
    wall, cpu, load = timing
    print(f"{mode}: wall {wall:.1f} s, CPU {cpu:.1f} s, load {load:.1f}", flush=True)


def cached_only(args: argparse.Namespace) -> None:
    """Fully cached reruns of a completed run, against a server started for them and in
    ephemeral mode, alternating so both see the same load."""
    work = args.built.resolve()
    target = (["--domain-file", str(args.domain_file.resolve())] if args.domain_file
              else [args.domain, "--profile", args.profile])
    cmd = [*DAPT, "run", *target, "--workdir", str(work)]
    start = [*DAPT, "server", "start", "--workdir", str(work), "--port", "0"]
    print(f"load average at the start: {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)")
    print(f"`dapt server start`: {timed(start):.1f} s", flush=True)
    runs: dict[str, list[tuple[float, float, float]]] = {"server": [], "ephemeral": []}
    try:
        for i in range(args.repeat):
            runs["server"].append(timed_alone(cmd))
            _show("server", runs["server"][-1])
            subprocess.run([*DAPT, "server", "stop", "--workdir", str(work)], cwd=ROOT,
                           stdout=subprocess.DEVNULL, check=True)
            runs["ephemeral"].append(timed_alone(cmd))
            _show("ephemeral", runs["ephemeral"][-1])
            if i + 1 < args.repeat:
                subprocess.run(start, cwd=ROOT, stdout=subprocess.DEVNULL, check=True)
    finally:
        subprocess.run([*DAPT, "server", "stop", "--workdir", str(work)], cwd=ROOT,
                       stdout=subprocess.DEVNULL)
    for mode, timings in runs.items():
        goal = " (goal <= 5 s)" if mode == "server" else ""
        walls = ", ".join(f"{w:.1f}" for w, _, _ in timings)
        cpus = ", ".join(f"{c:.1f}" for _, c, _ in timings)
        loads = ", ".join(f"{x:.1f}" for _, _, x in timings)
        print(f"{mode}: fully cached rerun {walls} s{goal}; CPU {cpus} s; load {loads}")


def report(args: argparse.Namespace, figures: dict[str, dict[str, float]]) -> None:
    direct = figures.pop("direct")
    outside_direct = direct["wall"] - direct["stages"]
    print(f"load average at the start: {figures.pop('load')['start']:.1f} (machine: "
          f"{os.cpu_count()} CPUs)")
    print(f"{args.domain}/{args.profile}{' (full runs in parallel)' if args.parallel else ''}: "
          f"direct {direct['wall']:.1f} s ({outside_direct:.1f} s outside stages)")
    for mode, f in figures.items():
        outside = f["wall"] - f["stages"]
        extra = outside - outside_direct
        goal = " (goal <= 5%)" if mode == "server" else ""
        ratio = f["wall"] / direct["wall"]
        print(f"{mode}: Prefect flow {f['wall']:.1f} s, wall ratio {ratio:.3f}; "
              f"{outside:.1f} s outside stages; orchestration overhead {extra:.1f} s = "
              f"{extra / direct['wall']:.1%} of the run{goal}")
        goal = " (goal <= 5 s)" if mode == "server" else ""
        print(f"{mode}: fully cached rerun {f['cached']:.1f} s{goal}; CPU {f['cached_cpu']:.1f} s, "
              f"load average {f['cached_load']:.1f}")
        if "server_start" in f:
            print(f"{mode}: `dapt server start` took {f['server_start']:.1f} s (once, not "
                  "counted above)")
        if "cached_ephemeral" in f:
            print(f"ephemeral: fully cached rerun {f['cached_ephemeral']:.1f} s (the server "
                  f"mode's workdir, server stopped); CPU {f['cached_ephemeral_cpu']:.1f} s, "
                  f"load average {f['cached_ephemeral_load']:.1f}")


if __name__ == "__main__":
    main()
