"""The async transport (issue 14): non-streamed calls on the package's own aiohttp
session (``nemovlm.backends.nim_http``), streams through the ``openai`` SDK on aiohttp;
the SDK's retries, timeouts and errors either way (a sync call, which the SDK sends, is
the reference), a user's own client honoured, and each loop's clients closed with it.

Faults come from the NIM emulator over real HTTP (``X-Emulator-Fault`` headers).
"""

from __future__ import annotations

import asyncio
import datetime
import gc
import logging
import re
import uuid
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pydantic
import pytest

from langchain_nemovlm import ChatNemoVLM
from nemovlm.emulator.server import RunningServer
from nemovlm.errors import (
    IncompleteResponseError,
    RateLimitError,
    RequestError,
    RequestTimeoutError,
)
from tests.conftest import WireLog

NANO12 = "nvidia/nemotron-nano-12b-v2-vl"


def faulty(url: str, fault: str, *, times: int | None = None, retry_after: float = 0.01,
           should_retry: str | None = None, **kwargs: Any) -> ChatNemoVLM:  # fmt: skip
    headers = {
        "X-Emulator-Fault": fault,
        "X-Emulator-Fault-Key": uuid.uuid4().hex,
        "X-Emulator-Retry-After": str(retry_after),
    }
    if should_retry is not None:
        headers["X-Emulator-Should-Retry"] = should_retry
    if times is not None:
        headers["X-Emulator-Fault-Times"] = str(times)
    kwargs.setdefault("max_retries", 0)
    return ChatNemoVLM(model=NANO12, base_url=url, default_headers=headers, **kwargs)


def _fault_headers(fault: str, should_retry: str | None = None) -> dict[str, str]:
    headers = {
        "X-Emulator-Fault": fault,
        "X-Emulator-Fault-Key": uuid.uuid4().hex,
        "X-Emulator-Fault-Times": "1",
        "X-Emulator-Retry-After": "0.01",
    }
    if should_retry is not None:
        headers["X-Emulator-Should-Retry"] = should_retry
    return headers


def _sdk_outcome(url: str, headers: dict[str, str]) -> tuple[str, str | None]:
    """What the ``openai`` SDK itself makes of a fault: answered, or which class it raised."""
    import openai

    client = openai.OpenAI(base_url=url, api_key="not-used", max_retries=1, default_headers=headers)
    try:
        client.chat.completions.create(model=NANO12, messages=[{"role": "user", "content": "hi"}])
    except openai.APIStatusError as exc:
        return ("raised", type(exc).__name__)
    finally:
        client.close()
    return ("answered", None)


def _sdk_class(exc: BaseException) -> str:
    # Ours are the SDK's classes too (``openai_twin``): the SDK's class among the bases.
    return next(c for c in type(exc).__mro__ if c.__module__.startswith("openai")).__name__


def _our_outcome(call: Callable[[], Any]) -> tuple[str, str | None]:
    import openai

    try:
        call()
    except openai.APIStatusError as exc:
        return ("raised", _sdk_class(exc))
    return ("answered", None)


async def _aour_outcome(call: Callable[[], Awaitable[Any]]) -> tuple[str, str | None]:
    import openai

    try:
        await call()
    except openai.APIStatusError as exc:
        return ("raised", _sdk_class(exc))
    return ("answered", None)


STATUS_FAULTS = ["400", "401", "403", "404", "409", "422", "429", "500", "503"]


@pytest.mark.parametrize("fault", STATUS_FAULTS)
async def test_whole_replies_retry_a_status_exactly_when_the_sdk_does(
    nim_url: str, fault: str
) -> None:
    # One fault, one retry allowed: a status the SDK retries is answered the second
    # time; one it does not retry raises, as the SDK's class for it. Sync and async
    # whole replies are sent below the SDK (``nim_http``); the SDK itself is the reference.
    reference = await asyncio.to_thread(_sdk_outcome, nim_url, _fault_headers(fault))

    def model() -> ChatNemoVLM:
        return ChatNemoVLM(
            model=NANO12, base_url=nim_url, max_retries=1, default_headers=_fault_headers(fault)
        )

    assert await asyncio.to_thread(_our_outcome, lambda: model().invoke("again")) == reference
    assert await _aour_outcome(lambda: model().ainvoke("again")) == reference
    assert reference[0] == ("answered" if fault in ("409", "429", "500", "503") else "raised")


