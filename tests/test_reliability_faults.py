"""Faults are survived or reported, never silently wrong (issue 7).

Every fault is injected by the emulators themselves, over real HTTP: the NIM emulator
through request headers (``X-Emulator-Fault``...), set here with the model's
``default_headers``; the fal emulator through ``inject_fault``. Nothing in our code
or in the ``openai`` / ``fal-client`` libraries is mocked.

Grouped: rate limits and unavailability (retried, then a clear error), broken replies
(a stream or body cut off), timeouts, replies of the wrong shape, server refusals, fal.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import re
import socket
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from langchain_core.messages import AIMessageChunk
from langchain_core.tools import tool
from llama_index.core.base.llms.types import ChatMessage, ImageBlock, TextBlock
from llama_index.core.tools import FunctionTool

from langchain_nemovlm import ChatNemoFal, ChatNemoVLM
from llama_index_nemovlm import NemoFal, NemoVLM
from nemovlm.emulator.fal import FalEmulator, use_fal_emulator
from nemovlm.emulator.nim import BROKEN_TOOL_ARGUMENTS
from nemovlm.emulator.server import RunningServer
from nemovlm.errors import (
    IncompleteResponseError,
    RateLimitError,
    RequestError,
    RequestTimeoutError,
)
from nemovlm.samples import make_image, make_mp4

NANO12 = "nvidia/nemotron-nano-12b-v2-vl"
DIFFUSION = "fal-ai/nemotron-diffusion-vlm"
PNG_URL = "data:image/png;base64," + base64.b64encode(make_image()).decode()


class NimLog:
    """The NIM emulator's record of what reached it."""

    def __init__(self, server: RunningServer) -> None:
        self.base = server.url
        self.http = httpx.Client()

    def clear(self) -> None:
        self.http.delete(f"{self.base}/emulator/requests").raise_for_status()

    def count(self, key: str | None = None) -> int:
        """Chat requests received (only those carrying fault key ``key``, if given)."""
        records = self.http.get(f"{self.base}/emulator/requests").json()
        return sum(
            1
            for r in records
            if r["path"].endswith("/chat/completions")
            and (key is None or r["headers"].get("x-emulator-fault-key") == key)
        )


@pytest.fixture(scope="module")
def nim_log(nim_server: RunningServer) -> Iterator[NimLog]:
    log = NimLog(nim_server)
    yield log
    log.http.close()


@pytest.fixture
def log(nim_log: NimLog) -> NimLog:
    nim_log.clear()
    return nim_log


def faulty(url: str, fault: str, *, times: int | None = None, retry_after: float = 0.01,
           **kwargs: Any) -> tuple[ChatNemoVLM, str]:  # fmt: skip
    """A Nano 12B model whose requests carry ``fault``; returns it and the fault's key."""
    key = uuid.uuid4().hex
    headers = {
        "X-Emulator-Fault": fault,
        "X-Emulator-Fault-Key": key,
        "X-Emulator-Retry-After": str(retry_after),
    }
    if times is not None:
        headers["X-Emulator-Fault-Times"] = str(times)
    kwargs.setdefault("max_retries", 0)
    return ChatNemoVLM(model=NANO12, base_url=url, default_headers=headers, **kwargs), key


def weather(city: str) -> str:
    """The weather in a city."""
    return f"Sunny in {city}"


get_weather = tool("get_weather")(weather)
get_weather_li = FunctionTool.from_defaults(fn=weather, name="get_weather")


# --- 429 and 503: retried with backoff up to max_retries, then a clear error --------------


@pytest.mark.parametrize("status", ["429", "503"])
def test_a_passing_rate_limit_or_outage_is_retried_and_the_answer_arrives(
    nim_url: str, log: NimLog, status: str
) -> None:
    llm, key = faulty(nim_url, status, times=2, max_retries=2)
    assert llm.invoke("still there?").text.endswith("still there?")
    assert log.count(key) == 3  # two refusals, then the answer


async def test_async_calls_retry_too(nim_url: str, log: NimLog) -> None:
    llm, key = faulty(nim_url, "429", times=1, max_retries=1)
    message = await llm.ainvoke("async retry")
    assert message.text.endswith("async retry")
    assert log.count(key) == 2


