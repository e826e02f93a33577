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
