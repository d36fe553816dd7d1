"""Files and the network: nothing is read or fetched that nobody meant to send (issue 7).

Local files are read only when the caller asked in a way a tool or a web page cannot:
LlamaIndex ``ImageBlock(path=...)`` / ``ImageNode(image_path=...)``, or a
``pathlib.Path`` in the core's ``MediaPart``. A bare path or ``file://`` URL arriving
inside message content (which may come from a tool or a web page) is refused unless
the model was built with ``allowed_media_dirs``, and even then only inside them.
Remote media the client itself must fetch (an image in a format the model does not
take) is http(s) only, size-capped and time-limited. The emulators listen on loopback
unless told otherwise.
"""

from __future__ import annotations

import asyncio
import base64
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from llama_index.core.base.llms.types import ChatMessage, ImageBlock, TextBlock, VideoBlock
from llama_index.core.schema import ImageNode
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from langchain_nemovlm import ChatNemoFal, ChatNemoVLM
from llama_index_nemovlm import NemoVLM, NemoVLMMultiModal
from nemovlm.backends.nim import NIMBackend
from nemovlm.cli import _parser
from nemovlm.emulator import start_nim_emulator
from nemovlm.emulator.fal import FalEmulator, start_fal_emulator, use_fal_emulator
from nemovlm.emulator.server import RunningServer
from nemovlm.errors import UnsupportedInputError
from nemovlm.media import MediaPolicy
from nemovlm.messages import MediaPart, TextPart, Turn
from nemovlm.options import RequestOptions
from nemovlm.pipeline import prepare
from nemovlm.profiles import get_profile
from nemovlm.samples import make_image

if TYPE_CHECKING:
    from tests.conftest import WireLog

NANO12 = "nvidia/nemotron-nano-12b-v2-vl"
DIFFUSION = "fal-ai/nemotron-diffusion-vlm"
PNG = make_image(64, 48, "png", text="file")
WEBP = make_image(40, 30, "webp")


def sent_images(body: dict[str, Any]) -> list[bytes]:
    """The bytes of every inline image in a request body the NIM emulator recorded."""
    found = []
    for message in body["messages"]:
        content = message["content"]
        for part in content if isinstance(content, list) else []:
            if part["type"] == "image_url":
                url = part["image_url"]["url"]
                if url.startswith("data:"):
                    found.append(base64.b64decode(url.split(",", 1)[1]))
    return found


def nothing_sent(wire: WireLog) -> bool:
    return httpx.get(f"{wire.base}/emulator/requests").json() == []


