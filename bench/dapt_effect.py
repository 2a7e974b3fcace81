"""Did domain pretraining help? Runs ``dapt run DOMAIN --profile cpu`` (the real SmolLM2-135M,
continued on the domain on this CPU) for each domain, times it, and prints base, control and
adapted: held-out domain and general bits-per-byte with bootstrap standard errors, per source,
and the downstream macro-F1 (mean +- std over seeds), against the issue's goals:

- domain bits/byte >= 10% lower than the base and >= 5% lower than the control;
- general bits/byte at most 3% higher than the base;
- downstream macro-F1 of adapted >= base and >= control;
- the whole run <= 60 minutes per domain (the first domain also trains the shared control).

    .venv/bin/python -m bench.dapt_effect [--domains medical legal finance] [--profile cpu]
        [--workdir DIR] [--json OUT.json]

It runs the CLI as a user would (Prefect flow included). A run that fails its quality gate still
has its figures: evaluate writes them before it raises, into the failed build's directory, and
this script reads them there and says so. Not a test: it trains real models for an hour each.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOALS = {"domain_vs_base": -0.10, "domain_vs_control": -0.05, "general_vs_base": 0.03,
         "minutes": 60.0}


def evaluation_of(work: Path, domain: str) -> tuple[dict, dict, bool]:
    """(metrics.json of the domain's latest evaluate, its run's catalog row, whether the
    evaluate build failed its gate)."""
    import duckdb

    con = duckdb.connect(str(work / "catalog.duckdb"), read_only=True)
    run = con.execute("SELECT run_id, status, error FROM runs WHERE domain = ? AND "
                      "params::VARCHAR NOT LIKE '%sweep%' ORDER BY started_at DESC LIMIT 1",
                      [domain]).fetchone()
    stages = con.execute("SELECT stage, artifact_key, status, cache_hit, duration_s FROM "
                         "stage_runs WHERE run_id = ? ORDER BY started_at", [run[0]]).fetchall()
    con.close()
    info = {"run_id": run[0], "status": run[1], "error": run[2],
            "stages": [dict(zip(("stage", "key", "status", "cache_hit", "seconds"), s,
                                strict=True)) for s in stages]}
    ev = next(s for s in info["stages"] if s["stage"] == "evaluate")
    path = work / "artifacts" / "evaluate" / ev["key"] / "metrics.json"
    failed = not path.exists()
    if failed:  # the gate failed: the figures are in the failed build's directory
        path = sorted((work / "artifacts" / "evaluate").glob(f".failed-{ev['key']}-*"),
                      key=lambda p: p.stat().st_mtime)[-1] / "metrics.json"
    return json.loads(path.read_text()), info, failed


def measure(domain: str, profile: str, work: Path) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "run", domain, "--profile",
                           profile, "--workdir", str(work)], cwd=ROOT, env=env)
    minutes = (time.perf_counter() - t0) / 60
    evaluation, info, failed = evaluation_of(work, domain)
    return {"domain": domain, "profile": profile, "minutes": minutes,
            "exit_code": proc.returncode, "gate_failed": failed, **info,
            "metrics": evaluation["metrics"], "verdict": evaluation["verdict"],
            "per_source": evaluation["per_source"],
            "base_per_source": evaluation["base_per_source"],
            "control_per_source": evaluation.get("control_per_source")}


def report(r: dict) -> list[str]:
    m = r["metrics"]

    def pm(name: str) -> str:
        se = m.get(f"{name}_se")
        return f"{m[name]:+.2%}" + (f" +- {se:.2%}" if se is not None else "")

    lines = [f"\n{r['domain']} ({r['profile']}), run {r['run_id']}: {r['minutes']:.1f} min, "
             f"exit {r['exit_code']}" + (" (a gate failed: figures from the failed evaluate "
                                         "build)" if r["gate_failed"] else ""),
             "  stages: " + ", ".join(f"{s['stage']} {s['seconds']:.0f}s"
                                      + (" (cached)" if s["cache_hit"] else "")
                                      for s in r["stages"]),
             f"  verdict: {r['verdict']['text']}"]
    per, base, ctrl = r["per_source"], r["base_per_source"], r["control_per_source"] or {}
    lines.append("  bits/byte            base     control  adapted   tokens")
    for key in per:
        lines.append(f"  {key:<18} {base[key]['bits_per_byte']:.4f}   "
                     + (f"{ctrl[key]['bits_per_byte']:.4f}   " if key in ctrl else "   -     ")
                     + f"{per[key]['bits_per_byte']:.4f}   {per[key]['tokens']:>7,}")
    lines.append(f"  domain vs base {pm('domain_bits_per_byte_change')} (goal <= "
                 f"{GOALS['domain_vs_base']:+.0%}), vs control "
                 + (pm("domain_change_vs_control") if "domain_change_vs_control" in m else "-")
                 + f" (goal <= {GOALS['domain_vs_control']:+.0%}); general vs base "
                 + (pm("general_bits_per_byte_change") if "general_bits_per_byte_change" in m
                    else "-") + f" (goal <= {GOALS['general_vs_base']:+.0%})")
    f1 = {k: (m.get(f"finetune_{p}macro_f1"), m.get(f"finetune_{p}macro_f1_std"))
          for k, p in (("base", "base_"), ("control", "control_"), ("adapted", ""))}
    lines.append("  macro-F1 (mean +- std over seeds): " + ", ".join(
        f"{k} {v[0]:.3f} +- {v[1]:.3f}" for k, v in f1.items() if v[0] is not None)
        + f"; adapted - base {m.get('finetune_macro_f1_gain', float('nan')):+.3f} +- "
        f"{m.get('finetune_macro_f1_gain_std', float('nan')):.3f}, adapted - control "
        f"{m.get('finetune_macro_f1_gain_vs_control', float('nan')):+.3f} +- "
        f"{m.get('finetune_macro_f1_gain_vs_control_std', float('nan')):.3f}")
    goals = {
        "domain >= 10% below base": m["domain_bits_per_byte_change"] <= GOALS["domain_vs_base"],
        "domain >= 5% below control": m.get("domain_change_vs_control", 0.0)
        <= GOALS["domain_vs_control"],
        "general <= +3% vs base": m.get("general_bits_per_byte_change", 0.0)
        <= GOALS["general_vs_base"],
        "macro-F1 adapted >= base": m.get("finetune_macro_f1_gain", -1.0) >= 0,
        "macro-F1 adapted >= control": m.get("finetune_macro_f1_gain_vs_control", -1.0) >= 0,
        "<= 60 minutes": r["minutes"] <= GOALS["minutes"],
    }
    lines.append("  goals: " + "; ".join(f"{k}: {'met' if v else 'MISSED'}"
                                         for k, v in goals.items()))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domains", nargs="+", default=["medical", "legal", "finance"])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--workdir", type=Path, default=ROOT / "dapt-work")
    parser.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    args = parser.parse_args()
    work = args.workdir.resolve()
    if not (work / "samples").exists():
        subprocess.run([sys.executable, "-m", "flows.cli", "samples", "build", "--workdir",
                        str(work)], cwd=ROOT, check=True)
    results = []
    for name in args.domains:
        results.append(measure(name, args.profile, work))
        print("\n".join(report(results[-1])), flush=True)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
