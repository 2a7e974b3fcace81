"""Content-addressed artifact store.

An artifact lives at ``<root>/<stage>/<key>/``. Its key hashes the stage's resolved config, the
stage's code version and its input artifacts' keys, so the same inputs always map to the same
directory and a change anywhere upstream changes every key downstream.

A stage writes into a private temporary directory; ``manifest.json`` is written last and the
directory is then renamed into place, so a crash never leaves a directory that looks complete:
an artifact exists exactly when ``<key>/manifest.json`` exists. A per-artifact file lock makes a
second process building the same key wait and then reuse the first one's result. A build that
raises leaves its partial outputs in ``.failed-<key>-*`` for debugging (``dapt gc`` removes them).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.files import write_atomic

MANIFEST = "manifest.json"
# Directories beside the artifacts that are not artifacts, by name prefix: what each one is.
TMP, FAILED, OLD = ".tmp-", ".failed-", ".old-"
LEFTOVER_REASONS = {FAILED: "failed build", OLD: "replaced artifact", TMP: "interrupted build"}


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hash of a JSON-serialisable object, independent of dict ordering."""
    payload = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:length]


def file_digest(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class DigestCache:
    """``file_digest`` of local files, remembered by what the file system reports of each
    (device, inode, size, modification and change times in ns), as git's index and DVC's state
    database do: planning a run over many GB of sources reads only the files changed since the
    last plan. The change time cannot be set from user space, so a rewrite is always seen;
    only a file rewritten by a tool that restores all of these would be missed. ``path``: the
    JSON file it lives in (``None``: remember nothing). ``save`` writes it atomically."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.entries: dict[str, list] = {}
        if path is not None and path.exists():
            try:
                self.entries = json.loads(path.read_text())
            except ValueError:  # a torn write of an older version: start again
                self.entries = {}
        self._dirty = False

    def __call__(self, path: Path | str) -> str:
        name = os.path.abspath(path)
        st = os.stat(name)
        stamp = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
        known = self.entries.get(name)
        if known and known[0] == stamp:
            return known[1]
        digest = file_digest(Path(name))
        self.entries[name] = [stamp, digest]
        self._dirty = True
        return digest

    def save(self) -> None:
        if self.path is None or not self._dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps(self.entries, sort_keys=True))
        self._dirty = False


def artifact_key(config: Mapping[str, Any], code: str, inputs: Mapping[str, Any]) -> str:
    return stable_hash({"config": config, "code": code, "inputs": inputs})


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """What a stage returns and what ``manifest.json`` records about an artifact."""

    stage: str
    counts: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    # Filled in by the store when the artifact is published.
    key: str = ""
    config_hash: str = ""
    code_version: str = ""
    inputs: dict[str, str] = field(default_factory=dict)
    created_at: str = ""
    duration_s: float = 0.0

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def read(cls, path: Path) -> Manifest:
        return cls(**json.loads(Path(path).read_text()))


@dataclass(frozen=True)
class Leftover:
    """A directory a build left beside the artifacts: never an artifact, removable."""

    path: Path
    stage: str
    key: str
    reason: str  # a value of LEFTOVER_REASONS


@dataclass(frozen=True)
class Artifact:
    stage: str
    key: str
    path: Path

    @property
    def manifest(self) -> Manifest:
        return Manifest.read(self.path / MANIFEST)


class ArtifactStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def get(self, stage: str, key: str) -> Artifact | None:
        path = self.path(stage, key)
        return Artifact(stage, key, path) if (path / MANIFEST).exists() else None

    def list(self, stage: str | None = None) -> Iterator[Artifact]:
        stages = [stage] if stage else sorted(p.name for p in self.root.glob("*") if p.is_dir())
        for s in stages:
            for manifest in sorted((self.root / s).glob(f"*/{MANIFEST}")):
                yield Artifact(s, manifest.parent.name, manifest.parent)

    def leftovers(self) -> list[Leftover]:
        """Partial outputs of failed builds, replaced artifacts not yet deleted, and directories
        of interrupted builds (except those of a build running now)."""
        found = []
        for prefix, reason in LEFTOVER_REASONS.items():
            for path in sorted(self.root.glob(f"*/{prefix}*")):
                key = path.name.removeprefix(prefix).rsplit("-", 1)[0]
                if prefix == TMP and self.building(path.parent.name, key):
                    continue
                found.append(Leftover(path, path.parent.name, key, reason))
        return found

    def building(self, stage: str, key: str) -> bool:
        """A process holds the build lock of ``stage/key`` now."""
        lock_path = self._lock_path(stage, key)
        if not lock_path.exists():
            return False
        with open(lock_path) as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(fh, fcntl.LOCK_UN)
        return False

    def _lock_path(self, stage: str, key: str) -> Path:
        return self.root / stage / f".{key}.lock"

    @contextmanager
    def _lock(self, stage: str, key: str) -> Iterator[None]:
        lock_path = self._lock_path(stage, key)
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def build(
        self,
        *,
        stage: str,
        key: str,
        config_hash: str,
        code: str,
        inputs: Mapping[str, Artifact],
        fn: Callable[[Path], Manifest],
        force: bool = False,
        resume: bool = False,
    ) -> tuple[Artifact, bool]:
        """Return ``(artifact, cache_hit)``, building it with ``fn(tmp_dir)`` unless it exists.

        With ``force`` the artifact is rebuilt and swapped in place of the existing one. With
        ``resume`` (and no ``force``) the newest leftover of an interrupted or failed build of
        the same key becomes the build directory, so ``fn`` finds its checkpoints there.
        """
        with self._lock(stage, key):
            existing = self.get(stage, key)
            if existing and not force:
                return existing, True
            tmp = self._build_dir(stage, key, resume=resume and not force)
            start = time.perf_counter()
            try:
                manifest = fn(tmp)
                if manifest.stage != stage:
                    raise RuntimeError(f"{stage}: the stage returned a {manifest.stage!r} "
                                       "manifest")
                manifest = dataclasses.replace(
                    manifest, key=key, config_hash=config_hash, code_version=code,
                    inputs={name: a.key for name, a in inputs.items()},
                    files=sorted(
                        str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file()
                    ),
                    created_at=datetime.now(UTC).isoformat(timespec="seconds"),
                    duration_s=round(time.perf_counter() - start, 3),
                )
                final = self._publish(tmp, stage, key, manifest)
            except Exception as exc:
                # Keep what the stage wrote (its log above all) under a name that never looks
                # like an artifact; `dapt gc` removes these.
                failed = tmp.with_name(f"{FAILED}{key}-{uuid.uuid4().hex[:8]}")
                os.rename(tmp, failed)
                exc.add_note(f"partial outputs of the failed build: {failed}")
                raise
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            return Artifact(stage, key, final), False

    def _build_dir(self, stage: str, key: str, *, resume: bool) -> Path:
        """A fresh private build directory, or (``resume``) the newest leftover of an
        interrupted or failed build of the key, renamed to a fresh private name."""
        tmp = self.root / stage / f"{TMP}{key}-{uuid.uuid4().hex[:8]}"
        # Holding the lock, any .tmp- of this key belongs to a build that died.
        leftovers = sorted(
            (p for pattern in (f"{TMP}{key}-*", f"{FAILED}{key}-*")
             for p in (self.root / stage).glob(pattern)),
            key=lambda p: p.stat().st_mtime)
        if resume and leftovers:
            os.rename(leftovers[-1], tmp)
        else:
            tmp.mkdir(parents=True)
        return tmp

    def _publish(self, tmp: Path, stage: str, key: str, manifest: Manifest) -> Path:
        """Write the manifest last (its presence is what makes the artifact exist), then
        rename the build directory into place, swapping out an artifact it replaces."""
        (tmp / MANIFEST).write_text(manifest.to_json())
        final = self.path(stage, key)
        if final.exists():
            trash = final.with_name(f"{OLD}{key}-{uuid.uuid4().hex[:8]}")
            os.rename(final, trash)
            os.rename(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(tmp, final)
        return final
