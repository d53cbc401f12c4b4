"""Session-wide test setup and the test tiers.

Tiers (markers registered in pyproject.toml):
- db: a real PostgreSQL; added here to every test that uses the `pg` fixture, directly or through another fixture;
- ray: starts Ray; added here for the fixtures that start it, and marked by hand elsewhere;
- browser: headless Chromium;
- e2e: trains, tracks or serves end to end (minutes).
A test with none of them is a `unit` test: in-process or a few local processes, no server, no browser (`make
test-fast` runs these). `slow` is kept as the union of the four slow tiers, so `-m "not slow"` still selects the
unit tier.
"""
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


SLOW_TIERS = ("db", "ray", "browser", "e2e")
RAY_FIXTURES = {"ray_local", "stack", "smoke_sweep"}  # fixtures that start Ray (test_study, test_pg_cluster, test_ablate)


def pytest_collection_modifyitems(config, items):
    """Mark db / ray from the fixtures a test uses; give every test either `unit` or `slow` (module docstring)."""
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if "pg" in used:
            item.add_marker(pytest.mark.db)
        if used & RAY_FIXTURES:
            item.add_marker(pytest.mark.ray)
        if any(item.get_closest_marker(t) for t in (*SLOW_TIERS, "slow")):  # an explicit slow is never unit
            item.add_marker(pytest.mark.slow)
        else:
            item.add_marker(pytest.mark.unit)
