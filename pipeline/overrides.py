"""Command-line overrides of a resolved config: ``dapt run medical --set pretrain.lr=3e-4``.

An override is ``PATH=VALUE``. PATH is dotted field names, with list indices where a field is a
list (``ingest.sources[0].text_field``); VALUE is parsed as YAML, as if written in the domain
file (``3e-4``, ``[email, phone]``, ``null``, ``{news: 0.25}``). Overrides apply last, after the
profile defaults, the domain's stage sections and its ``profiles.<name>`` section, to the resolved
config, which the same schema then validates again: a bad value fails with the message the same
value gives in a YAML file. Artifact keys hash the resolved stage configs, so an override changes
the keys of the stages it touches exactly as the same edit of the YAML would, and no others.

``parse`` checks the syntax of each override (before anything runs); ``apply`` sets the values in
a resolved config's ``model_dump()`` and says, with a "did you mean", which path does not exist.
``pipeline.domains.Domain.resolve`` puts the two together with the schema.
"""

from __future__ import annotations

import copy
import difflib
import re
from dataclasses import dataclass
from typing import Any

import yaml

# One step of a path: a field name, then any number of [N] list indices.
_STEP = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)((?:\[\d+\])*)$")
# Set by --profile and by the domain's name, never by --set.
FIXED = ("domain", "profile")


class OverrideError(ValueError):
    """A ``--set`` a user can fix: the message quotes it and says what to change."""


@dataclass(frozen=True)
class Override:
    text: str  # as given, for messages and the run's params
    path: tuple[str | int, ...]  # field names and list indices
    value: Any  # parsed as YAML

    @property
    def dotted(self) -> str:
        return format_path(self.path)


def format_path(path: tuple[str | int, ...]) -> str:
    """``("ingest", "sources", 0, "path")`` -> ``ingest.sources[0].path``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def parse_one(text: str) -> Override:
    """``PATH=VALUE`` -> an ``Override``; a clear error for anything else."""
    raw_path, eq, raw_value = text.partition("=")
    if not eq or not raw_path.strip():
        raise OverrideError(f"--set {text!r}: expected PATH=VALUE, e.g. --set pretrain.lr=3e-4")
    path: list[str | int] = []
    for step in raw_path.strip().split("."):
        match = _STEP.match(step)
        if not match:
            raise OverrideError(
                f"--set {text!r}: {raw_path.strip()!r} is not a field path (dotted names with "
                "list indices, e.g. ingest.sources[0].text_field)")
        path.append(match.group(1))
        path += [int(i) for i in re.findall(r"\[(\d+)\]", match.group(2))]
    if path[0] in FIXED:
        raise OverrideError(f"--set {text!r}: {path[0]} is not overridden with --set "
                            f"(use --profile, or another domain)")
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else ""
    except yaml.YAMLError as exc:
        raise OverrideError(f"--set {text!r}: the value is not valid YAML: {exc}") from None
    return Override(text, tuple(path), value)


def parse(items: list[str] | tuple[str, ...] | None) -> list[Override]:
    """Every ``--set`` parsed; later ones win over earlier ones on the same path."""
    return [parse_one(item) for item in items or ()]


def _suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def apply(config: dict[str, Any], overrides: list[Override]) -> dict[str, Any]:
    """``config`` (a resolved config's ``model_dump()``) with each override set. A path through a
    field that does not exist, or an index past a list's end, is an error naming the override;
    a new last key is set, and the schema says whether that field exists."""
    out = copy.deepcopy(config)
    for o in overrides:
        node: Any = out
        for depth, part in enumerate(o.path):
            here = format_path(o.path[:depth]) or "the config"
            last = depth == len(o.path) - 1
            if isinstance(part, int):
                if not isinstance(node, list):
                    raise OverrideError(f"--set {o.text!r}: {here} is not a list, so [{part}] "
                                        "does not apply")
                if part >= len(node):
                    raise OverrideError(f"--set {o.text!r}: {here} has {len(node)} item(s), so "
                                        f"[{part}] is out of range (indices start at 0)")
            elif not isinstance(node, dict):
                raise OverrideError(f"--set {o.text!r}: {here} is a value ({node!r}), not a "
                                    f"section with a field {part!r}")
            elif part not in node and not last:
                raise OverrideError(f"--set {o.text!r}: {here} has no field {part!r}"
                                    + _suggest(part, list(node)))
            if last:
                node[part] = copy.deepcopy(o.value)
            else:
                node = node[part]
    return out

