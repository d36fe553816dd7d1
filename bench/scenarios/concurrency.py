"""Scenario 4: ``abatch`` / ``ainvoke`` with 64 requests in flight, 1,000 requests a run.

All runs share one event loop and one model instance per client, against the canned
server, which counts the TCP connections each run opens (``/stats``): a client made
per call opens one per request, one pool per instance at most one per request in
flight. After a short warm-up run, runs are interleaved client by client, round by
round; throughput is the median over rounds. Memory: the process's RSS around ours'
runs, and ``tracemalloc`` over a further run of ours (what it leaves allocated).
"""

from __future__ import annotations

import asyncio
import gc
import random
import statistics
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from bench import clients as c
from bench.config import Config
from bench.report import Bars, ScenarioResult, Table, Target
from bench.timing import rss_bytes
from nemovlm.samples import make_image

IN_FLIGHT = 64
TRACED = 200
WARM_UP = 2 * IN_FLIGHT
CONNECTIONS_LIMIT = 2 * IN_FLIGHT
"""A pool opens about one connection per request in flight (a few more when idle ones
expire or close meanwhile); a client made per call opens one per request."""
RETAINED_LIMIT = 256 * 1024
"""Bytes a finished traced run may leave allocated (about 1 KiB per request)."""
OURS_GATHER = "ChatNemoVLM (ours), ainvoke + gather"
NVIDIA_GATHER = "ChatNVIDIA, ainvoke + gather"
OURS_BATCH = "ChatNemoVLM (ours), batch (threads)"
NVIDIA_BATCH = "ChatNVIDIA, batch (threads)"


def _abatch(model: Any, message: list[Any]) -> Callable[[int], Awaitable[object]]:
    async def run(n: int) -> object:
        return await model.abatch([message] * n, config={"max_concurrency": IN_FLIGHT})

    return run


def _gather(call: Callable[[], Awaitable[object]]) -> Callable[[int], Awaitable[object]]:
    async def run(n: int) -> object:
        gate = asyncio.Semaphore(IN_FLIGHT)

        async def one() -> object:
            async with gate:
                return await call()

        return await asyncio.gather(*(one() for _ in range(n)))

    return run


def _raw(base_url: str, messages: list[dict[str, Any]]) -> Callable[[int], Awaitable[object]]:
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="not-used")

    async def call() -> object:
        return await client.chat.completions.create(model=c.MODEL, messages=messages)  # type: ignore[arg-type]

    return _gather(call)


async def _stats(client: httpx.AsyncClient, url: str) -> dict[str, int]:
    response = await client.get(f"{url}/stats")
    return dict(response.json())