def test_a_retry_waits_as_long_as_retry_after_says(
    nim_url: str, log: NimLog, caplog: pytest.LogCaptureFixture
) -> None:
    llm, key = faulty(nim_url, "503", times=1, retry_after=0.4, max_retries=1)
    with caplog.at_level(logging.INFO):
        llm.invoke("patience")
    # Logged in the SDK's words: "Retrying request in 0.4 seconds (retry 1 of 1)".
    waits = [
        float(found.group(1))
        for r in caplog.records
        if (found := re.search(r"Retrying request.* in ([\d.]+) seconds", r.getMessage()))
    ]
    assert waits == [pytest.approx(0.4)]
    assert log.count(key) == 2


def test_a_rate_limit_outlasting_max_retries_is_a_rate_limit_error_with_status_id_and_message(
    nim_url: str, log: NimLog
) -> None:
    llm, key = faulty(nim_url, "429", max_retries=2)
    with pytest.raises(RateLimitError) as info:
        llm.invoke("hi")
    error = info.value
    assert error.status_code == 429
    assert error.request_id and error.request_id.startswith("emu-req-")
    assert "rate limited" in error.server_message
    assert all(bit in str(error) for bit in ("status 429", error.request_id, "rate limited"))
    assert log.count(key) == 3  # the first try and max_retries=2 retries, no more


def test_an_outage_outlasting_max_retries_is_a_request_error_with_status_id_and_message(
    nim_url: str, log: NimLog
) -> None:
    llm, key = faulty(nim_url, "503", max_retries=1)
    with pytest.raises(RequestError) as info:
        llm.invoke("hi")
    error = info.value
    assert not isinstance(error, RateLimitError)
    assert (error.status_code, error.model) == (503, NANO12)
    assert error.request_id and error.request_id in str(error)
    assert "service unavailable" in str(error)
    assert log.count(key) == 2


def test_max_retries_zero_sends_exactly_one_request(nim_url: str, log: NimLog) -> None:
    llm, key = faulty(nim_url, "429", max_retries=0)
    with pytest.raises(RateLimitError):
        llm.invoke("hi")
    assert log.count(key) == 1


def test_llama_index_reports_the_same_rate_limit_error(nim_url: str, log: NimLog) -> None:
    key = uuid.uuid4().hex
    llm = NemoVLM(
        model=NANO12,
        base_url=nim_url,
        max_retries=1,
        default_headers={
            "X-Emulator-Fault": "429",
            "X-Emulator-Fault-Key": key,
            "X-Emulator-Retry-After": "0.01",
        },  # fmt: skip
    )
    with pytest.raises(RateLimitError, match="status 429"):
        llm.chat([ChatMessage(role="user", content="hi")])
    assert log.count(key) == 2


# --- a reply cut off: raises, never ends as if complete -------------------------------------


def test_a_stream_that_breaks_midway_raises_after_partial_chunks_without_a_finish(
    nim_url: str,
) -> None:
    llm, _ = faulty(nim_url, "break_stream")
    received: list[AIMessageChunk] = []
    with pytest.raises(IncompleteResponseError, match="incomplete"):
        for chunk in llm.stream("tell me a long story"):
            received.append(chunk)  # type: ignore[arg-type]
    assert received, "the break should come after some chunks arrived"
    assert not any(c.response_metadata.get("finish_reason") for c in received)


async def test_an_async_stream_that_breaks_midway_raises(nim_url: str) -> None:
    llm, _ = faulty(nim_url, "break_stream")
    with pytest.raises(IncompleteResponseError):
        async for _ in llm.astream("tell me a long story"):
            pass


def test_a_llama_index_stream_that_breaks_midway_raises(nim_url: str) -> None:
    llm = NemoVLM(
        model=NANO12, base_url=nim_url, max_retries=0,
        default_headers={"X-Emulator-Fault": "break_stream"},
    )  # fmt: skip
    with pytest.raises(IncompleteResponseError):
        for _ in llm.stream_chat([ChatMessage(role="user", content="a long story")]):
            pass


def test_a_reply_body_cut_off_midway_is_an_incomplete_response(nim_url: str) -> None:
    llm, _ = faulty(nim_url, "break_stream")
    with pytest.raises(IncompleteResponseError, match="broke off before it was complete"):
        llm.invoke("a whole answer please")


def test_an_unreachable_server_is_a_request_error_naming_the_cause_and_the_setting() -> None:
    llm = ChatNemoVLM(model=NANO12, base_url=f"http://127.0.0.1:{free_port()}/v1", max_retries=0)
    with pytest.raises(RequestError, match=r"Could not reach the server \(ConnectError.*base_url"):
        llm.invoke("hello?")


