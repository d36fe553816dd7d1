"""The async path prepares media off the event loop (issue 14), even when that means
fetching a URL the model cannot take."""

from __future__ import annotations

import asyncio
import io
import os
import sys
from types import FrameType

import pytest
from PIL import Image

from nemovlm.backends.nim import NIMBackend
from nemovlm.media import MediaPolicy
from nemovlm.media.sources import to_data_url
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


async def test_an_image_sent_before_is_prepared_again_off_the_event_loop_for_more_tiles(
    nim_url: str,
) -> None:
    # The image is cached as prepared for the model's own pixel budget; more tiles ask
    # for a bigger budget, so it is decoded again, and that must not run on the loop.
    # Pillow's Python functions called on this (the loop's) thread are what did it.
    url = to_data_url(make_image(67, 41), "image/png")
    turns = [Turn("user", [TextPart("What is it?"), MediaPart("image", url=url)])]
    backend = NIMBackend(get_profile(NANO12), base_url=nim_url, max_retries=0)
    await backend.acomplete(turns, RequestOptions())
    pillow_on_loop: list[str] = []

    def watch(frame: FrameType, event: str, arg: object) -> None:
        if event == "call" and f"{os.sep}PIL{os.sep}" in frame.f_code.co_filename:
            pillow_on_loop.append(frame.f_code.co_name)

    sys.setprofile(watch)
    try:
        reply = await backend.acomplete(turns, RequestOptions(max_num_tiles=24))
    finally:
        sys.setprofile(None)
    assert reply.text.startswith("[nemovlm emulator]")
    assert pillow_on_loop == []


def test_inside_lookups_only_a_cache_miss_raises_instead_of_decoding() -> None:
    # What keeps a cached image's on-loop preparation a lookup even when another thread
    # evicts it between the check and the use: the miss raises, and aprepare goes to a
    # worker thread instead.
    from nemovlm.media import cache_info, prepare_media
    from nemovlm.media.cache import NotCached, lookups_only

    url = to_data_url(make_image(73, 29, text="lookups only"), "image/png")
    part = MediaPart("image", url=url)
    profile = get_profile(NANO12)
    decodes = cache_info().decodes
    with lookups_only(), pytest.raises(NotCached):
        prepare_media(part, profile)
    assert cache_info().decodes == decodes
    prepared = prepare_media(part, profile)  # outside the block: decoded once
    assert cache_info().decodes == decodes + 1
    with lookups_only():
        assert prepare_media(part, profile) is prepared
