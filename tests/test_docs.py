"""The docs stay true to the code: README.md stays short, its CLI table lists exactly the CLI's
commands, and every relative link in README.md and docs/*.md points to a file (and heading)
that exists; caching.md's closure table lists what each step's key hashes. Fast: it reads Markdown,
the CLI's click command tree and the step modules' import statements, nothing else."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer.main

from flows.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
MAX_README_BYTES = 15_000

# [text](target): the target up to the first space or closing parenthesis.
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# A CLI table row: its first cell starts with `dapt ...`.
ROW = re.compile(r"^\|\s*`dapt ([^`]*)`")
COMMAND_WORD = re.compile(r"^[a-z][a-z0-9-]*$")


def cli_commands() -> set[tuple[str, ...]]:
    """Every leaf command of the CLI as a path: ("run",), ("domains", "list"), ..."""
    def walk(cmd: Any, path: tuple[str, ...]) -> set[tuple[str, ...]]:
        if getattr(cmd, "commands", None):  # a group (typer's own click-like classes)
            return {leaf for name, sub in cmd.commands.items()
                    for leaf in walk(sub, (*path, name))}
        return {path}

    return walk(typer.main.get_command(app), ())


def readme_table_commands() -> dict[tuple[str, ...], str]:
    """The command path of every row of the README's CLI table, with the row's usage text."""
    text = README.read_text()
    section = text.split("\n## The CLI\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        match = ROW.match(line)
        if not match:
            continue
        words = []
        for word in match.group(1).split():
            if not COMMAND_WORD.match(word):
                break  # an argument (NAME, [--opt]) ends the command's path
            words.append(word)
        rows[tuple(words)] = match.group(1)
    return rows


def test_readme_is_short() -> None:
    size = len(README.read_bytes())
    assert size <= MAX_README_BYTES, (
        f"README.md is {size:,} bytes, over {MAX_README_BYTES:,}: move detail into docs/")


def test_readme_cli_table_matches_the_cli() -> None:
    table, cli = readme_table_commands(), cli_commands()
    assert table, "no `dapt ...` rows found under '## The CLI' in README.md"
    unknown = sorted(" ".join(p) for p in set(table) - cli)
    missing = sorted(" ".join(p) for p in cli - set(table))
    assert not unknown and not missing, (
        f"README's CLI table lists commands the CLI does not have: {unknown}; "
        f"CLI commands missing from the table (add a row): {missing}")


def _command(path: tuple[str, ...]) -> Any:
    cmd = typer.main.get_command(app)
    for name in path:
        cmd = cmd.commands[name]
    return cmd


def test_readme_cli_table_options_exist() -> None:
    """Every --option a row's usage shows is an option of that command."""
    wrong = []
    for path, usage in readme_table_commands().items():
        if path not in cli_commands():
            continue  # reported by the test above
        known = {o for p in _command(path).params
                 for o in [*getattr(p, "opts", []), *getattr(p, "secondary_opts", [])]}
        wrong += [f"dapt {' '.join(path)} {o}" for o in re.findall(r"--[a-z][a-z0-9-]*", usage)
                  if o not in known]
    assert not wrong, f"README's CLI table shows options the CLI does not have: {wrong}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text lower-cased, punctuation dropped, spaces ->
    hyphens (Markdown code and emphasis marks are dropped with the punctuation)."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # no headings in code
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, flags=re.M)}


def _links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return [t for t in LINK.findall(text)
            if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]  # http:, https:, mailto: ...


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_existing_files(page: Path) -> None:
    broken = []
    for target in _links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target} (no file {dest.relative_to(ROOT)})")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {dest.relative_to(ROOT)})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {broken}"


def test_docs_pages_are_linked_from_the_readme() -> None:
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in _links(README)}
    orphans = [p.name for p in PAGES[1:] if p.resolve() not in linked]
    assert not orphans, f"docs pages the README's 'Read more' does not link: {orphans}"


# A code path named in prose or code: pipeline/... or flows/..., not inside another path
# (tests/pipeline/..., a Prefect name like dapt-domain-pipeline/dapt-medical).
CODE_PATH = re.compile(r"(?<![\w./<>-])((?:pipeline|flows)/[\w./-]*\w)")


def test_code_paths_named_in_the_docs_exist() -> None:
    """Every pipeline/... and flows/... path README.md and docs/ name is a file or folder (a
    module may be named without .py: pipeline/__init__)."""
    missing = []
    for page in PAGES:
        for path in sorted(set(CODE_PATH.findall(page.read_text()))):
            if not any((ROOT / p).exists() for p in (path, f"{path}.py")):
                missing.append(f"{page.relative_to(ROOT)}: {path}")
    assert not missing, f"the docs name code paths that do not exist: {missing}"


def test_readme_code_map_names_existing_files() -> None:
    """The README's annotated file map (indented names under "## The code") exists."""
    section = README.read_text().split("\n## The code\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```", 2)[1]
    parents: list[tuple[int, str]] = []  # (indent, folder) of the enclosing folders
    missing = []
    for line in block.splitlines():
        match = re.match(r"^( *)(\S+)(?:\s{2,}|$)", line)
        if not match or not re.match(r"^[\w.-]+/?$", match.group(2)):
            continue  # a continued description
        indent, name = len(match.group(1)), match.group(2)
        while parents and parents[-1][0] >= indent:
            parents.pop()
        path = "/".join([p for _, p in parents] + [name.rstrip("/")])
        if not (ROOT / path).exists():
            missing.append(path)
        if name.endswith("/"):
            parents.append((indent, name.rstrip("/")))
    assert not missing, f"README's file map names files that do not exist: {missing}"


def _closure_modules(cell: str, rows: dict[str, set[str]]) -> set[str]:
    """The modules (paths under pipeline/, no .py) a cell of caching.md's closure table names:
    "the <step> closure", `a/{b,c}` (both), `a/*` (the folder's modules), "but `x`" (not x)."""
    named: set[str] = set()
    for step in re.findall(r"the (\w+) closure", cell):
        named |= rows[step]
    include, _, exclude = cell.partition(" but ")
    for part, keep in ((include, True), (exclude, False)):
        for token in re.findall(r"`([^`]+)`", part):
            head, _, options = token.partition("{")
            for name in options.rstrip("}").split(",") if options else [""]:
                path = head + name
                found = {str(p.relative_to(ROOT / "pipeline").with_suffix(""))
                         for p in (ROOT / "pipeline").glob(f"{path}.py")
                         if p.name != "__init__.py"}
                assert found, f"docs/caching.md names `{token}`, which is no module"
                named = named | found if keep else named - found
    return named


def test_caching_closure_table_matches_the_code() -> None:
    """docs/caching.md's "closures today" table lists each step's import closure (the code its
    key hashes), package __init__ files aside."""
    from pipeline.engine.versions import import_closure
    from pipeline.stages.steps import STEPS

    text = (ROOT / "docs" / "caching.md").read_text()
    table = text.split("| step | files hashed (under `pipeline/`) |", 1)[1].split("\n\n", 1)[0]
    rows: dict[str, set[str]] = {}
    for step, cell in re.findall(r"^\| (\w+) \| (.+) \|$", table, re.M):
        rows[step] = _closure_modules(cell, rows)
    specs = {spec.name: spec for spec in STEPS}
    assert set(rows) == set(specs)
    for step, named in rows.items():
        code = {m.removeprefix("pipeline.").replace(".", "/")
                for m in import_closure(specs[step].module)
                if (ROOT / (m.replace(".", "/") + ".py")).exists()}
        assert named == code, (step, sorted(named - code), sorted(code - named))
