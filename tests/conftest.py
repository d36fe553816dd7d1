"""Shared fixtures: one emulator per test session, reached over real HTTP on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import settings

from nemovlm.emulator import start_nim_emulator
from nemovlm.emulator.server import RunningServer

# Property tests run the same examples every time: CI must be green on every run, and a
# fresh clone has no example database to replay a failure from.
settings.register_profile("nemovlm", derandomize=True, database=None)
settings.load_profile("nemovlm")


@pytest.fixture(scope="session")
def nim_server() -> Iterator[RunningServer]:
    server = start_nim_emulator()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def nim_url(nim_server: RunningServer) -> str:
    return nim_server.url + "/v1"


class WireLog:
    """What the emulator received, read back over HTTP (``/emulator/requests``)."""

    def __init__(self, base: str) -> None:
        self.base = base

    def clear(self) -> None:
        httpx.delete(f"{self.base}/emulator/requests").raise_for_status()

    def bodies(self) -> list[dict[str, Any]]:
        records = httpx.get(f"{self.base}/emulator/requests").json()
        return [r["body"] for r in records if r["path"].endswith("/chat/completions")]

    def last(self) -> dict[str, Any]:
        bodies = self.bodies()
        assert bodies, "the emulator received no chat request"
        return bodies[-1]


@pytest.fixture
def wire(nim_server: RunningServer) -> WireLog:
    log = WireLog(nim_server.url)
    log.clear()
    return log
