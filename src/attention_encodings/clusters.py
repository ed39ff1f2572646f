"""Reaching a Ray cluster: whether anything answers at a cluster address, decided in seconds, before any work (Ray
itself waits for minutes on an address where nothing listens). Imports nothing heavy, so the command line checks
`--ray-address` before it loads torch."""

from __future__ import annotations

import socket

from .errors import InputError

RAY_CONNECT_TIMEOUT_S = 10.0
"""How long to wait for a cluster at --ray-address to answer at all."""


def check_ray_address(address: str | None) -> None:
    """A one-line `InputError` at once, before any work, when nothing answers at the cluster address `address`
    (`host:port`, `ray://host:port`; `auto` and None, a local Ray, are left to Ray)."""
    if address is None or address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"ray address {address!r} is not host:port, ray://host:port or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=RAY_CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise InputError(f"cannot reach a Ray cluster at {address}: {error.strerror or error}") from None
