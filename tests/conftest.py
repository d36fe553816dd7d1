"""Shared fixtures: one emulator per test session, reached over real HTTP on loopback."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any

import loopback
import pytest
from hypothesis import settings

from nemovlm.emulator import start_nim_emulator
from nemovlm.emulator.server import RunningServer

# Property tests run the same examples every time: CI must be green on every run, and a
# fresh clone has no example database to replay a failure from.
settings.register_profile("nemovlm", derandomize=True, database=None)
settings.load_profile("nemovlm")

# The whole suite runs on two pytest-xdist workers (``-n auto`` in pyproject.toml): most
# tests wait on loopback HTTP or a child process, so a second process keeps both cores
# of a 2-core CI machine busy. A run of named files stays in one process, where ``-s``,
# ``--pdb`` and prints work as usual. PYTEST_XDIST_AUTO_NUM_WORKERS=N chooses N
# (0: no workers).
WORKERS = 2
# Files that share something outside their own process go to one worker, one after the
# other: both wheel builds write build/ into the source tree, and the Ray tests and
# cookbook 07 each start a local Ray.
SHARED = {
    "test_cli_without_frameworks.py": "wheel",
    "test_llama_index_packaging.py": "wheel",
    "test_ray.py": "ray",
    "test_cookbooks.py": "ray",
}


def pytest_configure(config: pytest.Config) -> None:
    # Started in the background by a script (``cmd &``), this process ignores Ctrl-C and
    # every child it starts would too: the tests that stop the emulator or a batch with
    # SIGINT would then wait in vain. A handler of our own is reset to the default in
    # each child.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.hookimpl(optionalhook=True)  # the suite still runs without xdist
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    chosen = os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS")
    if chosen:
        return int(chosen)
    named_files = config.args_source is pytest.Config.ArgsSource.ARGS and any(
        ".py" in arg for arg in config.args
    )
    if named_files or (os.cpu_count() or 1) < WORKERS:
        return 0
    return WORKERS


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Each file goes whole to one worker (its module fixtures start once and its tests
    keep their order), and the files of one SHARED group to the same worker.

    Not ``--dist loadgroup`` with marks: on pytest 9.2 it silently stops grouping
    (https://github.com/pytest-dev/pytest-xdist/issues/1386)."""
    from xdist.scheduler import LoadFileScheduling

    class ByFile(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            file = nodeid.split("::", 1)[0]
            return SHARED.get(file.rsplit("/", 1)[-1], file)

    return ByFile(config, log)


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
        loopback.http.delete(f"{self.base}/emulator/requests").raise_for_status()

    def bodies(self) -> list[dict[str, Any]]:
        records = loopback.http.get(f"{self.base}/emulator/requests").json()
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
