"""The LR x replay sweep: short continued-pretraining proxies over a grid of learning rate and
general-replay share, each scored on held-out domain and general text against the base model
and, where the run has a control, against a control proxy of the same learning rate.

    dapt sweep medical --profile cpu [--lr 2e-5 --lr 1e-4] [--replay 0 --replay 0.25] [--steps N]

Each grid point is the domain's pretrain stage with ``lr``, ``mixture[<replay source>]`` and
``max_steps`` (the proxy budget) replaced, and checkpoint scoring on: the worker scores the base
model (step 0) and the trained one on the *dev* part of the held-out text, so the sweep never
sees the test part the report uses. A point's scores are the relative changes of the dev losses
(= of bits-per-byte: same tokenizer, same text) over the base model's. Every point is an
ordinary pretrain artifact (cached, and a run in the catalog), so rerunning a sweep with one
more value trains only the new points.

Where the run has a control (``pipeline/stages/control/spec.py: enabled``), the forgetting that
counts is the verdict's, against the control: the sweep trains a control proxy per learning
rate (the control step with the point's proxy budget, ``sweep_control.py``), scores it on the
points' own dev sequences, and each point gets ``general_change_vs_control`` and
``domain_change_vs_control``. The pick is then the point with the largest domain gain whose
general change vs the control stays within ``evaluate.max_general_degradation`` (the verdict's
forgetting gate); without a control, whose general change vs the base stays within
``pretrain.select_max_general_degradation`` (the checkpoint-choice rule). When no point is
within the limit, the pick is the one that forgets least, and the outputs say so; ``gate`` in
``sweep.json`` records the reference and limit. The table marks the Pareto front (no other
point is better on both, general taken against the same reference). A grid finds its edge:
when the pick's learning rate is the largest or smallest tried (and ``sweep.extend_edge``), the
optimum may lie beyond it, so the sweep says so and runs the picked replay share once more at
one step past that edge (the grid's own ratio there, e.g. 1e-4 after 2e-5, 1e-4: 5e-4), with
its own control proxy, then picks again over all the points; ``edge`` in the output records the
step and whether the final pick still sits on the new edge. Outputs, under
``<workdir>/sweeps/<id>/``: ``sweep.json``, ``sweep.md`` (the table) and ``sweep.png`` (domain
gain vs general change); the catalog gets a run with the table's figures as metrics
(``dapt runs``).
"""

from __future__ import annotations

import io
import json
import logging
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.config import RunConfig, SweepConfig, deep_merge
from pipeline.domains import Domain
from pipeline.driver import Session
from pipeline.engine import progress
from pipeline.engine.catalog import Catalog
from pipeline.lifecycle import sweep_control
from pipeline.stages.control import spec as control_spec
from pipeline.stages.pretrain.output import PretrainOutput

log = logging.getLogger("dapt")


def point_config(run: RunConfig, sweep: SweepConfig, lr: float, replay: float,
                 replay_source: str) -> RunConfig:
    """The run with one grid point's pretrain settings (a proxy budget, dev scoring on)."""
    steps = sweep.max_steps
    override = {"pretrain": {
        "lr": lr, "mixture": {replay_source: replay}, "max_steps": steps,
        "warmup_steps": min(run.pretrain.warmup_steps, steps - 1), "log_every": steps,
        "eval_every": steps, "checkpoint_every": steps, "select_checkpoint": True,
        "control": False, "seeds": 1}}  # a proxy ranks grid points: one seed each
    return RunConfig.model_validate(deep_merge(run.model_dump(mode="json"), override))


def replay_source_of(run: RunConfig, sweep: SweepConfig) -> str:
    if sweep.replay_source:
        names = [s.name for s in run.ingest.sources]
        if sweep.replay_source not in names:
            raise ValueError(f"sweep.replay_source {sweep.replay_source!r} is not an ingest "
                             f"source; sources are: {', '.join(names)}")
        return sweep.replay_source
    general = [s.name for s in run.ingest.sources if s.general]
    if not general:
        raise ValueError("sweep: the replay share needs a general source (ingest.sources with "
                         "general: true) or sweep.replay_source")
    return general[0]


