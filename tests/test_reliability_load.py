"""Load: nothing lost (issue 7).

A thousand concurrent async requests across the NIM models, the fal diffusion VLM,
both frameworks and both call styles (whole and streamed) each get their own answer:
the emulators echo the prompt, so every answer must carry its caller's tag and no
other. A soak then runs rounds of requests with injected faults for
``NEMOVLM_SOAK_SECONDS`` (by default three rounds, about 500 requests; set it to a few
hundred seconds for a long soak): every request ends exactly as its fault says it must,
and memory stays flat.

The emulators run in a child process (``serve`` below), so this process's memory is
the client's alone and the server has a core of its own.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import os
import re
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import BaseMessage, HumanMessage
from langchain_core.tools import tool
from llama_index.core.base.llms.types import ChatMessage

from langchain_nemovlm import ChatNemoFal, ChatNemoVLM
from llama_index_nemovlm import NemoVLM
from nemovlm.emulator.fal import aim_fal_client
from nemovlm.errors import IncompleteResponseError, RequestError, RequestTimeoutError
from nemovlm.samples import make_image

LLAMA8 = "nvidia/llama-3.1-nemotron-nano-vl-8b-v1"
NANO12 = "nvidia/nemotron-nano-12b-v2-vl"
GEMMA = "google/diffusiongemma-26b-a4b-it"
GENERIC = "acme/any-openai-compatible-vlm"
DIFFUSION = "fal-ai/nemotron-diffusion-vlm"
FAL_KEY = "emulator-key"

LOAD_REQUESTS = 1000
SOAK_SECONDS = float(os.environ.get("NEMOVLM_SOAK_SECONDS", "0"))
SOAK_ROUNDS = 3
"""At least: memory is measured after the second round and compared after the last."""
TAG = re.compile(r"tag-[0-9a-f]{12}")
PNG_URL = "data:image/png;base64," + base64.b64encode(make_image(32, 24)).decode()

SERVE = """
import sys
from nemovlm.emulator import start_nim_emulator
from nemovlm.emulator.fal import start_fal_emulator
nim = start_nim_emulator()
fal = start_fal_emulator()
print(nim.url, fal.url, fal.ca_bundle, flush=True)
sys.stdin.read()  # until the test closes our stdin
fal.stop()
nim.stop()
"""


@dataclass
class Emulators:
    nim_url: str
    """The NIM emulator's ``/v1`` URL."""
    fal_url: str


