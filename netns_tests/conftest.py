"""The lab's tests need root (network namespaces, nftables); skip them with a reason otherwise."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="netns lab tests need root (network namespaces, nftables)")
    for item in items:
        if "netns_tests" in str(item.fspath):
            item.add_marker(skip)


@pytest.fixture
def lab(tmp_path):  # type: ignore[no-untyped-def]
    """A fresh lab (inet + server); the test adds sites. Always torn down."""
    from netns_tests.lab import Lab

    with Lab(log_dir=tmp_path / "lab") as the_lab:
        yield the_lab


@pytest.fixture
def make_lab(tmp_path):  # type: ignore[no-untyped-def]
    """A factory for extra labs in one test (each with its own log dir); all torn down after it."""
    from netns_tests.lab import Lab

    labs: list[Lab] = []

    def make() -> Lab:
        new = Lab(log_dir=tmp_path / f"lab{len(labs)}")
        labs.append(new)
        return new.__enter__()

    try:
        yield make
    finally:
        for each in reversed(labs):
            each.teardown()
