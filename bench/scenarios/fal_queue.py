"""Scenario 7: fal queue - from result-ready to answer-returned, and status requests per call.

Against the fal emulator (in this process, so it shares the clock): each request is
made to run for 0.2-0.4 s, spread evenly (the emulator's ``slow`` fault with
``slow_seconds`` set per call), so the moment its result is ready falls anywhere
between two status polls. Ready = when the runner picked it up + its run time;
returned = when ``invoke`` / ``ainvoke`` came back. Status requests are counted by the
emulator (``_QueuedRequest.polls``). The raw ``fal_client`` ``subscribe`` with the
same poll interval is the floor.
"""

from __future__ import annotations

import asyncio
import base64
import math
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from bench.config import Config
from bench.report import Bars, ScenarioResult, Table, Target
from nemovlm.samples import make_image

APP = "fal-ai/nemotron-diffusion-vlm"
LATENCY_LIMIT = 0.100
POLL_INTERVAL = 0.1
"""``ChatNemoFal.poll_interval``'s default."""
RAW = "raw fal_client.subscribe"
OURS_SYNC = "ChatNemoFal.invoke (ours)"
OURS_ASYNC = "ChatNemoFal.ainvoke (ours)"


def run(config: Config) -> ScenarioResult:
    from nemovlm.emulator.fal import FalEmulatorSettings, use_fal_emulator

    started = time.perf_counter()
    calls = config.scaled(16, 2)
    with use_fal_emulator(settings=FalEmulatorSettings(slow_seconds=0.3)) as emulator:
        samples = _measure(emulator, calls)

    result = ScenarioResult("fal_queue", "7. fal queue (result ready -> answer returned)")
    rows = []
    for name, got in samples.items():
        latency = [s["latency"] for s in got]
        polls = [s["polls"] for s in got]
        rows.append(
            [
                name,
                f"{statistics.median(latency) * 1e3:,.0f} ms",
                f"{max(latency) * 1e3:,.0f} ms",
                f"{statistics.median(polls):.0f}",
                f"{max(polls)}",
                f"{max(s['polls'] - s['bound'] for s in got):+d}",
            ]
        )
    result.tables.append(
        Table(
            ["client", "ready -> returned (median)", "(max)", "status requests (median)",
             "(max)", "most over the bound"],
            rows,
            f"{calls} calls each, run time 0.2-0.4 s, poll_interval {POLL_INTERVAL} s; bound = "
            "run time / poll_interval + 3 (queue poll, last poll, the result's own)",
        )
    )  # fmt: skip
    ours = samples[OURS_SYNC] + samples[OURS_ASYNC]
    median_latency = statistics.median(s["latency"] for s in ours)
    over = max(s["polls"] - s["bound"] for s in ours)
    result.targets += [
        Target(
            f"Result ready -> answer returned <= {LATENCY_LIMIT * 1e3:.0f} ms (median)",
            f"{median_latency * 1e3:,.0f} ms",
            median_latency <= LATENCY_LIMIT,
        ),
        Target(
            "Status requests per call bounded (<= run time / poll_interval + 3)",
            f"max {max(s['polls'] for s in ours)} per call, {over:+d} vs the bound",
            over <= 0,
        ),
    ]
    result.bars.append(
        Bars(
            "fal queue: result ready -> answer returned",
            "ms (median)",
            {
                name: statistics.median(s["latency"] for s in got) * 1e3
                for name, got in samples.items()
            },  # fmt: skip
            {RAW: "floor", OURS_SYNC: "ours", OURS_ASYNC: "ours"},
        )
    )
    result.notes.append(
        "fal-client polls at a fixed interval, so a result waits on average half an interval "
        "for the next poll; a lower poll_interval trades status requests for latency."
    )
    result.raw = {"samples": samples}
    result.seconds = time.perf_counter() - started
    return result


def _measure(emulator: Any, calls: int) -> dict[str, list[dict[str, Any]]]:
    import fal_client
    from langchain_core.messages import HumanMessage

    from langchain_nemovlm import ChatNemoFal

    image = "data:image/png;base64," + base64.b64encode(make_image(64, 48, text="hi")).decode()
    prompt = "What is in this picture?"
    message = [
        HumanMessage(
            content=[
                {"type": "text", "text": prompt},
                {"type": "image_url", "image_url": {"url": image}},
            ]
        )
    ]
    llm = ChatNemoFal(model=APP, api_key="bench", poll_interval=POLL_INTERVAL, max_tokens=64)
    loop = asyncio.new_event_loop()
    raw_client = fal_client.SyncClient(key="bench")
    arguments = {"prompt": prompt, "image_url": image, "max_tokens": 64}
    runs: dict[str, Callable[[], object]] = {
        RAW: lambda: raw_client.subscribe(APP, arguments, with_logs=True, interval=POLL_INTERVAL),
        OURS_SYNC: lambda: llm.invoke(message),
        # One event loop for every async call, as an application has.
        OURS_ASYNC: lambda: loop.run_until_complete(llm.ainvoke(message)),
    }
    rng = random.Random(7)
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in runs}
    try:
        _interleave(emulator, runs, samples, calls, rng)
    finally:
        loop.close()
    return samples


def _interleave(
    emulator: Any,
    runs: dict[str, Callable[[], object]],
    samples: dict[str, list[dict[str, Any]]],
    calls: int,
    rng: random.Random,
) -> None:
    for call in runs.values():  # warm-up: TLS handshakes, imports
        call()
    # Run times spread evenly over 0.2-0.4 s (over two poll intervals), in a shuffled
    # order per client, so every client meets the poll grid at every phase.
    spread = [0.2 + 0.2 * (i + 0.5) / calls for i in range(calls)]
    plans = {name: rng.sample(spread, calls) for name in runs}
    for i in range(calls):
        order = list(runs)
        rng.shuffle(order)
        for name in order:
            run_time = plans[name][i]
            emulator.state.settings = replace(emulator.state.settings, slow_seconds=run_time)
            emulator.inject_fault("slow")
            known = set(emulator.state.requests)
            t0 = time.monotonic()
            runs[name]()
            returned = time.monotonic()
            (record,) = [r for k, r in emulator.state.requests.items() if k not in known]
            ready = record.started_at + run_time
            samples[name].append(
                {
                    "latency": returned - ready,
                    "polls": record.polls,
                    "bound": math.ceil((returned - t0) / POLL_INTERVAL) + 3,
                    "run_time": run_time,
                }
            )
