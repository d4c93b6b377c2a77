"""Test-wide setup: one torch thread (two make conv/BatchNorm many times slower on 2-core machines) and no network."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator

os.environ.setdefault("OMP_NUM_THREADS", "1")
# ultralytics reads these at import: no DNS probe, and settings/fonts in a throwaway directory, not ~/.config
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="dynaloss-tests-yolo-"))

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


class NetworkAccessError(RuntimeError):
    """Raised when a test tries to reach the network."""


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Fail any socket connect or DNS lookup: dynaloss must work offline by construction.

    Libraries often swallow connection errors (ultralytics' ``is_url`` returns ``False`` on any exception),
    so every attempt is also recorded and the test fails afterwards even when the error was caught.
    """
    attempts: list[str] = []

    def refuse(name: str):  # type: ignore[no-untyped-def]
        def blocked(*args: object, **kwargs: object) -> None:
            attempts.append(f"{name}{args!r}")
            raise NetworkAccessError(f"a test tried to use the network: {name}{args!r}")

        return blocked

    monkeypatch.setattr(socket.socket, "connect", refuse("socket.connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", refuse("socket.connect_ex"))
    monkeypatch.setattr(socket, "create_connection", refuse("socket.create_connection"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("socket.getaddrinfo"))
    monkeypatch.setattr(socket, "gethostbyname", refuse("socket.gethostbyname"))
    yield attempts
    assert not attempts, f"the test reached for the network (the error may have been swallowed): {attempts}"