def free_port() -> int:
    """A loopback port nobody listens on (free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- timeouts: a timeout error naming the setting to raise ----------------------------------
# The emulator's waits here are endless (``inf``: until the client hangs up), so the
# client's timeout is the only way these calls can end: no race with a finite wait.


@pytest.mark.parametrize("stream", [False, True], ids=["invoke", "stream"])
def test_a_server_that_does_not_answer_in_time_raises_a_timeout_naming_the_setting(
    nim_url: str, stream: bool
) -> None:
    llm, _ = faulty(nim_url, "slow:inf", timeout=0.3)
    with pytest.raises(RequestTimeoutError, match=r"timeout=0\.3 s: raise the model's `timeout`"):
        list(llm.stream("hi")) if stream else llm.invoke("hi")


@pytest.mark.parametrize("stream", [False, True], ids=["invoke", "stream"])
def test_a_reply_that_goes_quiet_midway_raises_a_timeout(nim_url: str, stream: bool) -> None:
    llm, _ = faulty(nim_url, "stall:inf", timeout=0.3)
    with pytest.raises(RequestTimeoutError, match="`timeout`"):
        list(llm.stream("hi")) if stream else llm.invoke("hi")


def test_a_timeout_is_a_builtin_timeout_error_too(nim_url: str) -> None:
    llm, _ = faulty(nim_url, "slow:inf", timeout=0.3)
    with pytest.raises(TimeoutError):
        llm.invoke("hi")


# A body that never ends, one space at a time: every read returns well within the
# timeout, so only a deadline for the whole reply can stop it (the emulator would go on
# for ten minutes).


def test_a_whole_reply_trickling_past_the_timeout_raises_a_timeout(nim_url: str) -> None:
    llm, _ = faulty(nim_url, "trickle", timeout=0.5)
    with pytest.raises(RequestTimeoutError, match=r"timeout=0\.5 s.*`timeout`"):
        llm.invoke("hi")


async def test_an_async_whole_reply_trickling_past_the_timeout_raises_a_timeout(
    nim_url: str,
) -> None:
    llm, _ = faulty(nim_url, "trickle", timeout=0.5)
    with pytest.raises(RequestTimeoutError, match=r"timeout=0\.5 s.*`timeout`"):
        await llm.ainvoke("hi")


def test_a_llama_index_reply_trickling_past_the_timeout_raises_a_timeout(nim_url: str) -> None:
    llm = NemoVLM(
        model=NANO12, base_url=nim_url, max_retries=0, timeout=0.5,
        default_headers={"X-Emulator-Fault": "trickle"},
    )  # fmt: skip
    with pytest.raises(RequestTimeoutError):
        llm.chat([ChatMessage(role="user", content="hi")])


# --- replies of the wrong shape: a clear error or invalid_tool_calls, no KeyError ----------


@pytest.mark.parametrize("stream", [False, True], ids=["invoke", "stream"])
def test_malformed_json_is_an_incomplete_response(nim_url: str, stream: bool) -> None:
    llm, _ = faulty(nim_url, "malformed_json")
    with pytest.raises(IncompleteResponseError, match="not valid JSON"):
        list(llm.stream("hi")) if stream else llm.invoke("hi")


@pytest.mark.parametrize(
    ("stream", "match"),
    [(False, "200 but with no choices"), (True, "ended before the model finished")],
    ids=["invoke", "stream"],
)
def test_a_200_with_no_choices_is_an_incomplete_response(
    nim_url: str, stream: bool, match: str
) -> None:
    llm, _ = faulty(nim_url, "no_choices")
    with pytest.raises(IncompleteResponseError, match=match):
        list(llm.stream("hi")) if stream else llm.invoke("hi")


# --- replies that look complete but are not --------------------------------------------------


def test_a_whole_reply_whose_choice_has_no_message_is_an_incomplete_response(
    nim_url: str,
) -> None:
    llm, _ = faulty(nim_url, "no_message")
    with pytest.raises(IncompleteResponseError, match="no message"):
        llm.invoke("hi")


@pytest.mark.parametrize(
    ("stream", "match"),
    [(False, "has no finish_reason"), (True, "ended before the model finished")],
    ids=["invoke", "stream"],
)
def test_a_reply_without_a_finish_reason_is_an_incomplete_response(
    nim_url: str, stream: bool, match: str
) -> None:
    llm, _ = faulty(nim_url, "no_finish_reason")
    with pytest.raises(IncompleteResponseError, match=match):
        list(llm.stream("hi")) if stream else llm.invoke("hi")


async def test_an_async_whole_reply_without_a_finish_reason_is_an_incomplete_response(
    nim_url: str,
) -> None:
    llm, _ = faulty(nim_url, "no_finish_reason")
    with pytest.raises(IncompleteResponseError, match="has no finish_reason"):
        await llm.ainvoke("hi")


def test_a_llama_index_reply_without_a_message_is_an_incomplete_response(nim_url: str) -> None:
    llm = NemoVLM(
        model=NANO12, base_url=nim_url, max_retries=0,
        default_headers={"X-Emulator-Fault": "no_message"},
    )  # fmt: skip
    with pytest.raises(IncompleteResponseError):
        llm.chat([ChatMessage(role="user", content="hi")])


def test_an_error_inside_a_stream_is_a_request_error_with_the_servers_message_and_code(
    nim_url: str,
) -> None:
    llm, _ = faulty(nim_url, "error_event")
    received: list[AIMessageChunk] = []
    with pytest.raises(RequestError) as info:
        for chunk in llm.stream("tell me a long story"):
            received.append(chunk)  # type: ignore[arg-type]
    error = info.value
    assert received, "the error should come after some chunks arrived"
    assert "the engine failed mid-generation" in error.server_message
    assert (error.code, error.status_code, error.model) == (500, 500, NANO12)
    assert not isinstance(error.__cause__, RequestError)  # converted once, from the SDK's


async def test_an_error_inside_an_async_stream_is_a_request_error(nim_url: str) -> None:
    llm, _ = faulty(nim_url, "error_event")
    with pytest.raises(RequestError, match="the engine failed mid-generation"):
        async for _ in llm.astream("tell me a long story"):
            pass


def test_an_error_inside_a_llama_index_stream_is_a_request_error(nim_url: str) -> None:
    llm = NemoVLM(
        model=NANO12, base_url=nim_url, max_retries=0,
        default_headers={"X-Emulator-Fault": "error_event"},
    )  # fmt: skip
    with pytest.raises(RequestError, match="the engine failed mid-generation"):
        for _ in llm.stream_chat([ChatMessage(role="user", content="a long story")]):
            pass


def test_a_200_carrying_only_an_error_object_is_a_request_error(nim_url: str) -> None:
    llm, _ = faulty(nim_url, "error_event")
    with pytest.raises(RequestError, match="the engine failed mid-generation") as info:
        llm.invoke("hi")
    assert info.value.code == 500


def test_unparseable_tool_arguments_become_invalid_tool_calls(nim_url: str) -> None:
    llm, _ = faulty(nim_url, "bad_tool_args")
    message = llm.bind_tools([get_weather]).invoke("weather in Paris?")
    assert message.tool_calls == []
    [bad] = message.invalid_tool_calls
    assert (bad["name"], bad["args"]) == ("get_weather", BROKEN_TOOL_ARGUMENTS)
    assert "not valid JSON" in str(bad["error"])


def test_unparseable_streamed_tool_arguments_become_invalid_tool_calls_in_llama_index(
    nim_url: str,
) -> None:
    llm = NemoVLM(
        model=NANO12, base_url=nim_url, max_retries=0,
        default_headers={"X-Emulator-Fault": "bad_tool_args"},
    )  # fmt: skip
    *_, last = llm.stream_chat_with_tools([get_weather_li], user_msg="weather in Paris?")
    # Never an empty list, which FunctionAgent would take for a final answer (issue 12).
    with pytest.raises(IncompleteResponseError, match="'get_weather': arguments are not valid"):
        llm.get_tool_calls_from_response(last, error_on_no_tool_call=False)
    [bad] = last.message.additional_kwargs["invalid_tool_calls"]
    assert (bad["name"], bad["arguments"]) == ("get_weather", BROKEN_TOOL_ARGUMENTS)


def aggregate_langchain_stream(llm: ChatNemoVLM, how: str, prompt: str) -> AIMessageChunk:
    """The message LangChain builds from a stream: chunks summed with ``+`` (sync or
    async), or ``invoke`` / ``ainvoke`` with ``streaming=True``."""
    bound = llm.bind_tools([get_weather])
    if how == "stream":
        return sum(bound.stream(prompt), AIMessageChunk(content=""))

    async def astream() -> AIMessageChunk:
        return sum([c async for c in bound.astream(prompt)], AIMessageChunk(content=""))

    if how == "astream":
        return asyncio.run(astream())
    streaming = llm.model_copy(update={"streaming": True}).bind_tools([get_weather])
    if how == "invoke_streaming":
        return streaming.invoke(prompt)  # type: ignore[return-value]
    return asyncio.run(streaming.ainvoke(prompt))  # type: ignore[return-value]


LANGCHAIN_STREAMS = ["stream", "astream", "invoke_streaming", "ainvoke_streaming"]


@pytest.mark.parametrize("how", LANGCHAIN_STREAMS)
def test_unparseable_streamed_tool_arguments_become_invalid_tool_calls_in_langchain(
    nim_url: str, how: str
) -> None:
    llm, _ = faulty(nim_url, "bad_tool_args")
    message = aggregate_langchain_stream(llm, how, "weather in Paris?")
    assert message.tool_calls == []
    [bad] = message.invalid_tool_calls
    # LangChain's aggregate keeps what was streamed, plus the closer the last chunk adds
    # so that its partial-JSON parser gives up (see langchain_nemovlm._convert).
    assert bad["name"] == "get_weather"
    assert bad["args"] is not None and bad["args"].startswith(BROKEN_TOOL_ARGUMENTS)


def test_cut_streamed_tool_arguments_still_stream_live_in_langchain(nim_url: str) -> None:
    llm, _ = faulty(nim_url, "bad_tool_args")
    *before, last = llm.bind_tools([get_weather]).stream("weather in Paris?")
    fragments = [c["args"] for chunk in before for c in chunk.tool_call_chunks if c["args"]]
    assert len(fragments) > 1 and "".join(fragments) == BROKEN_TOOL_ARGUMENTS
    assert last.tool_call_chunks  # the tail that makes the aggregate invalid


# Duplicate ids and nameless calls: the model's call cannot be answered or run, so it is
# an invalid tool call, not one an agent would execute.


def test_duplicate_tool_call_ids_are_flagged_invalid(nim_url: str) -> None:
    llm, _ = faulty(nim_url, "duplicate_tool_ids")
    message = llm.bind_tools([get_weather]).invoke("weather in Paris and Rome?")
    [call] = message.tool_calls
    [bad] = message.invalid_tool_calls
    assert call["args"] == {"city": "Paris"} and bad["id"] == call["id"]
    assert "already used by an earlier call" in str(bad["error"])


def test_duplicate_tool_call_ids_are_flagged_invalid_in_a_llama_index_stream(
    nim_url: str,
) -> None:
    llm = NemoVLM(
        model=NANO12, base_url=nim_url, max_retries=0,
        default_headers={"X-Emulator-Fault": "duplicate_tool_ids"},
    )  # fmt: skip
    *_, last = llm.stream_chat_with_tools([get_weather_li], user_msg="Paris and Rome?")
    [selection] = llm.get_tool_calls_from_response(last)
    assert selection.tool_kwargs == {"city": "Paris"}
    [bad] = last.message.additional_kwargs["invalid_tool_calls"]
    assert "already used" in bad["error"]
    # What FunctionAgent asks for: the bad call stops the turn (issue 12), not passed over.
    with pytest.raises(IncompleteResponseError, match="already used"):
        llm.get_tool_calls_from_response(last, error_on_no_tool_call=False)


@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream"])
def test_a_tool_call_with_no_name_is_flagged_invalid_in_llama_index(
    nim_url: str, stream: bool
) -> None:
    llm = NemoVLM(
        model=NANO12, base_url=nim_url, max_retries=0,
        default_headers={"X-Emulator-Fault": "nameless_tool_call"},
    )  # fmt: skip
    if stream:
        *_, last = llm.stream_chat_with_tools([get_weather_li], user_msg="weather?")
    else:
        last = llm.chat_with_tools([get_weather_li], user_msg="weather?")
    with pytest.raises(IncompleteResponseError, match="no function name"):
        llm.get_tool_calls_from_response(last, error_on_no_tool_call=False)
    [bad] = last.message.additional_kwargs["invalid_tool_calls"]
    assert "no function name" in bad["error"]


def test_a_tool_call_with_no_name_is_flagged_invalid_in_langchain(nim_url: str) -> None:
    llm, _ = faulty(nim_url, "nameless_tool_call")
    message = llm.bind_tools([get_weather]).invoke("weather?")
    assert message.tool_calls == []
    assert "no function name" in str(message.invalid_tool_calls[0]["error"])


@pytest.mark.parametrize("how", LANGCHAIN_STREAMS)
def test_a_streamed_tool_call_with_no_name_is_invalid_in_langchain(nim_url: str, how: str) -> None:
    llm, _ = faulty(nim_url, "nameless_tool_call")
    message = aggregate_langchain_stream(llm, how, "weather?")
    assert message.tool_calls == []
    assert len(message.invalid_tool_calls) == 1


@pytest.mark.parametrize("how", LANGCHAIN_STREAMS)
def test_a_streamed_duplicate_tool_call_id_is_invalid_in_langchain(nim_url: str, how: str) -> None:
    llm, _ = faulty(nim_url, "duplicate_tool_ids")
    message = aggregate_langchain_stream(llm, how, "weather in Paris and Rome?")
    [call] = message.tool_calls
    [bad] = message.invalid_tool_calls
    assert call["args"] == {"city": "Paris"} and bad["id"] == call["id"]


def test_a_streamed_call_invalid_from_its_first_fragment_is_not_streamed_in_fragments(
    nim_url: str,
) -> None:
    llm, _ = faulty(nim_url, "duplicate_tool_ids")
    pieces: dict[Any, list[str]] = {}
    for chunk in llm.bind_tools([get_weather]).stream("weather in Paris and Rome?"):
        for c in chunk.tool_call_chunks:
            pieces.setdefault(c["index"], []).append(c["args"] or "")
    [paris] = [p for p in pieces.values() if "Paris" in "".join(p)]
    [rome] = [p for p in pieces.values() if "Rome" in "".join(p)]
    assert len(paris) > 1 and len(rome) == 1  # Rome comes once, whole, at the end


# --- server refusals ------------------------------------------------------------------------


def test_a_server_refusal_is_a_request_error_with_status_and_the_servers_message(
    nim_url: str,
) -> None:
    # Only the server knows the video's own frame count is below what was asked for.
    clip = make_mp4(duration_s=1.0, fps=4.0)
    url = "data:video/mp4;base64," + base64.b64encode(clip).decode()
    llm = ChatNemoVLM(model=NANO12, base_url=nim_url, video_num_frames=100)
    with pytest.raises(RequestError) as info:
        llm.invoke([("human", [{"type": "text", "text": "?"},
                               {"type": "video_url", "video_url": {"url": url}}])])  # fmt: skip
    assert info.value.status_code == 400
    assert "above the video's own frame count" in str(info.value)


# --- fal --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fal_emulator() -> Iterator[FalEmulator]:
    with use_fal_emulator() as emulator:
        yield emulator


@pytest.fixture
def fal_emu(fal_emulator: FalEmulator) -> FalEmulator:
    fal_emulator.state.faults.clear()
    fal_emulator.state.requests.clear()
    fal_emulator.state.rate_limited = 0
    return fal_emulator


def fal(**kwargs: Any) -> ChatNemoFal:
    return ChatNemoFal(model=DIFFUSION, api_key="emulator-key", poll_interval=0.01, **kwargs)


def with_image(text: str = "What is in the picture?") -> list[Any]:
    return [("human", [{"type": "text", "text": text},
                       {"type": "image_url", "image_url": {"url": PNG_URL}}])]  # fmt: skip


def test_a_fal_422_surfaces_the_field_and_the_message(fal_emu: FalEmulator) -> None:
    fal_emu.inject_fault("422")
    with pytest.raises(RequestError) as info:
        fal().invoke(with_image())
    error = info.value
    assert error.status_code == 422
    assert "prompt: [nemovlm emulator] injected validation error" in str(error)
    assert error.request_id is not None and error.request_id in fal_emu.state.requests


def test_a_failed_fal_result_is_an_error_not_an_empty_answer(fal_emu: FalEmulator) -> None:
    fal_emu.inject_fault("failed")
    with pytest.raises(RequestError) as info:
        fal().invoke(with_image())
    assert info.value.status_code == 500
    assert "runner crashed" in str(info.value)
    assert str(info.value.request_id) in fal_emu.state.requests


async def test_a_failed_fal_result_is_an_error_in_async_calls_too(fal_emu: FalEmulator) -> None:
    fal_emu.inject_fault("failed")
    with pytest.raises(RequestError, match="status 500"):
        await fal().ainvoke(with_image())


def test_a_fal_timeout_cancels_the_queued_request(fal_emu: FalEmulator) -> None:
    fal_emu.inject_fault("slow")
    with pytest.raises(RequestTimeoutError, match=r"timeout=1\.2 s.*cancelled") as info:
        fal(timeout=1.2).invoke(with_image())
    [record] = fal_emu.state.requests.values()
    assert record.cancelled
    assert record.request_id in str(info.value)


def test_a_fal_timeout_before_fal_acknowledged_the_request_claims_no_cancellation(
    fal_emu: FalEmulator,
) -> None:
    # The emulator holds the submission until the client hangs up: nothing is queued.
    fal_emu.inject_fault("slow_submit")

    async def call() -> None:
        await fal(timeout=1.2).ainvoke(with_image())

    with pytest.raises(RequestTimeoutError) as info:
        asyncio.run(call())
    message = str(info.value)
    assert "nothing was cancelled" in message and "it was cancelled" not in message
    assert fal_emu.state.requests == {}


def test_a_request_fal_queues_after_a_sync_timeout_is_cancelled_at_once(
    fal_emu: FalEmulator,
) -> None:
    # fal-client's sync subscribe leaves its submission running in a worker thread after
    # the timeout; the emulator queues it (as a slow request) once its hold is over.
    saved = fal_emu.state.settings
    fal_emu.state.settings = dataclasses.replace(saved, submit_hold_seconds=1.5)
    try:
        fal_emu.inject_fault("slow_submit")
        with pytest.raises(RequestTimeoutError):
            fal(timeout=1.2).invoke(with_image())
        record = wait_for_request(fal_emu, lambda r: r.cancelled)
    finally:
        fal_emu.state.settings = saved
    assert record.cancelled


def ack_late(emu: FalEmulator) -> None:
    """The next submission is queued at once but answered only when the test sets
    ``late_ack_release`` (``late_ack_queued`` says it was queued)."""
    emu.state.late_ack_queued.clear()
    emu.state.late_ack_release.clear()
    emu.inject_fault("late_ack")


def wait_for_request(emu: FalEmulator, done: Callable[[Any], bool]) -> Any:
    """The emulator's one request once ``done(request)`` holds. An event, not a clock:
    the bound only keeps a broken build from hanging."""
    for _ in range(6000):
        records = list(emu.state.requests.values())
        if records and done(records[0]):
            return records[0]
        time.sleep(0.01)
    pytest.fail("the fal emulator never saw the request reach that state")


async def wait_until_polled(emu: FalEmulator) -> None:
    """Until the client has polled its request once: by then it knows the request id."""
    for _ in range(6000):
        if any(r.polls for r in emu.state.requests.values()):
            return
        await asyncio.sleep(0.01)
    pytest.fail("the client never polled its fal request")


async def test_cancelling_an_awaiting_fal_call_cancels_the_queued_request(
    fal_emu: FalEmulator,
) -> None:
    fal_emu.inject_fault("slow")
    task = asyncio.create_task(fal().ainvoke(with_image()))
    await wait_until_polled(fal_emu)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [record] = fal_emu.state.requests.values()
    assert record.cancelled


async def test_cancelling_a_fal_call_while_fal_acknowledges_it_cancels_the_queued_request(
    fal_emu: FalEmulator,
) -> None:
    # fal queues the request, then its answer to the submission is late: the task is
    # cancelled in between, before the client knows the request id.
    ack_late(fal_emu)
    task = asyncio.create_task(fal().ainvoke(with_image()))
    assert await asyncio.to_thread(fal_emu.state.late_ack_queued.wait, 60)
    task.cancel()
    await asyncio.sleep(0)  # the task takes the cancellation before the answer can come
    fal_emu.state.late_ack_release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    [record] = fal_emu.state.requests.values()
    assert record.cancelled


async def test_a_request_fal_queues_after_an_async_timeout_is_cancelled_once_fal_answers(
    fal_emu: FalEmulator,
) -> None:
    # fal queues the request but answers the submission late: the call times out before
    # it knows the request id, and must not leave the request to run.
    ack_late(fal_emu)
    with pytest.raises(RequestTimeoutError, match="cancelled as soon as fal says so"):
        await fal(timeout=1.2).ainvoke(with_image())
    assert await asyncio.to_thread(fal_emu.state.late_ack_queued.wait, 60)
    fal_emu.state.late_ack_release.set()
    # Waited for in a thread: the loop must run for the background cancel to happen.
    record = await asyncio.to_thread(wait_for_request, fal_emu, lambda r: r.cancelled)
    assert record.cancelled


async def test_closing_a_fal_stream_midway_cancels_the_queued_request(
    fal_emu: FalEmulator,
) -> None:
    fal_emu.inject_fault("slow")

    async def consume() -> None:
        async for _ in fal().astream(with_image()):
            pass

    task = asyncio.create_task(consume())
    await wait_until_polled(fal_emu)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [record] = fal_emu.state.requests.values()
    assert record.cancelled


async def test_cancelling_a_llama_index_fal_call_cancels_the_queued_request(
    fal_emu: FalEmulator,
) -> None:
    fal_emu.inject_fault("slow")
    llm = NemoFal(model=DIFFUSION, api_key="emulator-key", poll_interval=0.01)
    picture = ImageBlock(image=make_image())
    message = ChatMessage(role="user", blocks=[picture, TextBlock(text="?")])
    task = asyncio.create_task(llm.achat([message]))
    await wait_until_polled(fal_emu)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [record] = fal_emu.state.requests.values()
    assert record.cancelled


class _StopWaiting(Exception):
    """What a user's queue-update callback raised."""