@pytest.fixture
def picture(tmp_path: Path) -> Path:
    path = tmp_path / "allowed" / "picture.png"
    path.parent.mkdir()
    path.write_bytes(PNG)
    return path


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A file outside every allowed directory, that must never be sent."""
    path = tmp_path / "private" / "secret.png"
    path.parent.mkdir()
    path.write_bytes(make_image(16, 16, "png", color=(255, 0, 0)))
    return path


def ask(url: str) -> list[BaseMessage]:
    return [
        HumanMessage(
            content=[
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": url}},
            ]
        )
    ]


# --- read because the caller asked -----------------------------------------------------------


def test_an_image_block_path_is_read_because_the_caller_asked(
    nim_url: str, wire: WireLog, picture: Path
) -> None:
    llm = NemoVLM(model=NANO12, base_url=nim_url)
    llm.chat([ChatMessage(role="user", blocks=[ImageBlock(path=picture), TextBlock(text="?")])])
    assert sent_images(wire.last()) == [PNG]


def test_an_image_node_path_is_read_because_the_caller_asked(
    nim_url: str, wire: WireLog, picture: Path
) -> None:
    llm = NemoVLMMultiModal(model=NANO12, base_url=nim_url)
    llm.complete("What is this?", image_documents=[ImageNode(image_path=str(picture))])
    assert sent_images(wire.last()) == [PNG]


def test_a_pathlib_path_in_a_core_media_part_is_read_because_the_caller_asked(
    nim_url: str, wire: WireLog, picture: Path
) -> None:
    backend = NIMBackend(get_profile(NANO12), base_url=nim_url)
    turn = Turn("user", [MediaPart("image", path=picture), TextPart("?")])
    backend.complete([turn], RequestOptions())
    assert sent_images(wire.last()) == [PNG]


# --- refused when it arrives inside content ----------------------------------------------------


@pytest.mark.parametrize("form", ["bare path", "file URL"])
def test_a_local_path_inside_langchain_content_is_refused(
    nim_url: str, wire: WireLog, secret: Path, form: str
) -> None:
    url = str(secret) if form == "bare path" else secret.as_uri()
    llm = ChatNemoVLM(model=NANO12, base_url=nim_url)
    with pytest.raises(UnsupportedInputError, match="may come from a tool or a web page"):
        llm.invoke(ask(url))
    assert nothing_sent(wire)


def test_a_local_path_returned_by_a_tool_is_refused(
    nim_url: str, wire: WireLog, secret: Path
) -> None:
    history = [
        HumanMessage(content="Show me the chart."),
        AIMessage(content="", tool_calls=[{"name": "chart", "args": {}, "id": "call_1"}]),
        ToolMessage(
            content=[{"type": "image_url", "image_url": {"url": str(secret)}}],
            tool_call_id="call_1",
        ),
    ]
    llm = ChatNemoVLM(model=NANO12, base_url=nim_url)
    with pytest.raises(UnsupportedInputError, match="not read .*no directory is allowed"):
        llm.invoke(history)
    assert nothing_sent(wire)


def test_a_standard_image_block_with_a_file_url_is_refused(
    nim_url: str, wire: WireLog, secret: Path
) -> None:
    block = {"type": "image", "url": secret.as_uri()}
    llm = ChatNemoVLM(model=NANO12, base_url=nim_url)
    with pytest.raises(UnsupportedInputError, match="allowed_dirs"):
        llm.invoke([HumanMessage(content=[{"type": "text", "text": "?"}, block])])
    assert nothing_sent(wire)


@pytest.mark.parametrize("kind", ["image", "video"])
def test_a_file_url_in_a_llama_index_block_url_is_refused(
    nim_url: str, wire: WireLog, secret: Path, kind: str
) -> None:
    block = ImageBlock(url=secret.as_uri()) if kind == "image" else VideoBlock(url=secret.as_uri())
    llm = NemoVLM(model=NANO12, base_url=nim_url)
    with pytest.raises(UnsupportedInputError, match="pathlib.Path"):
        llm.chat([ChatMessage(role="user", blocks=[block, TextBlock(text="?")])])
    assert nothing_sent(wire)


def test_an_image_node_with_a_file_url_is_refused(
    nim_url: str, wire: WireLog, secret: Path
) -> None:
    llm = NemoVLMMultiModal(model=NANO12, base_url=nim_url)
    with pytest.raises(UnsupportedInputError, match="may come from a tool or a web page"):
        llm.complete("?", image_documents=[ImageNode(image_url=secret.as_uri())])
    assert nothing_sent(wire)


@pytest.fixture(scope="module")
def fal_emulator() -> Iterator[FalEmulator]:
    with use_fal_emulator() as emulator:
        yield emulator


def test_a_local_path_to_fal_is_refused_and_nothing_is_uploaded(
    fal_emulator: FalEmulator, secret: Path
) -> None:
    llm = ChatNemoFal(model=DIFFUSION, api_key="emulator-key", poll_interval=0.01)
    with pytest.raises(UnsupportedInputError, match="may come from a tool or a web page"):
        llm.invoke(ask(str(secret)))
    assert fal_emulator.state.files == {} and fal_emulator.state.requests == {}


# --- the allow-list -------------------------------------------------------------------------------


def test_with_an_allow_list_a_path_inside_it_is_read(
    nim_url: str, wire: WireLog, picture: Path
) -> None:
    llm = ChatNemoVLM(model=NANO12, base_url=nim_url, allowed_media_dirs=[picture.parent])
    llm.invoke(ask(picture.as_uri()))
    assert sent_images(wire.last()) == [PNG]


def test_with_an_allow_list_a_path_outside_it_is_still_refused(
    nim_url: str, wire: WireLog, picture: Path, secret: Path
) -> None:
    llm = ChatNemoVLM(model=NANO12, base_url=nim_url, allowed_media_dirs=[picture.parent])
    with pytest.raises(UnsupportedInputError, match="outside allowed_dirs"):
        llm.invoke(ask(str(secret)))
    assert nothing_sent(wire)


def test_dotdot_cannot_climb_out_of_the_allow_list(
    nim_url: str, wire: WireLog, picture: Path, secret: Path
) -> None:
    climbing = f"{picture.parent}/../{secret.parent.name}/{secret.name}"
    llm = ChatNemoVLM(model=NANO12, base_url=nim_url, allowed_media_dirs=[picture.parent])
    with pytest.raises(UnsupportedInputError, match="outside allowed_dirs"):
        llm.invoke(ask(climbing))
    assert nothing_sent(wire)


def test_a_symlink_cannot_lead_out_of_the_allow_list(
    nim_url: str, wire: WireLog, picture: Path, secret: Path
) -> None:
    link = picture.parent / "innocent.png"
    link.symlink_to(secret)
    llm = ChatNemoVLM(model=NANO12, base_url=nim_url, allowed_media_dirs=[picture.parent])
    with pytest.raises(UnsupportedInputError, match="outside allowed_dirs"):
        llm.invoke(ask(str(link)))
    assert nothing_sent(wire)


# --- remote media the client fetches: http(s) only, capped, time-limited --------------------------


@pytest.fixture(scope="module")
def web() -> Iterator[tuple[str, Counter[str]]]:
    """A loopback web server with the media a client may be asked to fetch; counts hits."""
    hits: Counter[str] = Counter()

    async def serve(request: Request) -> Response:
        name = request.path_params["name"]
        hits[name] += 1
        if name == "photo.webp":
            return Response(WEBP, media_type="image/webp")
        if name == "photo.png":
            return Response(PNG, media_type="image/png")
        if name == "endless.webp":  # no content-length: only counting while reading helps

            async def forever() -> AsyncIterator[bytes]:
                yield WEBP
                while True:
                    yield bytes(64 * 1024)
                    await asyncio.sleep(0)

            return StreamingResponse(forever(), media_type="image/webp")
        if name == "slow.webp":  # answers only once the client has given up: no race
            while (await request.receive())["type"] != "http.disconnect":
                pass
            return Response(WEBP, media_type="image/webp")
        if name == "to-file.webp":
            return RedirectResponse("file:///etc/hostname", status_code=302)
        return Response(status_code=404)

    app = Starlette(routes=[Route("/{name}", serve)])
    with RunningServer(app) as server:
        yield server.url, hits


def fetching_backend(nim_url: str, **policy: Any) -> NIMBackend:
    return NIMBackend(
        get_profile(NANO12), base_url=nim_url, max_retries=0, policy=MediaPolicy(**policy)
    )


def user_image(url: str) -> list[Turn]:
    return [Turn("user", [TextPart("What is it?"), MediaPart("image", url=url)])]


def test_an_image_url_the_model_takes_is_passed_on_not_fetched(
    web: tuple[str, Counter[str]],
) -> None:
    base, hits = web
    # The client's side of a call alone: the emulator would fetch loopback URLs itself.
    prepared = prepare(user_image(f"{base}/photo.png"), RequestOptions(), get_profile(NANO12))
    assert [m.url for m in prepared.images] == [f"{base}/photo.png"]
    assert hits["photo.png"] == 0


def test_an_image_url_the_model_cannot_take_is_fetched_once_and_converted(
    nim_url: str, wire: WireLog, web: tuple[str, Counter[str]]
) -> None:
    base, hits = web
    fetching_backend(nim_url).complete(user_image(f"{base}/photo.webp"), RequestOptions())
    assert hits["photo.webp"] == 1
    [converted] = sent_images(wire.last())
    assert converted.startswith(b"\x89PNG")


def test_a_fetch_over_the_size_cap_is_cut_off_and_nothing_is_sent(
    nim_url: str, wire: WireLog, web: tuple[str, Counter[str]]
) -> None:
    base, _ = web
    backend = fetching_backend(nim_url, max_remote_bytes=256 * 1024)
    with pytest.raises(UnsupportedInputError, match=r"larger than MediaPolicy\.max_remote_bytes"):
        backend.complete(user_image(f"{base}/endless.webp"), RequestOptions())
    assert nothing_sent(wire)


def test_a_fetch_that_takes_too_long_is_refused_naming_the_setting(
    nim_url: str, wire: WireLog, web: tuple[str, Counter[str]]
) -> None:
    base, _ = web
    backend = fetching_backend(nim_url, remote_timeout=0.3)
    with pytest.raises(UnsupportedInputError, match=r"timed out .*MediaPolicy\.remote_timeout"):
        backend.complete(user_image(f"{base}/slow.webp"), RequestOptions())
    assert nothing_sent(wire)


def test_a_redirect_to_a_local_file_is_not_followed(
    nim_url: str, wire: WireLog, web: tuple[str, Counter[str]]
) -> None:
    base, _ = web
    with pytest.raises(UnsupportedInputError, match="Fetching the image .* failed"):
        fetching_backend(nim_url).complete(user_image(f"{base}/to-file.webp"), RequestOptions())
    assert nothing_sent(wire)


@pytest.mark.parametrize("url", ["ftp://example.com/a.webp", "gopher://example.com/a.png"])
def test_only_http_and_https_urls_are_accepted_in_content(
    nim_url: str, wire: WireLog, url: str
) -> None:
    llm = ChatNemoVLM(model=NANO12, base_url=nim_url)
    with pytest.raises(UnsupportedInputError, match="unsupported scheme"):
        llm.invoke(ask(url))
    assert nothing_sent(wire)


# --- the emulators listen on loopback ----------------------------------------------------------


def bound_addresses(server: RunningServer) -> set[str]:
    assert server._server is not None
    return {s.getsockname()[0] for srv in server._server.servers for s in srv.sockets}


def test_the_nim_emulator_binds_loopback_by_default() -> None:
    server = start_nim_emulator()
    try:
        assert bound_addresses(server) == {"127.0.0.1"}
    finally:
        server.stop()


def test_the_fal_emulator_binds_loopback_by_default() -> None:
    emulator = start_fal_emulator()
    try:
        assert bound_addresses(emulator.server) == {"127.0.0.1"}
    finally:
        emulator.stop()


def test_the_emulator_command_binds_loopback_by_default() -> None:
    assert _parser().parse_args(["emulator"]).host == "127.0.0.1"
