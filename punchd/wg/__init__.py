"""WireGuard backends behind one interface (see :mod:`punchd.wg.base`).

``base.py`` is the interface (:class:`~punchd.wg.base.WireGuardBackend`), its Structs
and pure key and address helpers; ``fake.py`` is an in-memory backend (no I/O) for
tests. Adapters: ``netlink.py`` (kernel WireGuard by generic netlink) and ``uapi.py``
(wireguard-go as a child process, over its UAPI socket; its ``encode_set`` and
``parse_get`` are the pure codec), both setting the link through ``links.py``
(rtnetlink, pyroute2 in a worker thread). All three pass one conformance suite,
``tests/wg_conformance.py``. :func:`open_backend` picks one.
"""

from __future__ import annotations

from typing import Literal

from punchd.errors import BackendUnavailable

from .base import (
    LinkConfig,
    WgDeviceState,
    WgPeer,
    WgPeerState,
    WireGuardBackend,
    generate_private_key,
    public_key,
)

BackendKind = Literal["auto", "kernel", "userspace", "fake"]


def open_backend(kind: BackendKind) -> WireGuardBackend:
    """``auto`` picks the kernel when it has WireGuard, else wireguard-go."""
    if kind == "fake":
        from .fake import FakeBackend

        return FakeBackend()
    if kind in ("kernel", "auto"):
        from .netlink import KernelBackend

        try:
            return KernelBackend()
        except BackendUnavailable:
            if kind == "kernel":
                raise
    from .uapi import UserspaceBackend

    return UserspaceBackend()


__all__ = ["BackendKind", "LinkConfig", "WgDeviceState", "WgPeer", "WgPeerState",
           "WireGuardBackend", "generate_private_key", "open_backend", "public_key"]