@pytest.fixture(scope="module")
def emulators() -> Iterator[Emulators]:
    child = subprocess.Popen(
        [sys.executable, "-c", SERVE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        nim_url, fal_url, ca_bundle = child.stdout.readline().split()
        undo = aim_fal_client(fal_url, Path(ca_bundle))
        try:
            yield Emulators(nim_url + "/v1", fal_url)
        finally:
            undo()
    finally:
        child.stdin.close()
        try:
            child.wait(timeout=15)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def new_tag() -> str:
    return f"tag-{uuid.uuid4().hex[:12]}"


def ask(tag: str, image: bool = False) -> list[BaseMessage]:
    content: list[Any] = [{"type": "text", "text": f"Please echo {tag}"}]
    if image:
        content.append({"type": "image_url", "image_url": {"url": PNG_URL}})
    return [HumanMessage(content=content)]


def our_objects() -> int:
    """Live objects of this package's own classes, after a full collection."""
    gc.collect()
    ours = ("nemovlm", "langchain_nemovlm", "llama_index_nemovlm")
    modules = (getattr(type(o), "__module__", None) for o in gc.get_objects())
    return sum(1 for m in modules if isinstance(m, str) and m.split(".")[0] in ours)


def rss_bytes() -> int | None:
    """This process's resident memory now (Linux), else ``None``."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Answer:
    tag: str
    text: str
    response_id: str | None


Call = Callable[[str], Awaitable[Answer]]


def callers(emulators: Emulators) -> list[Call]:
    """One coroutine factory per mix entry: model x framework x whole/streamed."""
    url = emulators.nim_url
    lc = {m: ChatNemoVLM(model=m, base_url=url, max_retries=0) for m in (LLAMA8, NANO12, GEMMA)}
    lc[GENERIC] = ChatNemoVLM(model=GENERIC, base_url=url, max_retries=0)
    li = {m: NemoVLM(model=m, base_url=url, max_retries=0) for m in (NANO12, GEMMA)}
    diffusion = ChatNemoFal(model=DIFFUSION, api_key=FAL_KEY, poll_interval=0.01)

    def lc_invoke(model: str) -> Call:
        async def call(tag: str) -> Answer:
            message = await lc[model].ainvoke(ask(tag))
            return Answer(tag, message.text, message.id)

        return call

    def lc_stream(model: str) -> Call:
        async def call(tag: str) -> Answer:
            full: Any = None
            async for chunk in lc[model].astream(ask(tag)):
                full = chunk if full is None else full + chunk
            return Answer(tag, full.text, full.id)

        return call

    def li_chat(model: str) -> Call:
        async def call(tag: str) -> Answer:
            response = await li[model].achat([ChatMessage(role="user", content=f"Echo {tag}")])
            return Answer(tag, response.message.content or "", response.raw["id"])

        return call

    def li_stream(model: str) -> Call:
        async def call(tag: str) -> Answer:
            stream = await li[model].astream_chat([ChatMessage(role="user", content=f"Echo {tag}")])
            responses = [response async for response in stream]
            last = responses[-1]
            return Answer(tag, last.message.content or "", last.raw["id"])

        return call

    async def fal_invoke(tag: str) -> Answer:
        message = await diffusion.ainvoke(ask(tag, image=True))
        return Answer(tag, message.text, message.response_metadata["fal_request_id"])

    nim_calls = [
        lc_invoke(NANO12), lc_stream(LLAMA8), lc_invoke(GEMMA), lc_stream(GENERIC),
        li_chat(NANO12), li_stream(GEMMA), lc_stream(NANO12), lc_invoke(LLAMA8),
    ]  # fmt: skip
    # fal requests poll their queue over TLS: one in twenty keeps the run short.
    return [*nim_calls * 2, *nim_calls[:3], fal_invoke]


async def run_all(mix: list[Call], count: int) -> list[Answer | BaseException]:
    tags = [new_tag() for _ in range(count)]
    coros = [mix[i % len(mix)](tag) for i, tag in enumerate(tags)]
    results = await asyncio.gather(*coros, return_exceptions=True)
    for tag, result in zip(tags, results):
        assert isinstance(result, BaseException) or result.tag == tag
    return list(results)


async def test_a_thousand_concurrent_requests_each_get_their_own_answer(
    emulators: Emulators,
) -> None:
    mix = callers(emulators)
    await run_all(mix, 2 * len(mix))  # warm: clients, pools, the image cache
    before = our_objects()

    results = await run_all(mix, LOAD_REQUESTS)

    failures = [r for r in results if isinstance(r, BaseException)]
    assert failures == [], f"{len(failures)} requests failed, first: {failures[:3]!r}"
    answers = [r for r in results if isinstance(r, Answer)]
    assert len(answers) == LOAD_REQUESTS
    # Each answer echoes its own tag and no one else's.
    wrong = [a for a in answers if TAG.findall(a.text) != [a.tag]]
    assert wrong == [], f"{len(wrong)} answers carry the wrong tag, e.g. {wrong[:2]!r}"
    # Every answer is a distinct reply from the server: nothing duplicated.
    ids = Counter(a.response_id for a in answers)
    assert None not in ids and ids.most_common(1)[0][1] == 1
    # Nothing our code made for those thousand requests is still alive.
    assert our_objects() - before <= 10


async def test_the_nim_emulator_saw_each_request_exactly_once(emulators: Emulators) -> None:
    llm = ChatNemoVLM(model=NANO12, base_url=emulators.nim_url, max_retries=0)

    async def completion_number(tag: str) -> int:
        message = await llm.ainvoke(ask(tag))
        return int(str(message.id).rsplit("-", 1)[1])

    first = await completion_number(new_tag())
    numbers = await asyncio.gather(*(completion_number(new_tag()) for _ in range(200)))
    last = await completion_number(new_tag())
    # The emulator numbers its completions: 200 answers, 200 numbers, no gaps, no repeats.
    assert sorted(numbers) == list(range(first + 1, last))


# --- the soak: faults injected, every request ends as its fault says ----------------------


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"Sunny in {city}"


@dataclass(frozen=True)
class Case:
    """One kind of request in the soak and how it must end."""

    name: str
    run: Callable[[str], Awaitable[str]]
    """Sends one request tagged with the argument; returns the answer's text."""
    expect: type[BaseException] | None
    """The error it must raise, or ``None``: it must answer with its own tag."""


def soak_cases(emulators: Emulators) -> list[Case]:
    url = emulators.nim_url
    key = uuid.uuid4().hex  # fresh per round: "fail N times" counts per key

    def nim(fault: str | None = None, times: int | None = None, **kw: Any) -> ChatNemoVLM:
        headers = {"X-Emulator-Retry-After": "0.01", "X-Emulator-Fault-Key": f"{key}{fault}"}
        if fault:
            headers["X-Emulator-Fault"] = fault
        if times is not None:
            headers["X-Emulator-Fault-Times"] = str(times)
        kw.setdefault("max_retries", 0)
        return ChatNemoVLM(model=NANO12, base_url=url, default_headers=headers, **kw)

    def invoking(llm: Any) -> Callable[[str], Awaitable[str]]:
        async def run(tag: str) -> str:
            return str((await llm.ainvoke(ask(tag))).text)

        return run

    def streaming(llm: ChatNemoVLM) -> Callable[[str], Awaitable[str]]:
        async def run(tag: str) -> str:
            return "".join([chunk.text async for chunk in llm.astream(ask(tag))])

        return run

    bound = nim("bad_tool_args").bind_tools([get_weather])

    async def bad_tool_args(tag: str) -> str:
        message = await bound.ainvoke(ask(tag))
        # A broken call must come back as invalid, never as a call with cut arguments.
        assert message.tool_calls == [] and len(message.invalid_tool_calls) == 1
        return tag

    fal_ok = ChatNemoFal(model=DIFFUSION, api_key=FAL_KEY, poll_interval=0.01)

    async def fal_failed(tag: str) -> str:
        return str((await fal_ok.ainvoke(ask(f"{tag} [emulator-fault:failed]", True))).text)

    async def fal_answer(tag: str) -> str:
        return str((await fal_ok.ainvoke(ask(tag, image=True))).text)

    # At most 3 refusals per key and 3 retries per request: every request gets through.
    retried_429 = nim("429", times=3, max_retries=3)
    retried_503 = nim("503", times=3, max_retries=3)
    return [
        Case("plain", invoking(nim()), None),
        Case("plain stream", streaming(nim()), None),
        Case("429 then fine", invoking(retried_429), None),
        Case("503 then fine", streaming(retried_503), None),
        Case("429 always", invoking(nim("429", max_retries=1)), RequestError),
        Case("broken stream", streaming(nim("break_stream")), IncompleteResponseError),
        Case("broken body", invoking(nim("break_stream")), IncompleteResponseError),
        Case("malformed json", invoking(nim("malformed_json")), IncompleteResponseError),
        Case("no choices", streaming(nim("no_choices")), IncompleteResponseError),
        # Slow and stalled for far longer than any pause of a busy machine: a timeout
        # is the only way these end (the emulator lets go once the client hangs up).
        Case("slow", invoking(nim("slow:600", timeout=0.3)), RequestTimeoutError),
        Case("stalled stream", streaming(nim("stall:600", timeout=0.3)), RequestTimeoutError),
        Case("bad tool args", bad_tool_args, None),
        Case("fal failed", fal_failed, RequestError),
        Case("fal answer", fal_answer, None),
    ]


async def soak_round(emulators: Emulators, per_case: int) -> Counter[str]:
    cases = soak_cases(emulators)
    planned = [(case, new_tag()) for case in cases for _ in range(per_case)]
    results = await asyncio.gather(
        *(case.run(tag) for case, tag in planned), return_exceptions=True
    )
    outcomes: Counter[str] = Counter()
    for (case, tag), result in zip(planned, results, strict=True):
        if case.expect is None:
            assert not isinstance(result, BaseException), f"{case.name}: {result!r}"
            assert TAG.findall(result) == [tag], f"{case.name}: {result[:200]!r}"
        else:
            assert isinstance(result, case.expect), f"{case.name}: {result!r}"
        outcomes[case.name] += 1
    return outcomes


async def test_a_soak_with_injected_faults_loses_nothing_and_stays_flat(
    emulators: Emulators,
) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    per_case = 12
    rounds = 0
    # Rounds until the next would end past the deadline; at least SOAK_ROUNDS.
    while (
        rounds < SOAK_ROUNDS
        or loop.time() + (loop.time() - started) / rounds < started + SOAK_SECONDS
    ):
        outcomes = await soak_round(emulators, per_case)
        assert set(outcomes.values()) == {per_case}  # every request accounted for
        rounds += 1
        if rounds == 2:
            # Measured after rounds of the same size: a finished round leaves its last
            # results for the collector, so only growth beyond that is a leak.
            objects, rss = our_objects(), rss_bytes()
    assert our_objects() - objects <= 20
    grown = rss_bytes()
    if rss is not None and grown is not None:
        assert grown - rss < 40 * 1024 * 1024, f"RSS grew {(grown - rss) >> 20} MB in {rounds}"
