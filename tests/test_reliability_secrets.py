"""Keys never leak (issue 7): not in ``repr``, ``str``, exceptions, logs, LangChain
``dumps`` or LlamaIndex ``to_dict``, nor in what the frameworks hand to callbacks and
instrumentation (where tracers pick things up).

Each surface is rendered to text and scanned for the key; the keys are long random
strings, so a hit is a real leak. A last pair of tests shows the keys are really in
use, so the scan is not vacuous.
"""

from __future__ import annotations

import base64
import json
import logging
import traceback
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.load import dumpd, dumps
from langchain_core.messages import HumanMessage
from llama_index.core.base.llms.types import ChatMessage, ImageBlock, TextBlock
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent

from langchain_nemovlm import ChatNemoFal, ChatNemoVLM
from llama_index_nemovlm import NemoFal, NemoVLM
from nemovlm.backends.nim import NIMBackend
from nemovlm.emulator.fal import FalEmulator, FalEmulatorSettings, use_fal_emulator
from nemovlm.errors import NemoVLMError, RequestError
from nemovlm.samples import make_image, make_mp4

NIM_KEY = f"nvapi-{uuid.uuid4().hex}{uuid.uuid4().hex}"
FAL_KEY = f"{uuid.uuid4()}:{uuid.uuid4().hex}"
KEYS = (NIM_KEY, FAL_KEY)
NANO12 = "nvidia/nemotron-nano-12b-v2-vl"
DIFFUSION = "fal-ai/nemotron-diffusion-vlm"
PNG_URL = "data:image/png;base64," + base64.b64encode(make_image()).decode()


def leaks(text: str) -> list[str]:
    """The keys (or a telling piece of one) found in ``text``."""
    pieces = [k for k in KEYS if k in text]
    # A key cut short or split is still a leak: look for its middle too.
    pieces += [k[10:30] for k in KEYS if k[10:30] in text and k not in text]
    return pieces


def everything_about(error: BaseException) -> str:
    """An exception as a user or a log would see it: message, repr, chain, traceback."""
    chain = []
    seen: BaseException | None = error
    while seen is not None:
        chain += [str(seen), repr(seen), repr(getattr(seen, "__dict__", {}))]
        seen = seen.__cause__ or seen.__context__
    return "\n".join([*chain, *traceback.format_exception(error)])


@pytest.fixture(scope="module")
def fal_emulator() -> Iterator[FalEmulator]:
    # The emulator takes only FAL_KEY, so a request that works proves the key was sent.
    with use_fal_emulator(settings=FalEmulatorSettings(api_keys=frozenset({FAL_KEY}))) as emu:
        yield emu


def models(nim_url: str) -> dict[str, Any]:
    return {
        "ChatNemoVLM": ChatNemoVLM(model=NANO12, base_url=nim_url, api_key=NIM_KEY),
        "ChatNemoFal": ChatNemoFal(model=DIFFUSION, api_key=FAL_KEY, poll_interval=0.01),
        "NemoVLM": NemoVLM(model=NANO12, base_url=nim_url, api_key=NIM_KEY),
        "NemoFal": NemoFal(model=DIFFUSION, api_key=FAL_KEY, poll_interval=0.01),
    }


RENDERINGS: dict[str, Callable[[Any], str]] = {
    "repr": repr,
    "str": str,
    "model_dump": lambda m: repr(m.model_dump()),
    "model_dump_json": lambda m: m.model_dump_json(),
    "backend repr": lambda m: repr(m.backend),
    "backend str": lambda m: str(m.backend),
}


@pytest.mark.parametrize("rendering", list(RENDERINGS))
@pytest.mark.parametrize("name", ["ChatNemoVLM", "ChatNemoFal", "NemoVLM", "NemoFal"])
def test_the_key_is_not_in_any_rendering_of_a_model(
    nim_url: str, name: str, rendering: str
) -> None:
    model = models(nim_url)[name]
    assert leaks(RENDERINGS[rendering](model)) == []


@pytest.mark.parametrize("name", ["ChatNemoVLM", "ChatNemoFal"])
def test_the_key_is_not_in_langchain_dumps(nim_url: str, name: str) -> None:
    model = models(nim_url)[name]
    dumped = dumps(model)
    assert leaks(dumped) == []
    assert leaks(json.dumps(dumpd(model))) == []
    # The key is kept as a reference to its environment variable, never its value.
    assert json.loads(dumped)["kwargs"]["api_key"]["type"] == "secret"