def _stop_at_first_update(update: Any) -> None:
    raise _StopWaiting(f"stopped at {update.status}")


def test_a_fal_call_that_fails_while_queued_cancels_the_queued_request(
    fal_emu: FalEmulator,
) -> None:
    fal_emu.inject_fault("slow")  # stays in progress until cancelled
    llm = NemoFal(
        model=DIFFUSION, api_key="emulator-key", poll_interval=0.01,
        on_queue_update=_stop_at_first_update,
    )  # fmt: skip
    message = ChatMessage(role="user", blocks=[ImageBlock(image=make_image()), TextBlock(text="?")])
    with pytest.raises(_StopWaiting):
        llm.chat([message])
    [record] = fal_emu.state.requests.values()
    assert record.cancelled


async def test_an_async_fal_call_that_fails_while_queued_cancels_the_queued_request(
    fal_emu: FalEmulator,
) -> None:
    fal_emu.inject_fault("slow")
    llm = NemoFal(
        model=DIFFUSION, api_key="emulator-key", poll_interval=0.01,
        on_queue_update=_stop_at_first_update,
    )  # fmt: skip
    message = ChatMessage(role="user", blocks=[ImageBlock(image=make_image()), TextBlock(text="?")])
    with pytest.raises(_StopWaiting):
        await llm.achat([message])
    [record] = fal_emu.state.requests.values()
    assert record.cancelled


