"""What the CLI's command modules share: option types, the workdir, choices checked
before anything loads, the catalog, exits, and Prefect's environment."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pipeline import domains as domain_registry
from pipeline.config import PROFILE_NAMES
from pipeline.engine import progress

if TYPE_CHECKING:  # the catalog (DuckDB) and the runner load on use: bad input fails fast
    from pipeline.engine.catalog import Catalog


ENVIRONMENT = """Environment: DAPT_WORKDIR is the default --workdir (else ./dapt-work);
PREFECT_API_URL sends runs and deployments to that Prefect server (else the workdir's `dapt
server start` server, else a temporary one); MLFLOW_TRACKING_URI is the MLflow tracking store
runs are logged to (else <workdir>/mlflow/mlflow.db); DAPT_TRACKING=off logs nothing to MLflow.
Exit status: 0 done, 1 a stage failed, 2 bad input, 3 (dapt run) evaluated
but not promoted."""

Workdir = Annotated[Path | None, typer.Option(
    "--workdir", help="Artifacts, catalog and samples live here.", envvar="DAPT_WORKDIR",
    show_envvar=True, show_default="./dapt-work")]
Sets = Annotated[list[str] | None, typer.Option(
    "--set", metavar="PATH=VALUE", help="Override one field of the resolved config, e.g. "
    "pretrain.lr=3e-4 or ingest.pii.types='[email,phone]' (value parsed as YAML; "
    "repeatable; applied after the profile, validated like the YAML).")]
Seeds = Annotated[int | None, typer.Option(
    "--seeds", min=1, help="Training seeds per arm (adapted, control): the same as --set "
    "pretrain.seeds=N; evaluate reports the spread over seeds and an interval of the gain.")]
Profile = Annotated[str, typer.Option(help=f"Size dial: {', '.join(PROFILE_NAMES)}.")]
DomainFile = Annotated[Path | None, typer.Option(help="A domain YAML not installed.")]


def workdir_path(workdir: Path | None) -> Path:
    work = (workdir or Path("dapt-work")).resolve()  # DAPT_WORKDIR arrives as --workdir
    if work.exists() and not work.is_dir():
        raise fail(f"--workdir {work}: a file, not a directory")
    return work


def check_choice(option: str, value: str | None, allowed: Sequence[str]) -> None:
    """A bad choice exits 2 naming the option, the allowed values and the closest one."""
    if value is not None and value not in allowed:
        raise fail(f"{option} {value!r} is not allowed"
                    f"{domain_registry.did_you_mean(value, allowed)}; allowed: "
                    f"{', '.join(allowed)}")


def open_catalog(work: Path) -> Catalog:
    """The workdir's catalog; a clear error when nothing has run there yet."""
    from pipeline.engine.catalog import Catalog

    path = work / "catalog.duckdb"
    if not path.exists():
        raise fail(f"no catalog at {path}: nothing has run in this workdir yet")
    return Catalog(path)


def fail(message: str, code: int = 2) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def prefect_env(workdir: Path) -> None:
    """Prefect reads its settings at import: set quiet, local defaults before importing it.
    Where progress goes to log lines (not a terminal), huggingface_hub's bars (transformers'
    "Loading weights") are off too: in a log file each redraw is a line of noise."""
    if progress.mode() != "bars":
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_RESULTS_LOCAL_STORAGE_PATH", str(workdir / "prefect-results"))
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "dapt")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")


def use_server(work: Path) -> None:
    """Point Prefect at the workdir's running server (``dapt server start``), or say in one line
    that this run falls back to ephemeral mode."""
    from flows import server

    url, line = server.api_url(work)
    if url:
        os.environ["PREFECT_API_URL"] = url
    typer.echo(line, err=True)


def exit_on_sigterm() -> None:
    """SIGTERM (``kill``, a scheduler's or ``docker stop``'s stop) ends the run as an exception
    instead of at once: inside a flow Prefect marks the run crashed (its own handler hands the
    signal back to this one) and the process exits 143 through its exit handlers, which stop
    the temporary Prefect server it started; during training the pretrain stage forwards it to
    the worker, which checkpoints, and the stage fails (exit 1). Python's default would leave
    that server (uvicorn) running, orphaned.

    A handler's exception is lost when the signal lands while a finalizer runs (``__del__``,
    e.g. an asyncio transport's during garbage collection): Python reports it as "Exception
    ignored" and goes on, and the run would finish as if never stopped. So an exception of
    the stop reported that way (``sys.unraisablehook``) has the signal delivered again, from
    another thread a moment later, to be raised outside the finalizer."""
    import signal
    import sys
    import threading

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    if getattr(sys.unraisablehook, "redelivers_sigterm", False):
        return
    previous = sys.unraisablehook

    def redeliver(unraisable: sys.UnraisableHookArgs) -> None:
        previous(unraisable)
        exc = unraisable.exc_value
        if (isinstance(exc, SystemExit) and exc.code == 128 + signal.SIGTERM) or (
                type(exc).__name__ == "TerminationSignal"
                and getattr(exc, "signal", None) == signal.SIGTERM):
            # from another thread, a moment later: raised here it would be ignored again
            threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGTERM)).start()

    redeliver.redelivers_sigterm = True  # type: ignore[attr-defined]
    sys.unraisablehook = redeliver


def with_seeds(overrides: list[str] | None, seeds: int | None) -> list[str] | None:
    """``--seeds N`` as the ``--set pretrain.seeds=N`` it stands for (after the others)."""
    return overrides if seeds is None else [*(overrides or []), f"pretrain.seeds={seeds}"]


def check_sets(overrides: list[str] | None) -> None:
    """The syntax of every --set (its path and value are checked against the domain later)."""
    from pipeline.overrides import OverrideError, parse

    try:
        parse(overrides)
    except OverrideError as exc:
        raise fail(str(exc)) from None