async def _measure(config: Config, n: int, rounds: int) -> dict[str, Any]:
    base_url = config.canned_url + "/v1"
    image = make_image(64, 48, text="hi")
    lc_input = c.langchain_input(image)
    lc = c.langchain_models(base_url)
    ours = lc[c.LC_OURS].model
    runs: dict[str, Callable[[int], Awaitable[object]]] = {
        c.RAW: _raw(base_url, c.openai_messages(image)),
        OURS_GATHER: _gather(lambda: ours.ainvoke(lc_input)),
    }
    kinds = {c.RAW: "floor", OURS_GATHER: "ours"}
    if config.wants("langchain"):
        for name, entry in lc.items():
            if entry.kind != "floor":  # the raw SDK is the floor here
                runs[f"{name}, abatch"] = _abatch(entry.model, lc_input)
                kinds[f"{name}, abatch"] = entry.kind
        if c.LC_NVIDIA in lc:
            nvidia = lc[c.LC_NVIDIA].model
            runs[NVIDIA_GATHER] = _gather(lambda: nvidia.ainvoke(lc_input))
            kinds[NVIDIA_GATHER] = "peer"
    else:  # this process measures the LlamaIndex clients only
        del runs[OURS_GATHER], kinds[OURS_GATHER]
    if config.wants("llama_index"):
        li_input = c.llama_index_input(image)
        for name, entry in c.llama_index_models(base_url).items():
            if entry.kind != "floor":
                runs[f"{name}, achat + gather"] = _gather(lambda m=entry.model: m.achat(li_input))
                kinds[f"{name}, achat + gather"] = entry.kind

    seconds: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    connections: dict[str, list[int]] = {name: [] for name in runs}
    ours_rss: list[int] = []
    """RSS growth over each timed run of ours (abatch), warm-up done."""
    rng = random.Random(6)
    async with httpx.AsyncClient() as stats_client:
        for _ in range(rounds):
            order = list(runs)
            rng.shuffle(order)
            for name in order:
                gc.collect()
                before = await _stats(stats_client, config.canned_url)
                # Each client starts its timed run with a full pool: its idle connections
                # may have expired while the others ran.
                await runs[name](WARM_UP)
                rss0 = rss_bytes()
                w0, c0 = time.perf_counter(), time.process_time()
                await runs[name](n)
                c1, w1 = time.process_time(), time.perf_counter()
                if name in (f"{c.LC_OURS}, abatch", f"{c.LI_OURS}, achat + gather"):
                    gc.collect()
                    ours_rss.append(rss_bytes() - rss0)
                after = await _stats(stats_client, config.canned_url)
                seconds[name].append(w1 - w0)
                cpu[name].append(c1 - c0)
                connections[name].append(after["connections"] - before["connections"])
        # What a further run of ours leaves allocated once it is over.
        run = runs.get(f"{c.LC_OURS}, abatch") or runs[f"{c.LI_OURS}, achat + gather"]
        tracemalloc.start()
        await run(TRACED)  # the first traced run fills caches that stay (interned strings...)
        gc.collect()
        start_bytes = tracemalloc.get_traced_memory()[0]
        await run(TRACED)
        gc.collect()
        retained = tracemalloc.get_traced_memory()[0] - start_bytes
        tracemalloc.stop()
    return {
        "seconds": seconds,
        "cpu": cpu,
        "connections": connections,
        "kinds": kinds,
        "ours_rss": ours_rss,
        "retained": retained,
    }


def _measure_sync(config: Config, n: int, rounds: int) -> dict[str, Any]:
    """``batch`` (LangChain's thread pool, 64 at a time) for ours and ChatNVIDIA."""
    image = make_image(64, 48, text="hi")
    lc_input = c.langchain_input(image)
    lc = c.langchain_models(config.canned_url + "/v1")
    runs = {OURS_BATCH: lc[c.LC_OURS].model}
    if c.LC_NVIDIA in lc:
        runs[NVIDIA_BATCH] = lc[c.LC_NVIDIA].model
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(rounds):
        for name in runs if r % 2 == 0 else reversed(list(runs)):
            model = runs[name]
            gc.collect()
            model.batch([lc_input] * WARM_UP, config={"max_concurrency": IN_FLIGHT})
            w0, c0 = time.perf_counter(), time.process_time()
            model.batch([lc_input] * n, config={"max_concurrency": IN_FLIGHT})
            c1, w1 = time.process_time(), time.perf_counter()
            seconds[name].append(w1 - w0)
            cpu[name].append(c1 - c0)
    return {"seconds": seconds, "cpu": cpu, "kinds": {OURS_BATCH: "ours", NVIDIA_BATCH: "peer"}}


def _against(
    result: ScenarioResult,
    throughput: dict[str, float],
    cpu: dict[str, float],
    ours: str,
    peer: str,
    what: str,
) -> None:
    """Two targets: throughput at least the peer's, CPU per request at most the peer's."""
    who = peer.split(",")[0]
    if ours not in throughput:
        return
    if peer not in throughput:
        for bar in ("throughput at least", "CPU per request at most"):
            result.targets.append(Target(f"{what}: {bar} {who}'s", "-", None, "not installed"))
        return
    r = throughput[ours] / throughput[peer]
    result.targets.append(Target(f"{what}: throughput at least {who}'s", f"{r:.2f}x", r >= 1.0))
    r = cpu[ours] / cpu[peer]
    result.targets.append(
        Target(
            f"{what}: CPU per request at most {who}'s",
            f"{r:.2f}x ({cpu[ours] * 1e6:,.0f} vs {cpu[peer] * 1e6:,.0f} µs)",
            r <= 1.0,
        )
    )


