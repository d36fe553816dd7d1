"""The settings both frameworks offer are the core's (``nemovlm.settings``), declared once.

Every field of ``CommonSettings`` / ``NimSettings`` / ``FalSettings`` is a field of each
adapter class, with the core's default and description; a setting that shapes the
request reaches the emulator over HTTP the same way from LangChain and from LlamaIndex;
the connection settings reach the backend the same way. A new core setting fails
``test_every_core_setting_is_shown_reaching_the_request`` until it has a probe here.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from langchain_core.messages import HumanMessage
from llama_index.core.base.llms.types import (
    ChatMessage,
    ImageBlock,
    MessageRole,
    TextBlock,
    VideoBlock,
)
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from langchain_nemovlm import ChatNemoFal, ChatNemoVLM
from llama_index_nemovlm import NemoFal, NemoFalMultiModal, NemoVLM, NemoVLMMultiModal
from nemovlm.backends.fal import UPLOAD_THRESHOLD_BYTES
from nemovlm.backends.nim import NIMBackend
from nemovlm.emulator.fal import FalEmulator, use_fal_emulator
from nemovlm.emulator.server import RunningServer
from nemovlm.errors import UnsupportedInputError
from nemovlm.samples import make_image, make_mp4
from nemovlm.settings import CommonSettings, FalSettings, NimSettings
from tests.conftest import WireLog

NANO12 = "nvidia/nemotron-nano-12b-v2-vl"
LLAMA8 = "nvidia/llama-3.1-nemotron-nano-vl-8b-v1"
GEMMA = "google/diffusiongemma-26b-a4b-it"
DIFFUSION = "fal-ai/nemotron-diffusion-vlm"
OMNI = "nvidia/nemotron-3-nano-omni/video"
PNG = make_image()
BIG_PNG = make_image(2500, 2000)
MP4 = make_mp4()

ADAPTERS: list[tuple[type[BaseModel], type[BaseModel]]] = [
    (NimSettings, ChatNemoVLM),
    (NimSettings, NemoVLM),
    (NimSettings, NemoVLMMultiModal),
    (FalSettings, ChatNemoFal),
    (FalSettings, NemoFal),
    (FalSettings, NemoFalMultiModal),
]


@pytest.mark.parametrize(("core", "adapter"), ADAPTERS, ids=[a.__name__ for _, a in ADAPTERS])
def test_adapter_has_every_core_setting_with_the_cores_default_and_description(
    core: type[BaseModel], adapter: type[BaseModel]
) -> None:
    assert issubclass(adapter, core)
    for name, field in core.model_fields.items():
        mine = adapter.model_fields[name]
        assert (mine.annotation, mine.description) == (field.annotation, field.description)
        assert (mine.default, mine.default_factory) == (field.default, field.default_factory)


def test_fal_upload_threshold_default_is_the_backends() -> None:
    assert FalSettings.model_fields["upload_threshold_bytes"].default == UPLOAD_THRESHOLD_BYTES


def test_langchain_spellings_of_core_settings_still_work(nim_url: str) -> None:
    aclient = object()
    llm = ChatNemoVLM(
        model_name=NANO12,
        max_completion_tokens=5,
        stop_sequences=["x"],
        nvidia_base_url=nim_url,
        nvidia_api_key="nvapi-key",
        http_async_client=aclient,
    )
    assert (llm.model, llm.max_tokens, llm.stop, llm.base_url) == (NANO12, 5, ["x"], nim_url)
    assert llm.api_key is not None and llm.api_key.get_secret_value() == "nvapi-key"
    assert llm.http_async_client is aclient
    assert llm.backend.async_http_client is aclient


def test_langchain_spellings_of_fal_settings_still_work() -> None:
    llm = ChatNemoFal(model=DIFFUSION, inference_steps=64, fal_key="fal-key")
    assert llm.num_inference_steps == 64
    assert llm.api_key is not None and llm.api_key.get_secret_value() == "fal-key"


# --- request settings reach the wire, the same from both frameworks -------------------

Media = tuple[str, bytes | str]


def _langchain_messages(media: list[Media]) -> list[HumanMessage]:
    content: list[Any] = [{"type": "text", "text": "Describe it."}]
    for kind, value in media:
        if isinstance(value, str):
            content.append({"type": f"{kind}_url", f"{kind}_url": {"url": value}})
        else:
            mime = "image/png" if kind == "image" else "video/mp4"
            content.append(
                {"type": kind, "base64": base64.b64encode(value).decode(), "mime_type": mime}
            )
    return [HumanMessage(content=content)]


def _llama_index_messages(media: list[Media]) -> list[ChatMessage]:
    blocks: list[Any] = [TextBlock(text="Describe it.")]
    for kind, value in media:
        if kind == "image":
            blocks.append(
                ImageBlock(url=value) if isinstance(value, str) else ImageBlock(image=value)
            )
        else:
            blocks.append(
                VideoBlock(url=value) if isinstance(value, str) else VideoBlock(video=value)
            )
    return [ChatMessage(role=MessageRole.USER, blocks=blocks)]


# setting -> (the other settings of the probe, the value, media in the message)
NIM_PROBES: dict[str, tuple[dict[str, Any], Any, list[Media]]] = {
    "model": ({}, LLAMA8, []),
    "temperature": ({}, 0.3, []),
    "top_p": ({}, 0.5, []),
    "max_tokens": ({}, 7, []),
    "seed": ({}, 11, []),
    "reasoning": ({}, True, []),
    "include_reasoning": ({"model": GEMMA}, False, []),
    "allowed_media_dirs": ({}, "tmp", [("image", "file")]),
    "downscale_images": ({}, False, [("image", BIG_PNG)]),
    "max_image_pixels": ({}, 64 * 64, [("image", BIG_PNG)]),
    "profile_overrides": ({"model": LLAMA8}, {"images_first": False}, [("image", PNG)]),
    "default_headers": ({}, {"X-Team": "vision"}, []),
    "image_transport": ({"model": LLAMA8}, "img_tag", [("image", PNG)]),
    "video_fps": ({}, 2.0, [("video", MP4)]),
    "video_num_frames": ({}, 8, [("video", MP4)]),
    "max_num_tiles": ({}, 2, [("image", PNG)]),
}
# Not visible in a request body or header: shown reaching the backend below, and
# http_client over HTTP in test_users_http_client_fetches_media_for_both_frameworks.
NIM_CONNECTION = {
    "base_url",
    "api_key",
    "timeout",
    "max_retries",
    "http_client",
    "async_http_client",
}
FAL_PROBES: dict[str, tuple[dict[str, Any], Any, list[Media]]] = {
    "model": ({}, OMNI, [("video", MP4)]),
    "temperature": ({"model": OMNI}, 0.3, [("video", MP4)]),
    "top_p": ({"model": OMNI}, 0.5, [("video", MP4)]),
    "max_tokens": ({}, 64, [("image", PNG)]),
    "reasoning": ({"model": OMNI}, True, [("video", MP4)]),
    "downscale_images": ({"max_image_pixels": 64 * 64}, False, [("image", BIG_PNG)]),
    "max_image_pixels": ({}, 64 * 64, [("image", BIG_PNG)]),
    "allowed_media_dirs": ({}, "tmp", [("image", "file")]),
    "upload_threshold_bytes": ({}, 10, [("image", PNG)]),
    "num_inference_steps": ({"max_tokens": 64}, 64, [("image", PNG)]),
    "block_length": ({"max_tokens": 64}, 16, [("image", PNG)]),
    "threshold": ({}, 0.5, [("image", PNG)]),
    "profile_overrides": (
        {},
        {"image_formats": frozenset({"jpeg"}), "convert_images_to": "jpeg"},
        [("image", PNG)],
    ),
}
# seed and include_reasoning: refused by both fal apps (tests in test_chat_nemo_fal.py).
# upload_expires_in: not in the request; shown reaching fal's storage below.
FAL_CONNECTION = {
    "api_key", "timeout", "poll_interval", "max_retries", "seed", "include_reasoning",
    "upload_expires_in",
}  # fmt: skip


# Media guards: shown by the tests below (a private host fetched; caps that refuse).
MEDIA_GUARDS = {"allowed_media_hosts", "max_decode_pixels", "max_video_bytes"}
# The hosted catalog's settings: shown over HTTP to the hosted-mode emulator, for both
# frameworks, in tests/test_hosted.py and tests/test_hosted_llama_index.py.
HOSTED = {"hosted", "assets_url", "hosted_media"}


def test_every_core_setting_is_shown_reaching_the_request() -> None:
    assert set(NIM_PROBES) | NIM_CONNECTION | MEDIA_GUARDS | HOSTED == set(NimSettings.model_fields)
    assert set(FAL_PROBES) | FAL_CONNECTION | MEDIA_GUARDS == set(FalSettings.model_fields)
    assert set(CommonSettings.model_fields) <= set(NimSettings.model_fields)


def _resolve(value: Any, media: list[Media], tmp_path: Path) -> tuple[Any, list[Media]]:
    if value != "tmp":
        return value, media
    picture = tmp_path / "chart.png"
    picture.write_bytes(PNG)
    return [tmp_path], [(kind, picture.as_uri()) for kind, _ in media]


def _nim_request(wire: WireLog, llm: Any, messages: list[Any]) -> dict[str, Any]:
    wire.clear()
    llm.chat(messages) if isinstance(llm, NemoVLM) else llm.invoke(messages)
    [record] = [r for r in httpx.get(f"{wire.base}/emulator/requests").json()]
    headers = {k: v for k, v in record["headers"].items() if k.startswith("x-team")}
    return {"body": record["body"], "headers": headers}


@pytest.mark.parametrize("name", sorted(NIM_PROBES))
def test_nim_setting_shapes_the_request_the_same_from_both_frameworks(
    name: str, nim_url: str, wire: WireLog, tmp_path: Path
) -> None:
    others, value, media = NIM_PROBES[name]
    value, media = _resolve(value, media, tmp_path)
    base = {"model": NANO12, "base_url": nim_url, **others}
    lc_messages, li_messages = _langchain_messages(media), _llama_index_messages(media)
    with_setting = {**base, name: value}
    sent = _nim_request(wire, ChatNemoVLM(**with_setting), lc_messages)
    assert _nim_request(wire, NemoVLM(**with_setting), li_messages) == sent
    if name != "allowed_media_dirs":  # without it, the file is refused before sending
        assert _nim_request(wire, ChatNemoVLM(**base), lc_messages) != sent


@pytest.fixture(scope="module")
def fal_emulator() -> Iterator[FalEmulator]:
    with use_fal_emulator() as emu:
        yield emu


def _fal_request(emulator: FalEmulator, llm: Any, messages: list[Any]) -> Any:
    llm.chat(messages) if isinstance(llm, NemoFal) else llm.invoke(messages)
    arguments = dict(emulator.state.received()[-1])
    for key in ("image_url", "video_url"):
        # An uploaded file gets a fresh storage URL per upload; its scheme tells.
        if isinstance(arguments.get(key), str) and not arguments[key].startswith("data:"):
            arguments[key] = "uploaded"
    return arguments


@pytest.mark.parametrize("name", sorted(FAL_PROBES))
def test_fal_setting_shapes_the_request_the_same_from_both_frameworks(
    name: str, fal_emulator: FalEmulator, tmp_path: Path
) -> None:
    others, value, media = FAL_PROBES[name]
    value, media = _resolve(value, media, tmp_path)
    base = {"model": DIFFUSION, "api_key": "fal-key", "poll_interval": 0.01, **others}
    lc_messages, li_messages = _langchain_messages(media), _llama_index_messages(media)
    with_setting = {**base, name: value}
    sent = _fal_request(fal_emulator, ChatNemoFal(**with_setting), lc_messages)
    assert _fal_request(fal_emulator, NemoFal(**with_setting), li_messages) == sent
    if name not in ("allowed_media_dirs", "model"):  # without it, refused before sending
        assert _fal_request(fal_emulator, ChatNemoFal(**base), lc_messages) != sent


def test_connection_settings_reach_the_backend_the_same_from_both_frameworks(
    nim_url: str,
) -> None:
    client, aclient = object(), object()  # the backend makes its clients on first use
    settings = {
        "model": NANO12,
        "base_url": nim_url,
        "api_key": "nvapi-key",
        "timeout": 12.5,
        "max_retries": 5,
        "http_client": client,
        "async_http_client": aclient,
    }
    for llm in (ChatNemoVLM(**settings), NemoVLM(**settings)):
        backend = llm.backend
        assert isinstance(backend, NIMBackend)
        assert (backend.base_url, backend.timeout, backend.max_retries) == (nim_url, 12.5, 5)
        assert backend.api_key is not None
        assert backend.api_key.get_secret_value() == "nvapi-key"
        assert (backend.http_client, backend.async_http_client) == (client, aclient)
        assert backend.policy.http_client is client


@pytest.fixture(scope="module")
def picture_host() -> Iterator[str]:
    """A web server holding a GIF, which Llama Nano VL (JPEG/PNG only) needs converted."""

    async def serve(request: Request) -> Response:
        return Response(make_image(fmt="gif"), media_type="image/gif")

    with RunningServer(Starlette(routes=[Route("/{name}", serve)])) as server:
        yield server.url


@pytest.mark.parametrize("framework", ["langchain", "llama_index"])
def test_users_http_client_fetches_media_for_both_frameworks(
    framework: str, nim_url: str, wire: WireLog, picture_host: str
) -> None:
    seen: list[str] = []
    # The type the installed openai SDK takes (httpx, or httpx2 with openai 3.x).
    client = openai.DefaultHttpxClient(event_hooks={"request": [lambda r: seen.append(str(r.url))]})
    url = f"{picture_host}/chart.gif"
    settings: dict[str, Any] = {
        "model": LLAMA8,
        "base_url": nim_url,
        "http_client": client,
        "allowed_media_hosts": ["127.0.0.1"],
    }
    with client:
        if framework == "langchain":
            ChatNemoVLM(**settings).invoke(_langchain_messages([("image", url)]))
        else:
            NemoVLM(**settings).chat(_llama_index_messages([("image", url)]))
    assert seen == [url, f"{nim_url}/chat/completions"]
    [part] = [p for p in wire.last()["messages"][0]["content"] if p["type"] == "image_url"]
    assert part["image_url"]["url"].startswith("data:image/png;base64,")


def _ask_about(framework: str, settings: dict[str, Any], media: list[Media]) -> None:
    if framework == "langchain":
        ChatNemoVLM(**settings).invoke(_langchain_messages(media))
    else:
        NemoVLM(**settings).chat(_llama_index_messages(media))


@pytest.mark.parametrize("framework", ["langchain", "llama_index"])
def test_a_private_media_host_is_refused_unless_allowed_in_either_framework(
    framework: str, nim_url: str, wire: WireLog, picture_host: str
) -> None:
    media: list[Media] = [("image", f"{picture_host}/chart.gif")]  # 127.0.0.1: not public
    settings: dict[str, Any] = {"model": LLAMA8, "base_url": nim_url}
    with pytest.raises(UnsupportedInputError, match="allowed_media_hosts"):
        _ask_about(framework, settings, media)
    assert wire.bodies() == []
    _ask_about(framework, {**settings, "allowed_media_hosts": ["127.0.0.1"]}, media)
    [part] = [p for p in wire.last()["messages"][0]["content"] if p["type"] != "text"]
    assert part["image_url"]["url"].startswith("data:image/png;base64,")


@pytest.mark.parametrize("cls", [ChatNemoVLM, NemoVLM, ChatNemoFal, NemoFal])
@pytest.mark.parametrize(
    ("name", "value", "media", "match"),
    [
        ("max_decode_pixels", 1000, ("image", BIG_PNG), "max_decode_pixels"),
        ("max_video_bytes", 100, ("video", MP4), "max_video_bytes"),
    ],
)
def test_media_caps_refuse_before_sending_in_both_frameworks(
    cls: Any, name: str, value: int, media: Media, match: str, nim_url: str, wire: WireLog
) -> None:
    wire.clear()
    fal = cls in (ChatNemoFal, NemoFal)
    model = (OMNI if media[0] == "video" else DIFFUSION) if fal else NANO12
    where = {"api_key": "fal-key"} if fal else {"base_url": nim_url}
    llm = cls(model=model, **where, **{name: value})
    with pytest.raises(UnsupportedInputError, match=match):
        if cls in (ChatNemoVLM, ChatNemoFal):
            llm.invoke(_langchain_messages([media]))
        else:
            llm.chat(_llama_index_messages([media]))
    assert wire.bodies() == []


def test_fal_connection_settings_reach_the_backend_the_same_from_both_frameworks() -> None:
    settings = {"model": OMNI, "api_key": "fal-key", "timeout": 42.0, "poll_interval": 0.5}
    for llm in (ChatNemoFal(**settings), NemoFal(**settings)):
        backend = llm.backend
        assert (backend.timeout, backend.poll_interval) == (42.0, 0.5)
        assert backend.api_key.get_secret_value() == "fal-key"


def test_upload_expires_in_reaches_fal_storage_the_same_from_both_frameworks(
    fal_emulator: FalEmulator,
) -> None:
    settings = {"model": OMNI, "api_key": "fal-key", "poll_interval": 0.01}
    media: list[Media] = [("video", MP4)]
    lifecycles = []
    for llm in (
        ChatNemoFal(**settings, upload_threshold_bytes=10, upload_expires_in="1d"),
        NemoFal(**settings, upload_threshold_bytes=10, upload_expires_in="1d"),
    ):
        arguments = (
            llm.chat(_llama_index_messages(media))
            if isinstance(llm, NemoFal)
            else llm.invoke(_langchain_messages(media))
        )
        assert arguments is not None
        url = fal_emulator.state.received()[-1]["video_url"]
        file_id = url.split("/cdn/files/", 1)[1].split("/", 1)[0]
        lifecycles.append(fal_emulator.state.files[file_id].lifecycle)
    assert lifecycles == [{"expiration_duration_seconds": 86400}] * 2


def test_failed_fetch_through_users_client_is_a_clear_error(nim_url: str) -> None:
    with openai.DefaultHttpxClient() as client:
        llm = NemoVLM(
            model=LLAMA8,
            base_url=nim_url,
            http_client=client,
            allowed_media_hosts=["127.0.0.1"],
        )
        with pytest.raises(UnsupportedInputError, match="check the URL"):
            llm.chat(_llama_index_messages([("image", "http://127.0.0.1:9/chart.gif")]))
