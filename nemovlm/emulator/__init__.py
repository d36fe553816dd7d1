"""Local emulators of the NIM and fal APIs, for tests, the offline demo and users' CI.

``start_nim_emulator()`` serves the emulated NIM on a free loopback port::

    with start_nim_emulator() as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x")
"""

from __future__ import annotations

from nemovlm.emulator.nim import create_nim_app
from nemovlm.emulator.server import RunningServer

__all__ = ["RunningServer", "create_nim_app", "start_nim_emulator"]


def start_nim_emulator(port: int = 0, host: str = "127.0.0.1") -> RunningServer:
    """The emulated NIM, started in a background thread; stop it with ``.stop()``."""
    return RunningServer(create_nim_app(), host=host, port=port).start()