def test_a_broken_tool_call_from_fal_is_an_invalid_tool_call(fal_emu: FalEmulator) -> None:
    fal_emu.inject_fault("bad_json")
    message = fal().bind_tools([get_weather]).invoke(with_image("Weather in Paris?"))
    assert message.tool_calls == []
    assert message.invalid_tool_calls and message.invalid_tool_calls[0]["error"]


def test_a_passing_fal_rate_limit_is_retried_by_fal_client(fal_emu: FalEmulator) -> None:
    fal_emu.inject_fault("429", times=2)
    message = fal().invoke(with_image("still there?"))
    assert "still there?" in message.content
    assert fal_emu.state.rate_limited == 2 and len(fal_emu.state.requests) == 1


def test_max_retries_on_fal_warns_that_it_does_not_apply(fal_emu: FalEmulator) -> None:
    # fal-client retries 429 on its own and has no setting for it: the warning is true.
    with pytest.warns(UserWarning, match="max_retries=0 does not apply .* Drop max_retries"):
        llm = fal(max_retries=0)
    fal_emu.inject_fault("429")
    assert "[nemovlm emulator]" in llm.invoke(with_image()).text
    assert fal_emu.state.rate_limited == 1


def test_max_retries_on_a_llama_index_fal_model_warns_too() -> None:
    with pytest.warns(UserWarning, match="max_retries=5 does not apply"):
        NemoFal(model=DIFFUSION, api_key="emulator-key", max_retries=5)


def test_the_default_max_retries_langchain_passes_every_model_stays_quiet() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fal(max_retries=2)