def pareto(points: list[dict[str, Any]], general: str = "general_change") -> list[bool]:
    """True where no other point is at least as good on both changes (domain, and ``general``:
    vs the base or vs the control) and better on one."""
    def dominated(p: dict[str, Any]) -> bool:
        return any(q is not p and q["domain_change"] <= p["domain_change"]
                   and q[general] <= p[general]
                   and (q["domain_change"], q[general]) != (p["domain_change"], p[general])
                   for q in points)
    return [not dominated(p) for p in points]


def pick(points: list[dict[str, Any]], limit: float, general: str = "general_change"
         ) -> dict[str, Any]:
    """The largest domain gain (the lowest domain dev loss) among the points whose ``general``
    change is within ``limit``; when none is, the one whose general change is least."""
    ok = [p for p in points if p[general] <= limit]
    if ok:
        return min(ok, key=lambda p: p["domain_change"])
    return min(points, key=lambda p: p[general])


def gate_of(run: RunConfig, controls: sweep_control.Controls | None) -> dict[str, Any]:
    """What the pick is gated on: general change vs the control within the verdict's
    forgetting limit where a control runs (and its scores compare), else vs the base within
    the checkpoint choice's limit."""
    if controls is not None and not controls.note:
        return {"reference": "control", "field": "general_change_vs_control",
                "limit": run.evaluate.max_general_degradation,
                "setting": "evaluate.max_general_degradation"}
    return {"reference": "base", "field": "general_change",
            "limit": run.pretrain.select_max_general_degradation,
            "setting": "pretrain.select_max_general_degradation"}


def train_point(domain: Domain, base_run: RunConfig, workdir: Path, sweep: SweepConfig,
                sweep_id: str, source: str, lr: float, replay: float) -> dict[str, Any]:
    """One proxy run (or its cached artifact) and its dev-loss changes against the base."""
    run = point_config(base_run, sweep, lr, replay, source)
    point = Session(domain, run, workdir, {"sweep": sweep_id, "lr": lr, "replay": replay})
    t0 = time.perf_counter()
    point.drive(upto="pretrain")  # the proxy and its missing inputs, nothing after
    result = point.executor.results["pretrain"]
    summary = PretrainOutput(Path(result["path"])).summary
    if summary.selection is None:
        raise RuntimeError("sweep: the proxy run kept no dev scores (select_checkpoint)")
    final = max(summary.selection.candidates, key=lambda c: c.step)
    return {"lr": lr, "replay": replay, "run_id": point.run_id, "key": result["key"],
            "path": str(result["path"]), "cached": result["cache_hit"],
            "seconds": time.perf_counter() - t0,
            "domain_change": final.domain_change,
            "general_change": final.general_change if final.general_change is not None
            else 0.0, "domain_dev_loss": final.eval_loss, "general_dev_loss": final.general_loss}


def edge_step(lrs: list[float], lr: float) -> tuple[str, float] | None:
    """("high" | "low", the next lr past that edge) when ``lr`` is the grid's largest or
    smallest of at least two learning rates; the step is the grid's own ratio at that edge."""
    grid = sorted(set(lrs))
    if len(grid) < 2 or grid[0] < lr < grid[-1]:
        return None
    side, far, near = ("high", grid[-1], grid[-2]) if lr == grid[-1] else ("low", grid[0], grid[1])
    return side, float(f"{far * far / near:.3g}")  # 3 digits: 5e-4, not 5.000000000000001e-4


