"""Orchestration overhead: the tiny medical run through the Prefect flow vs the same stages
called directly, and a fully cached rerun.

    .venv/bin/python -m bench.flow_overhead [--domain medical] [--profile tiny]

Each measurement is a fresh process on a fresh workdir (same samples), so both include the same
imports and the same DeepSpeed launch; the flow run is the user's path, ``dapt run``, with
Prefect in ephemeral mode (it starts a temporary server). Training speed varies by a few percent
from run to run on a shared CPU, so besides the wall-time ratio the benchmark reports the time
spent outside the stages (wall time minus the stage durations the catalog records), which is
what orchestration costs. Goals: overhead <= 5% of the run, cached rerun <= 15 s. Not a test.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DIRECT = """
import sys
from pipeline.runner import Session
Session.open(sys.argv[1], sys.argv[2], workdir=sys.argv[3]).run_all()
"""


def stage_seconds(workdir: Path) -> float:
    """Total stage time of the newest run recorded in ``workdir``'s catalog."""
    from pipeline.catalog import Catalog

    catalog = Catalog(workdir / "catalog.duckdb")
    run = catalog.runs(limit=1)[0]
    return sum(s["duration_s"] for s in catalog.stage_runs(run["run_id"]))


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domain", default="medical")
    parser.add_argument("--profile", default="tiny")
    args = parser.parse_args()
    bin_dir = Path(sys.executable).parent
    root = Path(tempfile.mkdtemp(prefix="dapt-bench-"))
    try:
        subprocess.run([bin_dir / "dapt", "samples", "build", args.domain, "--workdir",
                        str(root / "shared")], check=True, stdout=subprocess.DEVNULL)
        for name in ("direct", "flow"):
            (root / name).mkdir()
            (root / name / "samples").symlink_to(root / "shared" / "samples")
        direct = timed([sys.executable, "-c", DIRECT, args.domain, args.profile,
                        str(root / "direct")])
        direct_stages = stage_seconds(root / "direct")
        flow_cmd = [str(bin_dir / "dapt"), "run", args.domain, "--profile", args.profile,
                    "--workdir", str(root / "flow")]
        flow = timed(flow_cmd)
        flow_stages = stage_seconds(root / "flow")
        cached = timed(flow_cmd)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    outside_direct, outside_flow = direct - direct_stages, flow - flow_stages
    extra = outside_flow - outside_direct
    print(f"{args.domain}/{args.profile}: direct {direct:.1f} s, Prefect flow {flow:.1f} s, "
          f"wall ratio {flow / direct:.3f}")
    print(f"time outside stages: direct {outside_direct:.1f} s, flow {outside_flow:.1f} s; "
          f"orchestration overhead {extra:.1f} s = {extra / direct:.1%} of the run "
          f"(goal <= 5%)")
    print(f"fully cached rerun through the flow: {cached:.1f} s (goal <= 15 s)")


if __name__ == "__main__":
    main()
