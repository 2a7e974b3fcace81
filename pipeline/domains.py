"""Domain plugins: discovery, loading and validation.

A domain is one YAML file validated against ``config.DomainSpec``. Domains come from
- the built-in ``domains/*.yaml`` shipped with dapt,
- installed packages exposing an entry point in the group ``dapt.domains`` whose target is a
  path to a YAML file, or a callable returning such a path or a dict,
- a file given on the command line (``dapt run --domain-file PATH``).

Two sources defining the same name are an error naming both: never "the last one wins".
Every shipped domain is resolved for every profile at load time, so a bad field fails here
with the file and field named, not halfway through a run.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import string
import types
import typing
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ValidationError

from pipeline import config as schema
from pipeline import overrides as overrides_mod
from pipeline.config import PROFILE_NAMES, DomainSpec, RunConfig

if TYPE_CHECKING:  # loaded on use: the CLI checks its input before pyarrow and DuckDB load
    from pipeline.engine.artifacts import DigestCache

ENTRY_POINT_GROUP = "dapt.domains"


class DomainError(ValueError):
    """A domain config a user can fix: the message names the file and the field."""


@dataclass(frozen=True)
class Domain:
    spec: DomainSpec
    origin: str  # "built-in", "entry point <name> (<dist>)", or "file"
    path: Path | None  # the YAML file, when there is one; relative data paths resolve from it

    @property
    def name(self) -> str:
        return self.spec.name

    def resolve(self, profile: str, overrides: list[str] | tuple[str, ...] | None = None
                ) -> RunConfig:
        """The config of one run at ``profile``; ``overrides`` (``PATH=VALUE``, as
        ``dapt run --set``) apply last and are validated by the same schema
        (``pipeline/overrides.py``)."""
        run = self.spec.resolve(profile)
        parsed = overrides_mod.parse(overrides)
        if not parsed:
            return run
        data = overrides_mod.apply(run.model_dump(), parsed)
        try:
            return RunConfig.model_validate(data)
        except ValidationError as exc:
            given = " ".join(f"--set {o.text}" for o in parsed)
            where = f"{self.path or self.origin} (profile {profile!r}, {given})"
            raise DomainError(_format_errors(exc, where)) from None


def did_you_mean(word: str, choices: Any) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices`` to a mistyped ``word``, or ''."""
    close = difflib.get_close_matches(word, [str(c) for c in choices], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _unwrap(tp: Any) -> Any:
    """The model or list inside ``X | None`` (and other unions), else ``tp``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if typing.get_origin(arg) is list or (
                    isinstance(arg, type) and issubclass(arg, BaseModel)):
                return arg
    return tp


def field_names(root: type[BaseModel], loc: tuple[str | int, ...]) -> list[str]:
    """The fields of the model found at ``loc`` under ``root`` (empty when none is)."""
    tp: Any = root
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(part, int):
            if typing.get_origin(tp) is not list:
                return []
            tp = typing.get_args(tp)[0]
        elif isinstance(tp, type) and issubclass(tp, BaseModel) and part in tp.model_fields:
            tp = tp.model_fields[part].annotation
        else:
            return []
    tp = _unwrap(tp)
    return list(tp.model_fields) if isinstance(tp, type) and issubclass(tp, BaseModel) else []


def _shown(value: Any) -> str | None:
    """A value given by the user, short enough to quote in an error line."""
    if isinstance(value, (dict, BaseModel)):
        return None
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _format_errors(exc: ValidationError, where: str, prefix: str = "") -> str:
    """One line per error: the field, what is wrong, the value given, and for an unknown
    field the closest known one."""
    root = getattr(schema, exc.title, None)
    lines = [f"invalid domain config {where}:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        loc = f"{prefix}{loc}" if loc else prefix.rstrip(".") or "<top level>"
        detail = err["msg"]
        if err["type"] == "extra_forbidden":
            known = (field_names(root, err["loc"][:-1])
                     if isinstance(root, type) and issubclass(root, BaseModel) else [])
            detail = (f"unknown field{did_you_mean(str(err['loc'][-1]), known)} (check the "
                      "spelling; see `dapt domains new` for the template)")
        elif err["type"] != "missing" and (shown := _shown(err.get("input"))) is not None:
            detail += f" (got {shown})"
            if err["type"] == "literal_error" and isinstance(err.get("input"), str):
                allowed = re.findall(r"'([^']*)'", str(err.get("ctx", {}).get("expected", "")))
                detail += did_you_mean(err["input"], allowed)
        lines.append(f"  {loc}: {detail}")
    return "\n".join(lines)


def parse_domain(raw: Any, where: str) -> DomainSpec:
    if not isinstance(raw, dict):
        raise DomainError(f"invalid domain config {where}: expected a mapping at the top level")
    try:
        spec = DomainSpec.model_validate(raw)
    except ValidationError as exc:
        raise DomainError(_format_errors(exc, where)) from None
    for profile in PROFILE_NAMES:
        try:
            spec.resolve(profile)
        except ValidationError as exc:
            raise DomainError(
                _format_errors(exc, f"{where} (resolved for profile {profile!r})")
            ) from None
    return spec


def load_file(path: Path, origin: str = "file") -> Domain:
    path = Path(path)
    if not path.is_file():
        raise DomainError(f"domain file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise DomainError(f"invalid YAML in {path}: {exc}") from None
    return Domain(parse_domain(raw, str(path)), origin, path.resolve())


def _builtin() -> list[Domain]:
    root = resources.files("domains")
    return [
        load_file(Path(str(entry)), "built-in")
        for entry in sorted(root.iterdir(), key=lambda e: e.name)
        if entry.name.endswith(".yaml") and not entry.name.startswith("_")
    ]


def _entry_points() -> list[Domain]:
    found = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        origin = f"entry point {ep.name} ({ep.dist.name if ep.dist else ep.value})"
        target = ep.load()
        value = target() if callable(target) else target
        if isinstance(value, dict):
            domain = Domain(parse_domain(value, origin), origin, None)
        else:
            domain = load_file(Path(value), origin)
        found.append(domain)
    return found


def discover() -> dict[str, Domain]:
    domains: dict[str, Domain] = {}
    for domain in [*_builtin(), *_entry_points()]:
        if domain.name in domains:
            first = domains[domain.name]
            raise DomainError(
                f"domain {domain.name!r} is defined twice: by {first.origin} "
                f"({first.path}) and by {domain.origin} ({domain.path}); rename one of them"
            )
        domains[domain.name] = domain
    return domains


def get(name: str) -> Domain:
    domains = discover()
    if name not in domains:
        raise DomainError(
            f"unknown domain {name!r}{did_you_mean(name, domains)}; known: "
            f"{', '.join(sorted(domains)) or 'none'} (or give a YAML file with --domain-file)"
        )
    return domains[name]


def select(name: str | None, path: str | Path | None) -> Domain:
    """The domain named, or the one in ``path``: exactly one of the two."""
    if (name is None) == (path is None):
        raise DomainError("give a domain name or --domain-file PATH (exactly one)"
                          + (f"; got {name!r} and {str(path)!r}" if name else ""))
    return load_file(Path(path)) if path is not None else get(name)


def resolve_path(pattern: str, domain: Domain, workdir: Path) -> str:
    """Expand ``${samples}`` and environment variables; anchor relative paths at the YAML."""
    from pipeline.files import is_url

    expanded = string.Template(pattern).safe_substitute(samples=str(workdir / "samples"))
    expanded = os.path.expanduser(os.path.expandvars(expanded))
    if expanded.startswith("file://"):
        expanded = expanded.removeprefix("file://")
    if is_url(expanded):
        return expanded
    if not os.path.isabs(expanded):
        base = domain.path.parent if domain.path else Path.cwd()
        expanded = str(base / expanded)
    return expanded


def check_paths(run: RunConfig, domain: Domain, workdir: Path) -> dict[str, list[Path]]:
    """Resolve every data path of a run; a path matching no file is an error naming the field."""
    from pipeline.files import is_url, match_files

    where = domain.path or domain.origin
    resolved: dict[str, list[Path]] = {}
    fields = [(f"ingest.sources[{i}].path", s.path) for i, s in enumerate(run.ingest.sources)]
    fields += [(f"finetune.tasks[{i}].path", t.path) for i, t in enumerate(run.finetune.tasks)]
    fields += [(f"ingest.decontamination.test_sets[{i}].path", s.path)
               for i, s in enumerate(run.ingest.decontamination.test_sets)]
    for field_name, pattern in fields:
        full = resolve_path(pattern, domain, workdir)
        matches = sorted(p if is_url(p) else Path(p) for p in match_files(full))
        if not matches:
            hint = " (run `dapt samples build` first)" if "${samples}" in pattern else ""
            raise DomainError(
                f"invalid domain config {where}:\n  {field_name}: no file matches "
                f"{pattern!r} (resolved to {full}){hint}"
            )
        if field_name.startswith("ingest.sources") or not is_url(full):
            resolved[field_name] = matches
        else:
            raise DomainError(f"invalid domain config {where}:\n  {field_name}: {pattern!r}: "
                              "fine-tune tasks and test sets are read from local files only")
    return resolved


def source_digest(path: str | Path, cache: DigestCache | None = None) -> str:
    """Content hash of a local file (through ``cache`` when given: a file unchanged since the
    last plan is not read again); for a URL, a hash of what its filesystem reports (size, ETag
    or checksum, modification time), so hundreds of GB are not read to key an artifact."""
    from pipeline.engine.artifacts import file_digest
    from pipeline.files import is_url

    if not is_url(path):
        return cache(path) if cache is not None else file_digest(Path(path))
    import fsspec

    fs, root = fsspec.core.url_to_fs(str(path))
    info = fs.info(root)
    stamp = {k: str(info[k]) for k in sorted(info) if k.lower() in {
        "size", "etag", "md5", "md5hash", "crc32c", "mtime", "last_modified", "lastmodified",
        "updated", "created", "generation", "version_id"}}
    return hashlib.blake2b(json.dumps(stamp, sort_keys=True).encode(),
                           digest_size=16).hexdigest()