def run(config: Config) -> ScenarioResult:
    started = time.perf_counter()
    n = config.scaled(1000, 80)
    # Throughput is wall time: one round is one sample per client, which a busy spell
    # of the machine can halve; the median of ``--rounds`` is steadier.
    rounds = config.scaled(config.rounds, 1)
    m = asyncio.run(_measure(config, n, rounds))
    if config.wants("langchain"):
        sync = _measure_sync(config, n, rounds)
        for key in ("seconds", "cpu", "kinds"):
            m[key].update(sync[key])
        m["connections"].update({name: [0] for name in sync["seconds"]})
    result = ScenarioResult(
        "concurrency", f"4. Concurrency ({n:,} requests, {IN_FLIGHT} in flight)"
    )
    throughput = {name: n / statistics.median(s) for name, s in m["seconds"].items()}
    cpu = {name: statistics.median(s) / n for name, s in m["cpu"].items()}
    rows = []
    for name in sorted(throughput, key=lambda k: -throughput[k]):
        opened = "-" if name in (OURS_BATCH, NVIDIA_BATCH) else max(m["connections"][name])
        rows.append(
            [
                name,
                f"{throughput[name]:,.0f}",
                f"{cpu[name] * 1e6:,.0f} µs",
                f"{opened} for {WARM_UP + n:,} requests" if opened != "-" else "-",
            ]
        )
    result.tables.append(
        Table(
            ["client", "requests/s (median)", "CPU per request", "connections opened (most)"],
            rows,
            f"{rounds} round(s); each timed run follows a {WARM_UP}-request warm-up of the same "
            "client; one event loop, one instance per client",
        )
    )
    if config.wants("langchain"):
        ours_abatch, peer = f"{c.LC_OURS}, abatch", f"{c.LC_OPENAI}, abatch"
        if peer in throughput:
            r = throughput[ours_abatch] / throughput[peer]
            result.targets.append(
                Target("Throughput at least ChatOpenAI's (abatch)", f"{r:.2f}x", r >= 1.0)
            )
        else:
            result.targets.append(
                Target("Throughput at least ChatOpenAI's (abatch)", "-", None, "not installed")
            )
        _against(result, throughput, cpu, OURS_GATHER, NVIDIA_GATHER, "ainvoke + gather")
        _against(result, throughput, cpu, OURS_BATCH, NVIDIA_BATCH, "batch (threads)")
    if config.wants("llama_index"):
        _against(
            result,
            throughput,
            cpu,
            f"{c.LI_OURS}, achat + gather",
            f"{c.LI_NVIDIA}, achat + gather",
            "LlamaIndex achat + gather",
        )
    ours_runs = [k for k in m["connections"] if "(ours)" in k and k != OURS_BATCH]
    opened = max(x for k in ours_runs for x in m["connections"][k])
    result.targets.append(
        Target(
            f"One connection pool per model instance, no client per call "
            f"(<= {CONNECTIONS_LIMIT} connections per run)",
            f"at most {opened} connections per {WARM_UP + n:,} requests",
            opened <= CONNECTIONS_LIMIT,
        )
    )
    rss = m["ours_rss"]
    result.targets.append(
        Target(
            "Memory flat over the run",
            f"{m['retained'] / 1024:,.0f} KiB left by a {TRACED}-request run (tracemalloc); "
            f"RSS {max(rss) / 2**20:+.1f} MiB over a {n:,}-request run",
            m["retained"] <= RETAINED_LIMIT,
        )
    )
    result.bars.append(
        Bars(
            f"Concurrency: requests per second ({IN_FLIGHT} in flight)",
            "requests/s (median)",
            {row[0]: throughput[row[0]] for row in rows},
            m["kinds"],
        )
    )
    result.notes += [
        "Connections opened per warm-up + timed run: a pool opens about one per request in "
        "flight (again after idle ones expire between runs), a client made per call one per "
        "request (ChatNVIDIA opens an aiohttp session per call).",
        "Ours sends whole replies below the openai SDK (nemovlm/backends/nim_http.py): "
        "async on a pooled aiohttp session, sync (batch) on the SDK client's own httpx "
        "client, with the SDK's retry policy and exception classes; the raw SDK row is "
        "the SDK's own default (httpx / httpx2).",
    ]
    result.raw = {
        "throughput": throughput,
        "cpu_per_request": cpu,
        "connections": m["connections"],
        "rss": rss,
        "retained_bytes": m["retained"],
    }
    result.seconds = time.perf_counter() - started
    return result
