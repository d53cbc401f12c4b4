"""Session-wide test setup."""
import os

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def shared_cache(tmp_path_factory):
    """One feature-extractor/reference-stat cache for the whole session (also inherited by Ray workers and
    subprocesses as ISM_CACHE), so the domain CNN is trained once per test run and never into the checkout."""
    path = tmp_path_factory.getbasetemp() / "ism-shared-cache"
    path.mkdir(exist_ok=True)
    old = os.environ.get("ISM_CACHE")
    os.environ["ISM_CACHE"] = str(path)
    torch.set_num_threads(1)  # 2-core machines run helpers beside the tests; one thread keeps timings sane
    yield path
    if old is None:
        os.environ.pop("ISM_CACHE", None)
    else:
        os.environ["ISM_CACHE"] = old


@pytest.fixture(scope="session")
def pg():
    """A real PostgreSQL for the session (tests/pgserver.py), started by the first test that asks; missing binaries
    fail that test (never a skip: CI installs them)."""
    from pgserver import postgres_server
    with postgres_server() as server:
        yield server