@pytest.mark.parametrize(("fault", "verdict"), [("400", "true"), ("503", "false")])
async def test_whole_replies_obey_the_servers_x_should_retry_as_the_sdk_does(
    nim_url: str, fault: str, verdict: str
) -> None:
    reference = await asyncio.to_thread(_sdk_outcome, nim_url, _fault_headers(fault, verdict))

    def model() -> ChatNemoVLM:
        headers = _fault_headers(fault, verdict)
        return ChatNemoVLM(model=NANO12, base_url=nim_url, max_retries=1, default_headers=headers)

    assert await asyncio.to_thread(_our_outcome, lambda: model().invoke("told")) == reference
    assert await _aour_outcome(lambda: model().ainvoke("told")) == reference
    assert reference[0] == ("answered" if verdict == "true" else "raised")


def _sdk_error_fields(url: str, headers: dict[str, str]) -> tuple[Any, ...]:
    """The fields of the error the ``openai`` SDK itself raises for a status fault."""
    import openai

    client = openai.OpenAI(base_url=url, api_key="not-used", max_retries=0, default_headers=headers)
    try:
        client.chat.completions.create(model=NANO12, messages=[{"role": "user", "content": "hi"}])
    except openai.APIStatusError as exc:
        return (exc.body, exc.code, exc.type, exc.param)
    finally:
        client.close()
    raise AssertionError("the fault should have raised")


async def test_a_whole_reply_status_error_carries_the_servers_error_object_as_the_sdks_does(
    nim_url: str,
) -> None:
    # The SDK's error holds the server's error object (``body``, ``code``, ``type``),
    # not the envelope round it: code reading ``error.body["message"]`` or
    # ``error.type`` keeps working.
    import openai

    headers = {"X-Emulator-Fault": "404"}
    reference = await asyncio.to_thread(_sdk_error_fields, nim_url, headers)
    llm = ChatNemoVLM(model=NANO12, base_url=nim_url, max_retries=0, default_headers=headers)
    with pytest.raises(openai.NotFoundError) as sync_info:
        await asyncio.to_thread(llm.invoke, "hi")
    with pytest.raises(openai.NotFoundError) as async_info:
        await llm.ainvoke("hi")
    for error in (sync_info.value, async_info.value):
        cause = error.__cause__  # the SDK's own class, as the SDK would have raised it
        assert (error.body, cause.code, error.type, error.param) == reference  # type: ignore[union-attr]
    assert reference[2] == "NotFoundError"


def _sdk_connection_outcome(url: str, headers: dict[str, str]) -> str:
    import openai

    client = openai.OpenAI(base_url=url, api_key="not-used", max_retries=0, default_headers=headers)
    try:
        client.chat.completions.create(model=NANO12, messages=[{"role": "user", "content": "hi"}])
    except openai.APIConnectionError as exc:
        return type(exc).__name__
    finally:
        client.close()
    raise AssertionError("the redirect loop should have raised")


async def test_a_redirect_loop_is_a_request_error_as_through_the_sdk(nim_url: str) -> None:
    # The SDK turns a client's "too many redirects" into its connection error.
    import openai

    headers = {"X-Emulator-Fault": "redirect"}
    assert await asyncio.to_thread(_sdk_connection_outcome, nim_url, headers) == (
        "APIConnectionError"
    )
    llm = ChatNemoVLM(model=NANO12, base_url=nim_url, max_retries=0, default_headers=headers)
    with pytest.raises(RequestError) as sync_info:
        await asyncio.to_thread(llm.invoke, "hi")
    with pytest.raises(RequestError) as async_info:
        await llm.ainvoke("hi")
    for error in (sync_info.value, async_info.value):
        assert isinstance(error, openai.APIConnectionError)


async def test_a_redirect_is_followed_for_whole_replies(nim_url: str) -> None:
    llm = faulty(nim_url, "redirect", times=1)
    assert (await asyncio.to_thread(llm.invoke, "moved")).text.endswith("moved")
    llm = faulty(nim_url, "redirect", times=1)
    assert (await llm.ainvoke("moved")).text.endswith("moved")


