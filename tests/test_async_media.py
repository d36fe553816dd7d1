"""The async path prepares media off the event loop (issue 14), even when that means
fetching a URL the model cannot take."""

from __future__ import annotations

import asyncio
import io

from PIL import Image

from nemovlm.backends.nim import NIMBackend
from nemovlm.media import MediaPolicy
from nemovlm.messages import MediaPart, TextPart, Turn
from nemovlm.options import RequestOptions
from nemovlm.profiles import get_profile
from nemovlm.samples import make_image

NANO12 = "nvidia/nemotron-nano-12b-v2-vl"


def _webp() -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(make_image(64, 48))).save(buffer, "WEBP")
    return buffer.getvalue()


async def test_a_url_fetched_for_an_async_call_is_fetched_off_the_event_loop(
    nim_url: str,
) -> None:
    # The web server runs on the test's own event loop: had the fetch run on that loop
    # it would block it, the server could never answer, and the fetch would time out.
    webp = _webp()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        head = f"HTTP/1.1 200 OK\r\nContent-Type: image/webp\r\nContent-Length: {len(webp)}\r\n"
        writer.write(head.encode() + b"Connection: close\r\n\r\n" + webp)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    backend = NIMBackend(
        get_profile(NANO12),
        base_url=nim_url,
        max_retries=0,
        policy=MediaPolicy(remote_timeout=10, allowed_hosts=("127.0.0.1",)),
    )
    turns = [
        Turn(
            "user",
            [TextPart("What is it?"), MediaPart("image", url=f"http://127.0.0.1:{port}/p.webp")],
        )
    ]
    async with server:
        reply = await backend.acomplete(turns, RequestOptions())
    assert reply.text.startswith("[nemovlm emulator]")
