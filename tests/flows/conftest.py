"""A temporary Prefect API for the flow tests (one per test module), with results stored in a
temporary folder."""

from __future__ import annotations

import pytest
from prefect.settings import PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings
from prefect.testing.utilities import prefect_test_harness


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory):
    storage = tmp_path_factory.mktemp("prefect-results")
    with (temporary_settings({PREFECT_RESULTS_LOCAL_STORAGE_PATH: str(storage)}),
          prefect_test_harness(server_startup_timeout=120)):
        yield