class _Tiles(pydantic.BaseModel):
    max_num_tiles: int


async def test_whole_replies_send_datetimes_and_pydantic_models_as_the_sdk_does(
    nim_url: str, wire: WireLog
) -> None:
    # The SDK's JSON encoder writes a datetime as ISO text and a pydantic model as its
    # JSON; a stream (sent by the SDK) and a whole reply must send the same body.
    extra = {"when": datetime.datetime(2024, 1, 2, 3, 4, 5), "tiles": _Tiles(max_num_tiles=3)}
    llm = ChatNemoVLM(model=NANO12, base_url=nim_url, max_retries=0, extra_body=extra)
    "".join([str(c.content) async for c in llm.astream("streamed")])
    await asyncio.to_thread(llm.invoke, "whole")
    await llm.ainvoke("whole")
    sent = [(b["when"], b["tiles"]) for b in wire.bodies()]
    assert sent == [("2024-01-02T03:04:05", {"max_num_tiles": 3})] * 3


async def test_an_async_call_spends_every_retry_before_raising(nim_url: str) -> None:
    llm = faulty(nim_url, "500", times=2, max_retries=2)
    assert (await llm.ainvoke("third time")).text.endswith("third time")
    with pytest.raises(RequestError) as info:
        await faulty(nim_url, "500", times=3, max_retries=2).ainvoke("hi")
    assert info.value.status_code == 500


async def test_an_async_retry_after_beyond_two_minutes_is_not_waited_for(nim_url: str) -> None:
    # The SDK's rule: a server asking for a longer wait gets the error, not a hung call.
    with pytest.raises(RateLimitError):
        await faulty(nim_url, "429", times=1, retry_after=600, max_retries=1).ainvoke("hi")


async def test_an_async_status_error_is_also_the_sdks_class_with_its_response(
    nim_url: str,
) -> None:
    import openai

    with pytest.raises(openai.NotFoundError) as info:
        await faulty(nim_url, "404").ainvoke("hi")
    assert info.value.status_code == 404
    assert info.value.response.status_code == 404
    assert info.value.body["message"].startswith("Emulated fault 404")


