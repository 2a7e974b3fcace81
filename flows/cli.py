"""The ``dapt`` command line.

    dapt domains list | show NAME [--profile P] [--set PATH=VALUE] | new NAME
                 | validate PATH [--no-paths]
    dapt samples build [DOMAIN]
    dapt server start [--port N] | stop | status     (a local Prefect server `dapt run` reuses)
    dapt run DOMAIN [--profile tiny|small|base|cpu] [--only STAGE] [--from STAGE] [--force]
                    [--init base|promoted] [--set PATH=VALUE ...] [--seeds N]
    dapt run --domain-file PATH.yaml
    dapt plan DOMAIN [--profile P] [--domain-file F] [--set PATH=VALUE ...] [--seeds N] [--json]
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
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Annotated

import typer

from flows import cli_groups, cli_history, exit_without_teardown
from flows.cli_common import (
    ENVIRONMENT,
    DomainFile,
    Profile,
    Seeds,
    Sets,
    Workdir,
    check_choice,
    check_sets,
    exit_on_sigterm,
    fail,
    prefect_env,
    use_server,
    with_seeds,
    workdir_path,
)
from pipeline import domains as domain_registry
from pipeline.config import PROFILE_NAMES, STEP_NAMES

# Plain (click) help: rich markup would show flags as `--json <bool>` and swallow `[...]`.
app = typer.Typer(help="Turn raw domain text into a domain-adapted language model.",
                  epilog=ENVIRONMENT, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None)
app.add_typer(cli_groups.domains_app, name="domains")
app.add_typer(cli_groups.samples_app, name="samples")
app.add_typer(cli_groups.server_app, name="server")
app.add_typer(cli_groups.models_app, name="models")
for command in (cli_history.runs, cli_history.lineage, cli_history.compare,
                cli_history.report, cli_history.inspect, cli_history.gc):
    app.command()(command)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dapt {metadata.version('dapt')}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")
        ] = False) -> None:
    """Turn raw domain text into a domain-adapted language model."""


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
    seeds: Seeds = None,
    workdir: Workdir = None,
) -> None:
    """Run the domain pipeline (Prefect flow; uses `dapt server start`'s server when it runs).

    Exit status: 0 done (promoted, or up to date), 3 evaluated but not promoted (a gate
    failed; the promoted model stays), 1 a stage failed, 2 bad input (before any flow
    starts), 143 stopped by SIGTERM (docs/operations.md)."""
    overrides = with_seeds(overrides, seeds)
    _check_run_options(profile, only, from_stage, init, ingest_runner, ingest_workers,
                       overrides)
    work = workdir_path(workdir)
    prefect_env(work)
    from pipeline import StageError

    d = _resolve_run(domain, domain_file, profile, overrides, init, work)
    use_server(work)
    exit_on_sigterm()
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
        raise fail(f"{exc}\n(run history: dapt runs --workdir {work})"
                    + (f"\nreport: {failed['report_path']}" if failed else ""), code=1) from None
    _close(work, _summary(work, d.name, since), report)


def _resolve_run(domain: str | None, domain_file: Path | None, profile: str,
                 overrides: list[str] | None, init: str | None, work: Path):
    """The domain, with its config, data paths and lineage checked before Prefect starts, so
    config errors are quick and clear (exit 2)."""
    try:
        d = domain_registry.select(domain, domain_file)
        resolved = d.resolve(profile, overrides)
        domain_registry.check_paths(resolved, d, work)
        from pipeline.driver import lineage, with_init

        resolved = with_init(resolved, init)
        lineage(resolved, work, d.name)  # a lineage that cannot continue says why, here
    except (domain_registry.DomainError, ValueError, FileNotFoundError) as exc:
        raise fail(str(exc)) from None
    return d


def _close(work: Path, done: dict | None, report: str | None) -> None:
    """The run's last lines: the MLflow UI, the report, the verdict; exit 3 if not promoted."""
    from pipeline.lifecycle import tracking

    if tracking.enabled():
        typer.echo(f"MLflow: {tracking.ui_command(work)}")
    if report:
        typer.echo(f"report: {report}")
    if done and done["error"]:  # the promotion verdict when the model was not promoted
        typer.secho(done["error"], fg=typer.colors.YELLOW if done["status"] == "not promoted"
                    else None)
    if done and done["status"] == "not promoted":
        raise typer.Exit(3)


def _check_run_options(profile: str, only: str | None, from_stage: str | None,
                       init: str | None, ingest_runner: str, ingest_workers: int,
                       overrides: list[str] | None) -> None:
    """The options of ``dapt run`` that need no domain, checked before anything loads."""
    check_sets(overrides)
    check_choice("--profile", profile, PROFILE_NAMES)
    check_choice("--only", only, STEP_NAMES)
    check_choice("--from", from_stage, STEP_NAMES)
    check_choice("--init", init, ("base", "promoted"))
    if only and from_stage:
        raise fail("--only and --from cannot be combined: pick one")
    if ingest_runner not in ("threads", "dask") and not ingest_runner.startswith(
            ("tcp://", "ray://")):
        raise fail(f"--ingest-runner {ingest_runner!r} is not allowed"
                    f"{domain_registry.did_you_mean(ingest_runner, ('threads', 'dask'))}; "
                    "allowed: threads, dask, tcp://HOST:PORT (a Dask scheduler), ray://HOST:PORT")
    if ingest_workers < 1:
        raise fail(f"--ingest-workers {ingest_workers}: must be at least 1")


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
    """LR x replay sweep: short continued-pretraining proxies scored against the base model
    and, where the run has a control, a control proxy per learning rate."""
    check_choice("--profile", profile, PROFILE_NAMES)
    from pipeline.config import SweepConfig
    from pipeline.lifecycle.sweep import run_sweep

    work = workdir_path(workdir)
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
        raise fail(str(exc)) from None
    typer.echo((Path(out["dir"]) / "sweep.md").read_text())
    typer.echo(f"sweep: {out['dir']}")


@app.command()
def plan(
    domain: Annotated[str | None, typer.Argument(help="A discovered domain name.")] = None,
    profile: Profile = "tiny",
    domain_file: DomainFile = None,
    overrides: Sets = None,
    seeds: Seeds = None,
    workdir: Workdir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable.")] = False,
) -> None:
    """Each step's artifact key and whether it is cached or would be built; runs nothing (the
    base model's conversion and the control are steps too; one step per training seed)."""
    overrides = with_seeds(overrides, seeds)
    check_choice("--profile", profile, PROFILE_NAMES)
    check_sets(overrides)
    work = workdir_path(workdir)
    try:
        d = domain_registry.select(domain, domain_file)
        resolved = d.resolve(profile, overrides)
        from pipeline.driver import lineage  # after the config's errors: it loads DuckDB...
        from pipeline.driver import plan as plan_steps

        rows = plan_steps(d, resolved, work, lineage(resolved, work, d.name)).rows()
    except (domain_registry.DomainError, ValueError, FileNotFoundError) as exc:
        raise fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    width = max([10, *(len(r["step"]) for r in rows)])
    for r in rows:
        typer.echo(f"{r['step']:<{width}} {r['key']}  "
                   f"{'cached' if r['cached'] else 'would build':<11}  {r['title']}")


def _scheduled(names: list[str] | None, domain_files: list[Path] | None
               ) -> list[domain_registry.Domain]:
    """The named domains and files, or every discovered domain that has a schedule."""
    try:
        chosen = [domain_registry.get(n) for n in names or []]
        chosen += [domain_registry.load_file(f) for f in domain_files or []]
        if not chosen:
            chosen = [d for d in domain_registry.discover().values() if d.spec.schedule]
    except domain_registry.DomainError as exc:
        raise fail(str(exc)) from None
    missing = [d.name for d in chosen if d.spec.schedule is None]
    if missing:
        raise fail(f"no `schedule` section in domain(s) {', '.join(missing)}")
    if not chosen:
        raise fail("no domain has a `schedule` section")
    return chosen


def _require_server(work: Path) -> None:
    """PREFECT_API_URL, else the workdir's running server (``dapt server start``), else exit 2.
    Before Prefect is imported: it reads the URL at import."""
    from flows import server

    url, _ = server.api_url(work)
    if not url:
        raise fail(f"deployments need a Prefect server, and none runs for workdir {work}: "
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
    work = workdir_path(workdir)
    domains = _scheduled(names, domain_file)
    prefect_env(work)
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
    work = workdir_path(workdir)
    domains = _scheduled(names, domain_file)
    prefect_env(work)
    _require_server(work)
    from flows.deploy import serve_domains

    serve_domains(domains, limit=limit, workdir=work)


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
