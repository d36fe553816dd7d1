"""Local emulators of the NIM and fal APIs, for tests, the offline demo and users' CI.

``start_nim_emulator()`` serves the emulated NIM on a free loopback port::

    with start_nim_emulator() as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nemovlm.emulator.nim import create_nim_app
from nemovlm.emulator.server import RunningServer

if TYPE_CHECKING:
    from nemovlm.emulator.fal import FalEmulator, start_fal_emulator, use_fal_emulator

__all__ = [
    "FalEmulator",
    "RunningServer",
    "create_nim_app",
    "start_fal_emulator",
    "start_nim_emulator",
    "use_fal_emulator",
]


def __getattr__(name: str) -> Any:
    # The fal emulator needs trustme (TLS); load it only when asked for.
    if name in ("FalEmulator", "start_fal_emulator", "use_fal_emulator"):
        from nemovlm.emulator import fal

        return getattr(fal, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def start_nim_emulator(
    port: int = 0, host: str = "127.0.0.1", *, hosted: bool = False
) -> RunningServer:
    """The emulated NIM, started in a background thread; stop it with ``.stop()``.
    ``hosted``: it plays NVIDIA's hosted catalog (asset API, inline budget, message
    rules; ``nemovlm.emulator.hosted``), with the NVCF assets endpoint at
    ``url + "/v2/nvcf/assets"``."""
    return RunningServer(create_nim_app(hosted=hosted), host=host, port=port).start()
