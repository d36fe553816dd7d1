"""Run an ASGI app on loopback in a background thread, for tests, the demo and the CLI.

``uvicorn`` serves the app for real, so clients go through their whole HTTP stack.
Port 0 asks the OS for a free port; ``url`` is known once the server is up.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn


@dataclass
class RunningServer:
    """A uvicorn server in a daemon thread; use as a context manager or call ``stop``."""

    app: Any
    host: str = "127.0.0.1"
    port: int = 0
    certfile: Path | None = None
    keyfile: Path | None = None
    _server: uvicorn.Server | None = field(default=None, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)

    @property
    def scheme(self) -> str:
        return "https" if self.certfile else "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> RunningServer:
        config = uvicorn.Config(
            self.app,
            host=self.host,
            port=self.port,
            log_level="warning",
            lifespan="off",
            ssl_certfile=str(self.certfile) if self.certfile else None,
            ssl_keyfile=str(self.keyfile) if self.keyfile else None,
            # Emulated load tests open many keep-alive connections at once.
            backlog=4096,
            timeout_keep_alive=30,
        )
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(
            target=lambda: asyncio.run(server.serve()), name="nemovlm-emulator", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(
                    f"The emulator could not start on {self.host}:{self.port}: is the port "
                    "in use? Pick another one (0 lets the system choose)."
                )
            time.sleep(0.01)
        # With port 0 the OS picked one: read it back from the bound socket.
        sockets = [s for srv in server.servers for s in srv.sockets]
        self.port = sockets[0].getsockname()[1]
        return self

    def stop(self, *, force: bool = False) -> None:
        """Stop serving. ``force`` does not wait for open connections to close (a TLS
        client may never answer the close, as uvicorn's second Ctrl-C knows)."""
        if self._server is not None:
            self._server.should_exit = True
            self._server.force_exit = force
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> RunningServer:
        return self.start() if self._server is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