def run_sweep(domain: Domain, base_run: RunConfig, workdir: Path, sweep: SweepConfig
              ) -> dict[str, Any]:
    """Train every grid point (reusing cached ones) and, with a control, each learning rate's
    control proxy; extend past the grid's edge once when the pick sits on it, then write the
    table, plot and pick."""
    if base_run.pretrain.mode != "continue":
        raise ValueError("dapt sweep compares continued pretraining with the base model: it "
                         f"needs pretrain.mode: continue (profile {base_run.profile!r} has "
                         f"{base_run.pretrain.mode!r}); try --profile cpu")
    source = replay_source_of(base_run, sweep)
    sweep_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    controls = (sweep_control.Controls(domain, workdir, sweep_id)
                if control_spec.enabled(base_run) else None)
    points: list[dict[str, Any]] = []

    def add(lr: float, replay: float) -> None:
        points.append(train_point(domain, base_run, workdir, sweep, sweep_id, source, lr,
                                  replay))
        if controls is not None:
            controls.compare(points[-1], point_config(base_run, sweep, lr, replay, source))
        p = points[-1]
        log.info("sweep: lr %g replay %g: domain %+.2f%%, general %+.2f%%%s", lr, replay,
                 100 * p["domain_change"], 100 * p["general_change"],
                 f" ({100 * p['general_change_vs_control']:+.2f}% vs control)"
                 if "general_change_vs_control" in p else "")

    bar = progress.track("sweep", len(sweep.lrs) * len(sweep.replay), "points")
    for lr in sweep.lrs:
        for replay in sweep.replay:
            add(lr, replay)
            bar.update(lr=lr, replay=replay)
    bar.close()
    gate = gate_of(base_run, controls)
    best = pick(points, gate["limit"], gate["field"])
    step = edge_step(sweep.lrs, best["lr"]) if sweep.extend_edge else None
    edge = None
    if step is not None:
        side, lr = step
        log.info("sweep: the pick's lr %g is the grid's %s edge: trying lr %g (replay %g)",
                 best["lr"], "upper" if side == "high" else "lower", lr, best["replay"])
        grid_pick = {"lr": best["lr"], "replay": best["replay"]}
        add(lr, best["replay"])
        best = pick(points, gate["limit"], gate["field"])
        edge = {"side": side, "lr": lr, "ratio": lr / grid_pick["lr"], "grid_pick": grid_pick,
                "still_on_edge": best["lr"] == lr}
    gate["met"] = best[gate["field"]] <= gate["limit"]
    for p, front in zip(points, pareto(points, gate["field"]), strict=True):
        p["pareto"] = front
    out = summary(domain, base_run, workdir, sweep, sweep_id, source, points, controls, gate,
                  best, edge)
    write_outputs(out, Path(out["dir"]))
    record(Catalog(workdir / "catalog.duckdb"), out)
    return out


def summary(domain: Domain, run: RunConfig, workdir: Path, sweep: SweepConfig, sweep_id: str,
            source: str, points: list[dict[str, Any]],
            controls: sweep_control.Controls | None, gate: dict[str, Any],
            best: dict[str, Any], edge: dict[str, Any] | None) -> dict[str, Any]:
    """The sweep's record (``sweep.json``): the grid, the points, the controls, the pick and
    what it was gated on (``gate``: reference, limit, its setting, whether the pick met it)."""
    return {"sweep_id": sweep_id, "domain": domain.name, "profile": run.profile,
            "replay_source": source, "max_steps": sweep.max_steps,
            "tokens_per_point": sweep.max_steps * run.pretrain.micro_batch_size
            * run.pretrain.grad_accum_steps * run.pretrain.seq_len,
            "limit": gate["limit"], "reference": gate["reference"], "gate": gate,
            "controls": list(controls.by_lr.values()) if controls else [],
            "control_note": controls.note if controls else None, "points": points,
            "pick": {"lr": best["lr"], "replay": best["replay"]}, "edge": edge,
            "dir": str(workdir / "sweeps" / sweep_id)}


def edge_text(out: dict[str, Any]) -> str:
    """The edge extension in words (empty when the grid's pick was inside it)."""
    edge = out.get("edge")
    if not edge:
        return ""
    g = edge["grid_pick"]
    text = (f"The grid's pick (lr {g['lr']:g}, replay {g['replay']:g}) sat on its "
            f"{'largest' if edge['side'] == 'high' else 'smallest'} learning rate, so lr "
            f"{edge['lr']:g} (x{edge['ratio']:.3g}) was tried once beyond it: ")
    if edge["still_on_edge"]:
        return text + ("the pick is now that point, still on the edge: the best lr may lie "
                       "further out.")
    return text + "the pick stays inside the tried range."


def pct(p: dict[str, Any], name: str) -> str:
    return f"{p[name]:+.2%}" if p.get(name) is not None else "-"


def gate_text(out: dict[str, Any]) -> str:
    """What the pick was gated on, in words (with sweeps written before the gate existed)."""
    gate = out.get("gate") or {"reference": "base", "limit": out["limit"],
                               "setting": "pretrain.select_max_general_degradation"}
    against = ("the control (the base model continued on general text only with the point's "
               "learning rate and budget, scored on the point's own dev sequences)"
               if gate["reference"] == "control" else "the base model")
    text = (f"Pick: the largest domain gain with general change vs {against} <= "
            f"{gate['limit']:.1%} (`{gate['setting']}`): **lr {out['pick']['lr']:g}, replay "
            f"{out['pick']['replay']:g}**. ")
    if gate.get("met") is False:
        text += ("No point met that limit: the pick is the point with the least general change "
                 f"vs {'the control' if gate['reference'] == 'control' else 'the base'}. ")
    if out.get("control_note"):
        text += f"No comparison with the control: {out['control_note']}. "
    return text


