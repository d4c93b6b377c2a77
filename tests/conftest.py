"""Test-wide setup: one torch thread (two make conv/BatchNorm many times slower on 2-core machines) and no network."""

from __future__ import annotations

import os
import socket

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


class NetworkAccessError(RuntimeError):
    """Raised when a test tries to reach the network."""


def _refuse(*args: object, **kwargs: object) -> None:
    raise NetworkAccessError(f"a test tried to use the network: {args!r}")


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any socket connect or DNS lookup: dynaloss must work offline by construction."""
    monkeypatch.setattr(socket.socket, "connect", _refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", _refuse)
    monkeypatch.setattr(socket, "create_connection", _refuse)
    monkeypatch.setattr(socket, "getaddrinfo", _refuse)
    monkeypatch.setattr(socket, "gethostbyname", _refuse)