async def test_an_async_call_goes_through_the_proxy_the_environment_names(
    nim_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A proxy on a closed port: the call must fail there, unless NO_PROXY exempts the host.
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    with pytest.raises(RequestError, match="Could not reach the server"):
        await ChatNemoVLM(model=NANO12, base_url=nim_url, max_retries=0).ainvoke("hi")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    llm = ChatNemoVLM(model=NANO12, base_url=nim_url, max_retries=0)
    assert (await llm.ainvoke("direct")).text.endswith("direct")


async def test_a_proxy_named_without_a_scheme_is_taken_as_http_as_httpx_takes_it(
    nim_server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ``http_proxy=host:port`` is common; httpx (the sync client) reads it as
    # http://host:port. The emulator stands in for the proxy: the host behind it does
    # not exist, so only a request sent through the proxy is answered (with the
    # emulator's 404 for a proxied URL).
    monkeypatch.setenv("HTTP_PROXY", nim_server.url.removeprefix("http://"))
    llm = ChatNemoVLM(model=NANO12, base_url="http://nim.invalid/v1", max_retries=0)
    with pytest.raises(RequestError) as sync_info:
        await asyncio.to_thread(llm.invoke, "hi")
    with pytest.raises(RequestError) as async_info:
        await llm.ainvoke("hi")
    assert sync_info.value.status_code == async_info.value.status_code == 404


async def test_an_async_stream_goes_through_the_sdk_on_aiohttp(nim_url: str) -> None:
    from openai import DefaultAioHttpClient

    llm = ChatNemoVLM(model=NANO12, base_url=nim_url)
    text = "".join([str(c.content) async for c in llm.astream("over aiohttp")])
    assert text.endswith("over aiohttp")
    assert isinstance(llm.backend.async_client._client, DefaultAioHttpClient)  # type: ignore[attr-defined]


async def test_an_async_retry_waits_as_long_as_retry_after_says(
    nim_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    llm = faulty(nim_url, "503", times=1, retry_after=0.4, max_retries=1)
    with caplog.at_level(logging.INFO):
        assert (await llm.ainvoke("patience")).text.endswith("patience")
    waits = [
        float(found.group(1))
        for r in caplog.records
        if (found := re.search(r"Retrying request.* in ([\d.]+) seconds", r.getMessage()))
    ]
    assert waits == [pytest.approx(0.4)]


async def test_an_async_rate_limit_outlasting_retries_is_a_rate_limit_error(nim_url: str) -> None:
    with pytest.raises(RateLimitError) as info:
        await faulty(nim_url, "429", max_retries=1).ainvoke("hi")
    assert info.value.status_code == 429
    assert info.value.request_id and info.value.request_id.startswith("emu-req-")


async def test_an_async_call_that_gets_no_answer_in_time_raises_a_timeout(nim_url: str) -> None:
    with pytest.raises(RequestTimeoutError, match=r"timeout=0\.3 s"):
        await faulty(nim_url, "slow:2", timeout=0.3).ainvoke("hi")


async def test_an_async_stream_that_goes_quiet_midway_raises_a_timeout(nim_url: str) -> None:
    with pytest.raises(RequestTimeoutError, match="`timeout`"):
        async for _ in faulty(nim_url, "stall:2", timeout=0.3).astream("hi"):
            pass


async def test_an_async_body_cut_short_is_an_incomplete_response(nim_url: str) -> None:
    with pytest.raises(IncompleteResponseError):
        await faulty(nim_url, "break_stream").ainvoke("hi")


async def test_a_users_own_async_http_client_carries_the_requests(nim_url: str) -> None:
    import openai

    seen: list[str] = []

    async def count(request: Any) -> None:
        seen.append(str(request.url))

    own = openai.DefaultAsyncHttpxClient(event_hooks={"request": [count]})
    llm = ChatNemoVLM(model=NANO12, base_url=nim_url, http_async_client=own)
    assert (await llm.ainvoke("mine")).text.endswith("mine")
    assert seen == [f"{nim_url}/chat/completions"]
    await own.aclose()


def test_a_users_own_http_client_that_follows_no_redirect_is_honoured(nim_url: str) -> None:
    # The SDK sends on a user's client as it is: a redirect it does not follow is the
    # 307 status error, as ``openai.OpenAI(http_client=...)`` itself raises it.
    import openai

    headers = {"X-Emulator-Fault": "redirect"}
    with openai.DefaultHttpxClient(follow_redirects=False) as own:
        sdk = openai.OpenAI(
            base_url=nim_url, api_key="not-used", max_retries=0, default_headers=headers,
            http_client=own,
        )  # fmt: skip
        with pytest.raises(openai.APIStatusError) as reference:
            sdk.chat.completions.create(model=NANO12, messages=[{"role": "user", "content": "hi"}])
        llm = ChatNemoVLM(
            model=NANO12, base_url=nim_url, max_retries=0, default_headers=headers,
            http_client=own,
        )  # fmt: skip
        with pytest.raises(RequestError) as info:
            llm.invoke("hi")
    assert info.value.status_code == reference.value.status_code == 307


def test_each_finished_event_loop_closes_its_client(
    nim_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    llm = ChatNemoVLM(model=NANO12, base_url=nim_url)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        for i in range(2):
            assert asyncio.run(llm.ainvoke(f"loop {i}")).text.endswith(f"loop {i}")
            gc.collect()  # an unclosed aiohttp session logs "Unclosed client session" here
    assert not [r for r in caplog.records if "Unclosed" in r.getMessage()]


def test_a_dropped_model_closes_the_connections_of_its_sync_client(nim_url: str) -> None:
    # As the SDK's own client does when dropped: a socket left to the garbage collector
    # warns "unclosed <socket ...>" (a ResourceWarning, shown under python -X dev).
    def one_call() -> None:
        assert ChatNemoVLM(model=NANO12, base_url=nim_url).invoke("sync").text

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        one_call()
        gc.collect()
    assert [str(w.message) for w in caught if w.category is ResourceWarning] == []


def test_a_loop_closed_without_shutting_down_still_closes_its_client(
    nim_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    llm = ChatNemoVLM(model=NANO12, base_url=nim_url)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop = asyncio.new_event_loop()
        assert loop.run_until_complete(llm.ainvoke("bare loop")).text.endswith("bare loop")
        loop.close()
        assert asyncio.run(llm.ainvoke("next loop")).text.endswith("next loop")
        gc.collect()
    assert not [r for r in caplog.records if "Unclosed" in r.getMessage()]


async def test_an_async_call_to_a_closed_port_says_the_server_could_not_be_reached() -> None:
    # The aiohttp transport maps its errors onto the SDK's HTTP library's types, which
    # ``_converted_errors`` reads.
    llm = ChatNemoVLM(model=NANO12, base_url="http://127.0.0.1:9/v1", max_retries=0)
    with pytest.raises(RequestError, match="Could not reach the server"):
        await llm.ainvoke("hi")


async def test_an_async_call_refuses_a_socks_proxy_from_the_environment_saying_what_to_do(
    nim_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nemovlm.errors import UnsupportedInputError

    monkeypatch.setenv("ALL_PROXY", "socks5://user:proxy-secret@127.0.0.1:9")
    llm = ChatNemoVLM(model=NANO12, base_url=nim_url, max_retries=0)
    with pytest.raises(UnsupportedInputError, match="http_async_client") as info:
        await llm.ainvoke("hi")
    assert "proxy-secret" not in str(info.value)


async def test_an_error_page_that_is_not_json_says_what_the_server_said(nim_url: str) -> None:
    # A proxy's HTML page: its text is the message, whole replies (sync, async) and streams.
    llm = faulty(nim_url, "html_502")
    failures = []
    for call in (lambda: asyncio.to_thread(llm.invoke, "hi"), lambda: llm.ainvoke("hi")):
        with pytest.raises(RequestError) as info:
            await call()
        failures.append(info.value)
    with pytest.raises(RequestError) as streamed:
        async for _ in llm.astream("hi"):
            pass
    for failure in [*failures, streamed.value]:
        assert failure.status_code == 502
        assert failure.server_message.count("502 Bad Gateway") == 1  # once, on any SDK


async def test_every_path_of_a_call_sends_the_same_user_agent(nim_url: str) -> None:
    import httpx

    from nemovlm import __version__

    base = nim_url.removesuffix("/v1")
    httpx.delete(f"{base}/emulator/requests")
    llm = ChatNemoVLM(model=NANO12, base_url=nim_url)
    await asyncio.to_thread(llm.invoke, "sync")
    await llm.ainvoke("async")
    await asyncio.to_thread(lambda: list(llm.stream("sync stream")))
    _ = [c async for c in llm.astream("async stream")]
    agents = {r["headers"].get("user-agent") for r in httpx.get(f"{base}/emulator/requests").json()}
    assert agents == {f"nemovlm/{__version__}"}


def test_whole_replies_and_streams_trust_the_cas_ssl_cert_file_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One TLS context is shared by every client the package makes: it must still follow
    # SSL_CERT_FILE as it is when a model's clients are made.
    from loopback import tls_files

    from nemovlm.emulator import create_nim_app
    from nemovlm.emulator.server import RunningServer

    certfile, keyfile, bundle = tls_files(tmp_path, "127.0.0.1")
    with RunningServer(create_nim_app(), certfile=certfile, keyfile=keyfile) as server:
        url = f"{server.url}/v1"

        def model() -> ChatNemoVLM:
            return ChatNemoVLM(model=NANO12, base_url=url, max_retries=0)

        with pytest.raises(RequestError, match="CERTIFICATE_VERIFY_FAILED"):
            model().invoke("an unknown CA")
        with pytest.raises(RequestError, match="CERTIFICATE_VERIFY_FAILED"):
            asyncio.run(model().ainvoke("an unknown CA"))
        monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
        llm = model()
        assert llm.invoke("sync").text.endswith("sync")
        assert asyncio.run(llm.ainvoke("async")).text.endswith("async")
        assert "".join(str(c.content) for c in llm.stream("stream")).endswith("stream")