def table_markdown(out: dict[str, Any]) -> str:
    controls = ", ".join(f"lr {c['lr']:g} `{c['run_id']}`" for c in out.get("controls", []))
    lines = [f"# LR x replay sweep: {out['domain']} ({out['profile']})", "",
             f"{len(out['points'])} proxy runs of {out['max_steps']} steps "
             f"({out['tokens_per_point']:,} tokens each), replaying `{out['replay_source']}`; "
             "changes of the dev-part loss (= bits/byte) against the base model"
             + (f" and against a control proxy per learning rate ({controls})" if controls
                else "") + ". " + (gate_text(out) + edge_text(out)).rstrip(), "",
             "| lr | replay | domain change | general change | general vs control | "
             "domain vs control | Pareto | pick | run | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for p in out["points"]:
        chosen = (p["lr"], p["replay"]) == (out["pick"]["lr"], out["pick"]["replay"])
        lines.append(f"| {p['lr']:g} | {p['replay']:g} | {pct(p, 'domain_change')} | "
                     f"{pct(p, 'general_change')} | {pct(p, 'general_change_vs_control')} | "
                     f"{pct(p, 'domain_change_vs_control')} | "
                     f"{'yes' if p['pareto'] else ''} | "
                     f"{'**yes**' if chosen else ''} | `{p['run_id']}` | "
                     f"{p['seconds']:.0f}{' (cached)' if p['cached'] else ''} |")
    return "\n".join(lines) + "\n"


def plot_png(out: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    pts = out["points"]
    vs_control = out.get("reference") == "control"
    field = "general_change_vs_control" if vs_control else "general_change"
    ax.scatter([100 * p[field] for p in pts], [-100 * p["domain_change"] for p in pts],
               c=["tab:orange" if p["pareto"] else "tab:blue" for p in pts])
    for p in pts:
        ax.annotate(f"lr {p['lr']:g}, replay {p['replay']:g}",
                    (100 * p[field], -100 * p["domain_change"]), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    front = sorted((p for p in pts if p["pareto"]), key=lambda p: p[field])
    ax.plot([100 * p[field] for p in front], [-100 * p["domain_change"] for p in front],
            color="tab:orange", linestyle="--", label="Pareto front")
    ax.axvline(100 * out["limit"], color="grey", linestyle=":", label="general limit")
    ax.set(xlabel=("general change vs control, same lr (%, lower is better)" if vs_control
                   else "general change vs base (%, lower is better)"),
           ylabel="domain gain vs base (%, higher is better)",
           title=f"LR x replay sweep: {out['domain']} (dev part)")
    ax.legend()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def write_outputs(out: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "sweep.json").write_text(json.dumps(out, indent=2))
    (out_dir / "sweep.md").write_text(table_markdown(out) + "\n![sweep](sweep.png)\n")
    (out_dir / "sweep.png").write_bytes(plot_png(out))


def record(catalog: Catalog, out: dict[str, Any]) -> None:
    """The sweep as a catalog run: its grid as params, each point's changes as metrics."""
    catalog.start_run(out["sweep_id"], out["domain"], out["profile"],
                      {"kind": "sweep", "points": len(out["points"]),
                       "max_steps": out["max_steps"], "reference": out["reference"]})
    metrics = {"pick_lr": out["pick"]["lr"], "pick_replay": out["pick"]["replay"],
               "pick_within_limit": float(out["gate"]["met"])}
    if out.get("edge"):
        metrics.update({"edge_lr": out["edge"]["lr"],
                        "edge_still_on_edge": float(out["edge"]["still_on_edge"])})
    for p in out["points"]:
        tag = f"lr={p['lr']:g},replay={p['replay']:g}"
        for name in ("domain_change", "general_change", "general_change_vs_control",
                     "domain_change_vs_control"):
            if p.get(name) is not None:
                metrics[f"{tag}.{name}"] = p[name]
    catalog.record_metrics(out["sweep_id"], "sweep", out["sweep_id"], metrics)
    catalog.finish_run(out["sweep_id"], "completed",
                       report_path=str(Path(out["dir"]) / "sweep.md"))
