"""The NIM emulator, with the request body bytes of every chat call counted at the server.

``BodyBytes`` wraps any ASGI app and records, per ``/chat/completions`` request, how
many body bytes arrived: what actually crossed the wire, whatever the client did.
``sent_images`` reads the image data URLs the emulator recorded back into bytes.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from nemovlm.emulator.nim import create_nim_app
from nemovlm.emulator.server import RunningServer


@dataclass
class BodyBytes:
    """ASGI middleware: body bytes of each chat request, in order."""

    app: Any
    sizes: list[int] = field(default_factory=list)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].endswith("/chat/completions"):
            await self.app(scope, receive, send)
            return
        total = 0

        async def counting_receive() -> Any:
            nonlocal total
            message = await receive()
            if message["type"] == "http.request":
                total += len(message.get("body", b""))
            return message

        try:
            await self.app(scope, counting_receive, send)
        finally:
            self.sizes.append(total)


@dataclass
class CountedEmulator:
    url: str
    counter: BodyBytes

    def reset(self) -> None:
        self.counter.sizes.clear()
        httpx.delete(f"{self.url}/emulator/requests").raise_for_status()

    def sent_images(self) -> list[bytes]:
        """The image bytes of every ``image_url`` part the emulator received."""
        records = httpx.get(f"{self.url}/emulator/requests").json()
        images = []
        for record in records:
            body = record.get("body")
            if not isinstance(body, dict):
                continue
            for message in body.get("messages", []):
                content = message.get("content")
                for part in content if isinstance(content, list) else []:
                    if part.get("type") == "image_url":
                        url = part["image_url"]["url"]
                        images.append(base64.b64decode(url.split(",", 1)[1]))
        return images


@contextmanager
def counted_nim_emulator() -> Iterator[CountedEmulator]:
    counter = BodyBytes(create_nim_app())
    server = RunningServer(counter).start()
    try:
        yield CountedEmulator(server.url, counter)
    finally:
        server.stop()
