"""Idioms users bring from the ``openai`` SDK, ``ChatOpenAI`` and ``OpenAILike``, at the
core: the NIM backend over real HTTP to the emulator (adapters build on these).

Grouped as: errors are also the SDK's; ...
"""

from __future__ import annotations

import pickle
import socket
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from pydantic import SecretStr

from nemovlm.backends.fal import FalBackend
from nemovlm.backends.nim import NIMBackend
from nemovlm.emulator.fal import FalEmulator, use_fal_emulator
from nemovlm.errors import (
    IncompleteResponseError,
    RateLimitError,
    RequestError,
    RequestTimeoutError,
)
from nemovlm.messages import MediaPart, TextPart, Turn
from nemovlm.options import RequestOptions
from nemovlm.profiles import get_profile

NANO_8B = "nvidia/llama-3.1-nemotron-nano-vl-8b-v1"
NANO_12B = "nvidia/nemotron-nano-12b-v2-vl"
GEMMA = "google/diffusiongemma-26b-a4b-it"
OTHER = "acme/some-new-vlm"
DIFFUSION = "fal-ai/nemotron-diffusion-vlm"


def backend(url: str, model: str = NANO_12B, **settings: Any) -> NIMBackend:
    return NIMBackend(get_profile(model), url, max_retries=0, **settings)


def ask(text: str = "Hello") -> list[Turn]:
    return [Turn("user", [TextPart(text)])]


def faulty(url: str, fault: str, **settings: Any) -> NIMBackend:
    return backend(url, default_headers={"X-Emulator-Fault": fault}, **settings)


# --- errors are also the openai SDK's ----------------------------------------------------


def test_a_429_is_both_our_rate_limit_error_and_openais(nim_url: str) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        faulty(nim_url, "429").complete(ask(), RequestOptions())
    error = info.value
    assert isinstance(error, RateLimitError)
    assert error.status_code == 429
    assert error.model == NANO_12B
    assert error.request_id and error.request_id.startswith("emu-req-")
    assert str(error).startswith("Emulated fault 429 (rate limited)")
    assert error.message == str(error)
    assert isinstance(error.__cause__, openai.RateLimitError)


@pytest.mark.parametrize(
    ("status", "sdk_class"),
    [
        ("400", openai.BadRequestError),
        ("401", openai.AuthenticationError),
        ("403", openai.PermissionDeniedError),
        ("404", openai.NotFoundError),
        ("409", openai.ConflictError),
        ("422", openai.UnprocessableEntityError),
        ("500", openai.InternalServerError),
        ("503", openai.InternalServerError),
    ],
)
def test_each_status_error_is_also_the_sdks_class_for_that_status(
    nim_url: str, status: str, sdk_class: type[Exception]
) -> None:
    with pytest.raises(RequestError) as info:
        faulty(nim_url, status).complete(ask(), RequestOptions())
    assert isinstance(info.value, sdk_class)
    assert isinstance(info.value, openai.APIStatusError)
    assert info.value.status_code == int(status)
    assert not isinstance(info.value, openai.RateLimitError)


async def test_a_streamed_429_is_openais_rate_limit_error_too(nim_url: str) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        async for _ in faulty(nim_url, "429").astream(ask(), RequestOptions()):
            pass
    assert isinstance(info.value, RateLimitError)


def test_an_unreachable_server_is_openais_connection_error(unused_port: int) -> None:
    with pytest.raises(openai.APIConnectionError) as info:
        backend(f"http://127.0.0.1:{unused_port}/v1").complete(ask(), RequestOptions())
    assert isinstance(info.value, RequestError)
    assert "check base_url" in str(info.value)


def test_a_timeout_is_openais_timeout_error_and_a_builtin_one(nim_url: str) -> None:
    with pytest.raises(openai.APITimeoutError) as info:
        faulty(nim_url, "slow:5", timeout=0.3).complete(ask(), RequestOptions())
    assert isinstance(info.value, RequestTimeoutError)
    assert isinstance(info.value, TimeoutError)
    assert "timeout=0.3" in str(info.value)


def test_a_stream_that_breaks_is_incomplete_and_openais_connection_error(nim_url: str) -> None:
    with pytest.raises(IncompleteResponseError) as info:
        list(faulty(nim_url, "break_stream").stream(ask(), RequestOptions()))
    assert isinstance(info.value, openai.APIConnectionError)


def test_a_retry_written_for_openai_errors_catches_ours(nim_url: str) -> None:
    # What with_retry(retry_if_exception_type=(openai.RateLimitError,)) relies on.
    calls = 0
    model = backend(
        nim_url,
        default_headers={
            "X-Emulator-Fault": "429",
            "X-Emulator-Fault-Times": "1",
            "X-Emulator-Fault-Key": f"retry-{id(object())}",
        },
    )
    while True:
        calls += 1
        try:
            reply = model.complete(ask("retried"), RequestOptions())
            break
        except openai.RateLimitError:
            assert calls == 1
    assert calls == 2 and "retried" in reply.text


def test_an_openai_twin_pickles_and_stays_both(nim_url: str) -> None:
    with pytest.raises(RateLimitError) as info:
        faulty(nim_url, "429").complete(ask(), RequestOptions())
    copy = pickle.loads(pickle.dumps(info.value))
    assert isinstance(copy, RateLimitError) and isinstance(copy, openai.RateLimitError)
    assert (copy.status_code, copy.request_id, str(copy)) == (
        429,
        info.value.request_id,
        str(info.value),
    )


@pytest.fixture(scope="module")
def fal_emulator() -> Iterator[FalEmulator]:
    with use_fal_emulator() as emulator:
        yield emulator


def test_a_fal_422_is_openais_unprocessable_entity_error(fal_emulator: FalEmulator) -> None:
    # fal errors get the SDK's class for their status too, so one retry/fallback setting
    # serves both backends.
    fal_emulator.state.faults.clear()
    fal_emulator.inject_fault("422")
    fal = FalBackend(get_profile(DIFFUSION), SecretStr("emulator-key"), poll_interval=0.01)
    image = MediaPart("image", data=_png())
    with pytest.raises(openai.UnprocessableEntityError) as info:
        fal.complete([Turn("user", [TextPart("?"), image])], RequestOptions())
    assert isinstance(info.value, RequestError)
    assert info.value.status_code == 422
    assert "injected validation error" in str(info.value)


def _png() -> bytes:
    from nemovlm.samples import make_image

    return make_image(32, 32, "png")


@pytest.fixture
def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
