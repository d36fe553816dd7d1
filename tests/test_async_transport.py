"""The async client's transport (issue 14): aiohttp under the ``openai`` SDK by default,
with the SDK's retries, timeouts and errors unchanged, a user's own client honoured,
and the client closed with its event loop.

Faults come from the NIM emulator over real HTTP (``X-Emulator-Fault`` headers).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import uuid
from typing import Any

import pytest

from langchain_nemovlm import ChatNemoVLM
from nemovlm.errors import (
    IncompleteResponseError,
    RateLimitError,
    RequestError,
    RequestTimeoutError,
)

NANO12 = "nvidia/nemotron-nano-12b-v2-vl"


def faulty(url: str, fault: str, *, times: int | None = None, retry_after: float = 0.01,
           **kwargs: Any) -> ChatNemoVLM:  # fmt: skip
    headers = {
        "X-Emulator-Fault": fault,
        "X-Emulator-Fault-Key": uuid.uuid4().hex,
        "X-Emulator-Retry-After": str(retry_after),
    }
    if times is not None:
        headers["X-Emulator-Fault-Times"] = str(times)
    kwargs.setdefault("max_retries", 0)
    return ChatNemoVLM(model=NANO12, base_url=url, default_headers=headers, **kwargs)


async def test_the_default_async_client_sends_over_aiohttp(nim_url: str) -> None:
    from openai import DefaultAioHttpClient

    llm = ChatNemoVLM(model=NANO12, base_url=nim_url)
    assert (await llm.ainvoke("over aiohttp")).text.endswith("over aiohttp")
    assert isinstance(llm.backend.async_client._client, DefaultAioHttpClient)  # type: ignore[attr-defined]


async def test_an_async_retry_waits_as_long_as_retry_after_says(
    nim_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    llm = faulty(nim_url, "503", times=1, retry_after=0.4, max_retries=1)
    with caplog.at_level(logging.INFO, logger="openai"):
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


def test_each_finished_event_loop_closes_its_client(
    nim_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    llm = ChatNemoVLM(model=NANO12, base_url=nim_url)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        for i in range(2):
            assert asyncio.run(llm.ainvoke(f"loop {i}")).text.endswith(f"loop {i}")
            gc.collect()  # an unclosed aiohttp session logs "Unclosed client session" here
    assert not [r for r in caplog.records if "Unclosed" in r.getMessage()]


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