@pytest.mark.parametrize("name", ["NemoVLM", "NemoFal"])
def test_the_key_is_not_in_llama_index_to_dict(nim_url: str, name: str) -> None:
    model = models(nim_url)[name]
    assert leaks(repr(model.to_dict())) == []


@pytest.mark.parametrize("name", ["NemoVLM", "NemoFal"])
def test_the_key_is_not_in_llama_index_to_json(nim_url: str, name: str) -> None:
    model = models(nim_url)[name]
    dumped = json.loads(model.to_json())
    assert leaks(model.to_json()) == [] and dumped["api_key"] is None


def test_a_key_from_the_environment_is_not_in_dumps_either(
    nim_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NVIDIA_API_KEY", NIM_KEY)
    monkeypatch.setenv("FAL_KEY", FAL_KEY)
    chat = ChatNemoVLM(model=NANO12, base_url=nim_url)
    fal = ChatNemoFal(model=DIFFUSION)
    li = NemoVLM(model=NANO12, base_url=nim_url)
    assert chat.api_key is not None and chat.api_key.get_secret_value() == NIM_KEY
    texts = [dumps(chat), dumps(fal), repr(chat), repr(fal), repr(li.to_dict()), repr(li)]
    assert leaks("\n".join(texts)) == []


def test_the_key_is_not_in_an_error_from_the_nim_server(nim_url: str) -> None:
    llm = ChatNemoVLM(model=NANO12, base_url=nim_url, api_key=NIM_KEY, max_retries=0)
    clip = "data:video/mp4;base64," + base64.b64encode(make_mp4(duration_s=1.0)).decode()
    video = {"type": "video_url", "video_url": {"url": clip}}
    with pytest.raises(RequestError) as info:
        # More frames than the clip has: only the server knows, so a real 400 round trip.
        llm.invoke([HumanMessage(content=["?", video])], video_num_frames=100)
    assert info.value.status_code == 400
    assert leaks(everything_about(info.value)) == []


def test_the_key_is_not_in_an_error_from_the_fal_server(fal_emulator: FalEmulator) -> None:
    wrong = ChatNemoFal(model=DIFFUSION, api_key=NIM_KEY, poll_interval=0.01)  # not fal's
    with pytest.raises(RequestError) as info:
        wrong.invoke(ask_with_image())
    assert info.value.status_code == 401
    assert leaks(everything_about(info.value)) == []


def test_the_key_is_not_in_an_error_raised_before_sending(nim_url: str) -> None:
    llm = ChatNemoVLM(model=NANO12, base_url=nim_url, api_key=NIM_KEY, top_p=7.0)
    with pytest.raises(NemoVLMError) as info:
        llm.invoke("hi")
    assert leaks(everything_about(info.value)) == []


def test_the_key_is_not_in_debug_logs_of_whole_calls(
    nim_url: str, fal_emulator: FalEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    every = models(nim_url)
    with caplog.at_level(logging.DEBUG):
        every["ChatNemoVLM"].invoke("hi")
        list(every["ChatNemoVLM"].stream("hi"))
        every["ChatNemoFal"].invoke(ask_with_image())
        every["NemoVLM"].chat([ChatMessage(role="user", content="hi")])
    assert len(caplog.records) > 10  # the libraries did log at DEBUG
    logged = "\n".join(
        f"{r.name} {r.getMessage()} {r.args!r} {r.__dict__!r}" for r in caplog.records
    )
    assert leaks(logged) == []


class Recorder(BaseCallbackHandler):
    """Keeps whatever LangChain hands to a callback (what tracers would send away)."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def on_chat_model_start(self, serialized: Any, messages: Any, **kwargs: Any) -> None:
        self.seen.append(repr(serialized) + repr(kwargs))

    def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        self.seen.append(repr(response) + repr(kwargs))


def test_the_key_is_not_in_what_langchain_callbacks_receive(
    nim_url: str, fal_emulator: FalEmulator
) -> None:
    recorder = Recorder()
    every = models(nim_url)
    every["ChatNemoVLM"].invoke("hi", config={"callbacks": [recorder]})
    every["ChatNemoFal"].invoke(ask_with_image(), config={"callbacks": [recorder]})
    assert len(recorder.seen) == 4
    assert leaks("\n".join(recorder.seen)) == []


class EventRecorder(BaseEventHandler):
    """Keeps every LlamaIndex instrumentation event (what observability tools read)."""

    seen: list[str] = []

    @classmethod
    def class_name(cls) -> str:
        return "EventRecorder"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        self.seen.append(repr(event) + repr(event.model_dump()))


def test_the_key_is_not_in_what_llama_index_instrumentation_receives(
    nim_url: str, fal_emulator: FalEmulator
) -> None:
    recorder = EventRecorder(seen=[])
    dispatcher = get_dispatcher()
    dispatcher.add_event_handler(recorder)
    try:
        every = models(nim_url)
        every["NemoVLM"].chat([ChatMessage(role="user", content="hi")])
        picture = ImageBlock(image=make_image())
        every["NemoFal"].chat([ChatMessage(role="user", blocks=[picture, TextBlock(text="?")])])
    finally:
        dispatcher.event_handlers.remove(recorder)
    assert len(recorder.seen) >= 4  # start and end of each call
    assert leaks("\n".join(recorder.seen)) == []


# --- the keys are really used ---------------------------------------------------------------


def test_the_fal_key_really_reaches_fal(fal_emulator: FalEmulator) -> None:
    llm = ChatNemoFal(model=DIFFUSION, api_key=FAL_KEY, poll_interval=0.01)
    assert "[nemovlm emulator]" in llm.invoke(ask_with_image()).text


def test_the_nim_key_is_what_the_client_sends(nim_url: str) -> None:
    llm = ChatNemoVLM(model=NANO12, base_url=nim_url, api_key=NIM_KEY)
    llm.invoke("warm up")
    # The SDK's auth header is built from the key; the emulator drops it from its log.
    backend = llm.backend
    assert isinstance(backend, NIMBackend) and backend.client.api_key == NIM_KEY


def ask_with_image() -> list[HumanMessage]:
    return [
        HumanMessage(
            content=[
                {"type": "text", "text": "What is in the picture?"},
                {"type": "image_url", "image_url": {"url": PNG_URL}},
            ]
        )
    ]


# --- credentials in places not marked secret: headers and base_url --------------------------

HEADER_TOKEN = f"hdr-{uuid.uuid4().hex}{uuid.uuid4().hex}"
GATEWAY_KEY = f"gw-{uuid.uuid4().hex}{uuid.uuid4().hex}"
URL_PASSWORD = f"pw{uuid.uuid4().hex}"
HIDDEN = (HEADER_TOKEN, GATEWAY_KEY, URL_PASSWORD, NIM_KEY)


def hidden_leaks(text: str) -> list[str]:
    return [s for s in HIDDEN if s in text]


def with_credentials(nim_url: str, **extra: str) -> dict[str, str]:
    """Settings with a token in ``Authorization``, a key in a custom header, a harmless
    header, and a password in ``base_url``."""
    return {
        "model": NANO12,
        "base_url": nim_url.replace("http://", f"http://gateway-user:{URL_PASSWORD}@"),
        "api_key": NIM_KEY,
        "default_headers": {  # type: ignore[dict-item]
            "Authorization": f"Bearer {HEADER_TOKEN}",
            "X-Gateway-Key": GATEWAY_KEY,
            "X-Team": "vision",
            **extra,
        },
    }


def credentialed(nim_url: str) -> dict[str, Any]:
    settings = with_credentials(nim_url)
    return {"ChatNemoVLM": ChatNemoVLM(**settings), "NemoVLM": NemoVLM(**settings)}  # type: ignore[arg-type]


@pytest.mark.parametrize("rendering", list(RENDERINGS))
@pytest.mark.parametrize("name", ["ChatNemoVLM", "NemoVLM"])
def test_credentials_in_headers_and_base_url_are_not_in_any_rendering(
    nim_url: str, name: str, rendering: str
) -> None:
    text = RENDERINGS[rendering](credentialed(nim_url)[name])
    assert hidden_leaks(text) == []


def test_a_harmless_header_and_the_url_without_its_password_still_show(nim_url: str) -> None:
    shown = repr(credentialed(nim_url)["ChatNemoVLM"])
    assert "'X-Team': 'vision'" in shown and "gateway-user:**********@127.0.0.1" in shown


def test_a_credential_in_the_base_url_query_is_hidden_too(nim_url: str) -> None:
    model = NemoVLM(model=NANO12, base_url=f"{nim_url}?api_key={GATEWAY_KEY}&region=eu")
    shown = repr(model) + model.to_json()
    assert hidden_leaks(shown) == [] and "region=eu" in shown


def with_assets_password(nim_url: str) -> dict[str, Any]:
    assets = nim_url.replace("http://", f"http://nvcf-user:{URL_PASSWORD}@")
    return {"model": NANO12, "base_url": nim_url, "hosted": True, "assets_url": assets}


@pytest.mark.parametrize("rendering", list(RENDERINGS))
@pytest.mark.parametrize("cls", [ChatNemoVLM, NemoVLM])
def test_a_password_in_assets_url_is_not_in_any_rendering(
    nim_url: str, cls: Any, rendering: str
) -> None:
    model = cls(**with_assets_password(nim_url))
    text = RENDERINGS[rendering](model)
    assert hidden_leaks(text) == []
    assert URL_PASSWORD in str(model.backend.hosted.assets_url)  # still the real URL


def test_a_password_in_assets_url_is_not_in_llama_index_to_json(nim_url: str) -> None:
    shown = NemoVLM(**with_assets_password(nim_url)).to_json()
    assert hidden_leaks(shown) == [] and "nvcf-user:**********@" in shown


def test_a_password_in_assets_url_is_a_secret_reference_in_langchain_dumps(nim_url: str) -> None:
    kwargs = json.loads(dumps(ChatNemoVLM(**with_assets_password(nim_url))))["kwargs"]
    assert kwargs["assets_url"] == {"lc": 1, "type": "secret", "id": ["NVCF_ASSETS_URL"]}


def test_a_password_in_assets_url_is_not_in_an_error_about_reaching_it(nim_url: str) -> None:
    settings = with_assets_password(nim_url)
    settings["assets_url"] = f"http://nvcf-user:{URL_PASSWORD}@127.0.0.1:9/v2/nvcf/assets"
    llm = ChatNemoVLM(**settings, api_key=NIM_KEY, max_retries=0, hosted_media="upload")
    with pytest.raises(RequestError, match="Creating an NVCF asset") as info:
        llm.invoke(ask_with_image())
    assert hidden_leaks(everything_about(info.value)) == []


def test_credentials_in_headers_and_base_url_are_secret_references_in_langchain_dumps(
    nim_url: str,
) -> None:
    model = credentialed(nim_url)["ChatNemoVLM"]
    dumped = dumps(model)
    assert hidden_leaks(dumped) == []
    kwargs = json.loads(dumped)["kwargs"]
    secret = {"lc": 1, "type": "secret"}
    assert kwargs["default_headers"] == {**secret, "id": ["NEMOVLM_DEFAULT_HEADERS"]}
    assert kwargs["base_url"] == {**secret, "id": ["NVIDIA_BASE_URL"]}


def test_headers_without_a_credential_stay_plain_in_langchain_dumps(nim_url: str) -> None:
    model = ChatNemoVLM(model=NANO12, base_url=nim_url, default_headers={"X-Team": "vision"})
    kwargs = json.loads(dumps(model))["kwargs"]
    assert kwargs["default_headers"] == {"X-Team": "vision"}
    assert kwargs["base_url"] == nim_url


@pytest.mark.filterwarnings("ignore:The function `loads` is in beta")
def test_a_langchain_model_loads_back_with_its_credentials_given_as_secrets(
    nim_url: str,
) -> None:
    from langchain_core.load import loads

    model = credentialed(nim_url)["ChatNemoVLM"]
    secrets = {
        "NVIDIA_API_KEY": NIM_KEY,
        "NVIDIA_BASE_URL": str(model.base_url),
        # The headers as JSON text (secrets_map holds strings), or as a dict.
        "NEMOVLM_DEFAULT_HEADERS": json.dumps(dict(model.default_headers or {})),
    }
    loaded = loads(
        dumps(model), secrets_map=secrets,
        valid_namespaces=["langchain_nemovlm"], allowed_objects=[ChatNemoVLM],  # type: ignore[arg-type]
    )  # fmt: skip
    assert loaded.default_headers == model.default_headers
    assert loaded.base_url == model.base_url
    assert "[nemovlm emulator]" in loaded.invoke("hi").text


@pytest.mark.filterwarnings("ignore:The function `loads` is in beta")
def test_a_langchain_model_loaded_without_its_secrets_holds_none_of_them(
    nim_url: str,
) -> None:
    from langchain_core.load import loads

    dumped = dumps(credentialed(nim_url)["ChatNemoVLM"])
    loaded = loads(
        dumped,
        valid_namespaces=["langchain_nemovlm"],
        allowed_objects=[ChatNemoVLM],  # type: ignore[arg-type]
    )
    # As with api_key: what was not given back is read from the environment or unset.
    assert (loaded.default_headers, loaded.base_url) == (None, None)


def test_credentials_in_headers_are_not_in_what_langchain_callbacks_receive(
    nim_url: str,
) -> None:
    recorder = Recorder()
    credentialed(nim_url)["ChatNemoVLM"].invoke("hi", config={"callbacks": [recorder]})
    assert len(recorder.seen) == 2
    assert hidden_leaks("\n".join(recorder.seen)) == []


@pytest.mark.parametrize("dump", ["to_dict", "to_json"])
def test_credentials_in_headers_and_base_url_are_redacted_in_llama_index_dumps(
    nim_url: str, dump: str
) -> None:
    model = credentialed(nim_url)["NemoVLM"]
    text = repr(model.to_dict()) if dump == "to_dict" else model.to_json()
    assert hidden_leaks(text) == []
    assert "X-Gateway-Key" in text and "**********" in text


def test_a_llama_index_model_rebuilt_from_a_dump_asks_for_the_header_again(
    nim_url: str,
) -> None:
    dumped = credentialed(nim_url)["NemoVLM"].to_dict()
    with pytest.raises(ValueError, match=r"default_headers\['Authorization'\].*pass the header"):
        NemoVLM.from_dict(dumped)


def test_credentials_in_headers_are_not_in_debug_logs_of_whole_calls(
    nim_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = {**with_credentials(nim_url), "base_url": nim_url}
    with caplog.at_level(logging.DEBUG):
        ChatNemoVLM(**settings).invoke("hi")  # type: ignore[arg-type]
        list(ChatNemoVLM(**settings).stream("hi"))  # type: ignore[arg-type]
        NemoVLM(**settings).chat([ChatMessage(role="user", content="hi")])  # type: ignore[arg-type]
    assert len(caplog.records) > 10  # the libraries did log at DEBUG
    logged = "\n".join(
        f"{r.name} {r.getMessage()} {r.args!r} {r.__dict__!r}" for r in caplog.records
    )
    assert hidden_leaks(logged) == []


def echoing(base_url: str, **kwargs: Any) -> ChatNemoVLM:
    """A model whose every call the emulator refuses with a 401 quoting the credential
    it received (fault ``echo_key``)."""
    return ChatNemoVLM(
        model=NANO12, base_url=base_url, max_retries=0,
        default_headers={"X-Emulator-Fault": "echo_key"}, **kwargs,
    )  # fmt: skip


def test_a_server_message_echoing_the_key_is_redacted(nim_url: str) -> None:
    with pytest.raises(RequestError) as info:
        echoing(nim_url, api_key=NIM_KEY).invoke("hi")
    error = info.value
    assert error.status_code == 401
    assert "the credential 'Bearer **********' was refused" in str(error)
    assert leaks(everything_about(error)) == []


async def test_a_server_message_echoing_the_key_to_an_async_call_is_redacted(
    nim_url: str,
) -> None:
    with pytest.raises(RequestError) as info:
        await echoing(nim_url, api_key=NIM_KEY).ainvoke("hi")
    assert "the credential 'Bearer **********' was refused" in str(info.value)
    assert leaks(everything_about(info.value)) == []


async def test_credentials_in_the_base_url_reach_the_server_of_an_async_call_as_basic_auth(
    nim_url: str,
) -> None:
    # As the SDK's httpx client does: URL credentials replace the bearer key.
    llm = echoing(nim_url.replace("http://", f"http://user:{URL_PASSWORD}@"), api_key=NIM_KEY)
    with pytest.raises(RequestError) as info:
        await llm.ainvoke("hi")
    assert "the credential 'Basic **********' was refused" in str(info.value)
    assert hidden_leaks(everything_about(info.value)) == []
    with pytest.raises(RequestError) as sync_info:
        llm.invoke("hi")  # the SDK's client: the same credential went
    assert sync_info.value.server_message == info.value.server_message


async def test_a_password_in_base_url_is_not_in_an_async_error_about_reaching_it() -> None:
    llm = ChatNemoVLM(
        model=NANO12, base_url=f"http://user:{URL_PASSWORD}@127.0.0.1:9/v1", max_retries=0
    )
    with pytest.raises(RequestError) as info:
        await llm.ainvoke("hi")
    assert hidden_leaks(everything_about(info.value)) == []


async def test_an_async_redirect_loop_leaves_no_credential_in_the_error(nim_url: str) -> None:
    # aiohttp's "too many redirects" keeps the request's headers (the key among them).
    settings = with_credentials(nim_url, **{"X-Emulator-Fault": "redirect"})
    settings["base_url"] = nim_url  # basic auth from a URL would replace the header
    llm = ChatNemoVLM(**settings, max_retries=0)  # type: ignore[arg-type]
    with pytest.raises(RequestError) as info:
        await llm.ainvoke("hi")
    assert hidden_leaks(everything_about(info.value)) == []


async def test_credentials_in_headers_are_really_sent_by_an_async_call(nim_url: str) -> None:
    import httpx

    base = nim_url.removesuffix("/v1")
    httpx.delete(f"{base}/emulator/requests")
    await ChatNemoVLM(**{**with_credentials(nim_url), "base_url": nim_url}).ainvoke("hi")  # type: ignore[arg-type]
    [record] = httpx.get(f"{base}/emulator/requests").json()
    assert record["headers"]["x-gateway-key"] == GATEWAY_KEY


def test_a_server_message_echoing_a_header_token_is_redacted(nim_url: str) -> None:
    settings = with_credentials(nim_url, **{"X-Emulator-Fault": "echo_key"})
    settings["base_url"] = nim_url  # basic auth from a URL would replace the header
    with pytest.raises(RequestError) as info:
        NemoVLM(**settings, max_retries=0).chat(  # type: ignore[arg-type]
            [ChatMessage(role="user", content="hi")]
        )
    assert "**********" in str(info.value)
    assert hidden_leaks(everything_about(info.value)) == []


def test_a_password_in_base_url_is_not_in_an_error_about_reaching_it() -> None:
    llm = ChatNemoVLM(
        model=NANO12, base_url=f"http://user:{URL_PASSWORD}@127.0.0.1:9/v1", max_retries=0
    )
    with pytest.raises(RequestError) as info:
        llm.invoke("hi")
    assert hidden_leaks(everything_about(info.value)) == []


def test_credentials_in_headers_are_really_sent(nim_url: str) -> None:
    # The emulator keeps custom headers in its log (it drops only Authorization).
    import httpx

    base = nim_url.removesuffix("/v1")
    httpx.delete(f"{base}/emulator/requests")
    ChatNemoVLM(**{**with_credentials(nim_url), "base_url": nim_url}).invoke("hi")  # type: ignore[arg-type]
    [record] = httpx.get(f"{base}/emulator/requests").json()
    assert record["headers"]["x-gateway-key"] == GATEWAY_KEY


# --- the emulator's TLS key material ---------------------------------------------------------


@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM"])
def test_the_emulator_command_removes_its_tls_key_material_when_stopped(stop: str) -> None:
    import os
    import re
    import signal
    import subprocess
    import sys
    from pathlib import Path

    proc = subprocess.Popen(
        [sys.executable, "-m", "nemovlm.cli", "emulator", "--port", "0", "--fal-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        bundle = None
        for line in proc.stdout:
            if found := re.match(r"\s*export SSL_CERT_FILE=(\S+)", line):
                bundle = Path(found.group(1))
            if line.startswith("Ctrl-C stops it."):
                break
        assert bundle is not None
        workdir = bundle.parent
        assert (workdir / "server.key").is_file()
        proc.send_signal(getattr(signal, stop))
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert not workdir.exists()


async def test_a_token_given_as_the_user_name_of_base_url_is_kept_out_of_errors(
    nim_url: str,
) -> None:
    # ``https://TOKEN@host``: sent as Basic auth with an empty password, echoed back.
    token = "tok" + URL_PASSWORD
    llm = echoing(nim_url.replace("http://", f"http://{token}@"))
    with pytest.raises(RequestError) as info:
        await llm.ainvoke("hi")
    assert "the credential 'Basic **********' was refused" in str(info.value)
    assert token not in repr(llm) and token not in str(everything_about(info.value))
