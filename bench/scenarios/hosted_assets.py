"""Scenario 9: the hosted catalog's asset path - what an upload adds per call, and N at once.

Against the NIM emulator in hosted mode (it plays NVIDIA's catalog and its NVCF asset
API, on loopback, in this process), with a fixed simulated round trip on every asset
request: ``/emulator/assets/latency`` makes each create, presigned PUT and delete take
``ASSET_LATENCY`` seconds more. Per call (``invoke``, and ``ainvoke`` on one event loop):

- inline: one small photo, carried inline as base64 (under the inline budget);
- one upload: one large photo (over the budget), ``hosted_media="upload"``: create ->
  PUT -> chat -> delete;
- N uploads: N distinct large photos in one message; the package creates and PUTs them
  concurrently and deletes them concurrently;
- N one at a time (``invoke`` only): the same call with the package's upload pool cut
  to one thread (``assets._MAX_CONCURRENT_UPLOADS``), so every create, PUT and delete
  waits for the one before.

What an upload adds is a call's median wall time minus the inline call's, from calls
interleaved in one run; the target is the ratio of N uploads' added time to one's.
The media cache keeps every photo prepared after the first call, so the figures are
the asset requests and the chat, not image preparation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from bench import clients as c
from bench.config import Config
from bench.report import Bars, ScenarioResult, Table, Target
from bench.timing import interleave, median
from nemovlm.emulator import start_nim_emulator
from nemovlm.samples import make_photo

ASSET_LATENCY = 0.05
"""Seconds added to every asset create, PUT and delete (a round trip to NVIDIA's API)."""
IMAGES = 4
RATIO_LIMIT = 1.5
KEY = "bench-key"
INLINE = "inline: 1 small photo"
ONE = "upload: 1 large photo"
MANY = f"upload: {IMAGES} large photos (concurrent)"
SERIAL = f"upload: {IMAGES} large photos, one at a time"
ASYNC = " (ainvoke)"


def run(config: Config) -> ScenarioResult:
    server = start_nim_emulator(hosted=True)
    try:
        raw = _measure(config, server.url)
    finally:
        server.stop()

    result = ScenarioResult("hosted_assets", "9. Hosted catalog: NVCF asset uploads per call")
    inline = {"sync": raw["median"][INLINE], "async": raw["median"][INLINE + ASYNC]}
    added = {
        name: wall - inline["async" if name.endswith(ASYNC) else "sync"]
        for name, wall in raw["median"].items()
    }
    one_sync, one_async = added[ONE], added[ONE + ASYNC]
    rows = []
    for name, wall in raw["median"].items():
        one = one_async if name.endswith(ASYNC) else one_sync
        upload = name not in (INLINE, INLINE + ASYNC)
        rows.append(
            [
                name,
                f"{wall * 1e3:,.0f} ms",
                f"{added[name] * 1e3:+,.0f} ms" if upload else "-",
                f"{added[name] / one:.2f}x" if upload else "-",
                str(raw["asset_requests"][name]),
                str(raw["most_uploading"].get(name, "-")),
            ]
        )
    calls = raw["calls_each"]
    result.tables.append(
        Table(
            ["call", "wall per call (median)", "added vs inline", "added / one upload's",
             "asset requests per call", "PUTs in flight at once"],
            rows,
            f"{calls} calls each, interleaved; every asset create, PUT and delete takes "
            f"{ASSET_LATENCY * 1e3:.0f} ms more at the emulator (one upload: 3 round trips, "
            f"{3 * ASSET_LATENCY * 1e3:.0f} ms at the least); large photos 800-830x600 "
            f"JPEG, ~{raw['large_bytes'] // 1000} KB each; small 320x240, "
            f"{raw['small_bytes'] // 1000} KB",
        )
    )  # fmt: skip
    serial = added[SERIAL]
    for label, name, one in (("invoke", MANY, one_sync), ("ainvoke", MANY + ASYNC, one_async)):
        ratio = added[name] / one
        result.targets.append(
            Target(
                f"{label}: {IMAGES} large images cost <= {RATIO_LIMIT}x one upload's added latency",
                f"{ratio:.2f}x ({added[name] * 1e3:,.0f} vs {one * 1e3:,.0f} ms)",
                ratio <= RATIO_LIMIT,
            )
        )
    result.targets.append(
        Target(
            "Every asset created is deleted by the end of its call",
            f"{raw['left']} left after {raw['calls']:,} calls",
            raw["left"] == 0,
        )
    )
    result.bars.append(
        Bars(
            "Hosted catalog: added per call vs inline (invoke)",
            f"ms (asset round trip {ASSET_LATENCY * 1e3:.0f} ms)",
            {name: added[name] * 1e3 for name in (ONE, MANY, SERIAL)},
            {ONE: "ours", MANY: "ours"},
        )
    )
    result.notes += [
        f"One upload adds {one_sync * 1e3:,.0f} ms per call (invoke; {one_async * 1e3:,.0f} ms "
        f"ainvoke): create + PUT + delete, {3 * ASSET_LATENCY * 1e3:.0f} ms of it the "
        "simulated round trips, the rest the asset requests themselves and the larger photo "
        "at the chat (the emulator decodes every image it is sent, in this process).",
        f"{IMAGES} one at a time add {serial * 1e3:,.0f} ms ({serial / one_sync:.2f}x one "
        f"upload's; {IMAGES}x would be {IMAGES * one_sync * 1e3:,.0f} ms); concurrently "
        f"{added[MANY] * 1e3:,.0f} ms.",
        "The latency is simulated at the emulator on loopback; on the real catalog the "
        "round trips are longer and the PUT carries the bytes over the internet, so the "
        "absolute figures differ; the ratios are what this measures.",
    ]
    result.raw = raw
    return result


@contextmanager
def _one_at_a_time() -> Iterator[None]:
    from nemovlm.backends import assets

    saved = assets._MAX_CONCURRENT_UPLOADS
    assets._MAX_CONCURRENT_UPLOADS = 1
    try:
        yield
    finally:
        assets._MAX_CONCURRENT_UPLOADS = saved


def _measure(config: Config, url: str) -> dict[str, Any]:
    from langchain_core.messages import HumanMessage

    from langchain_nemovlm import ChatNemoVLM

    small = make_photo(320, 240)
    large = [make_photo(800 + 10 * i, 600) for i in range(IMAGES)]

    def message(images: list[bytes]) -> list[Any]:
        blocks: list[Any] = [{"type": "text", "text": c.PROMPT}]
        blocks += [{"type": "image_url", "image_url": {"url": c.data_url(i, "image/jpeg")}}
                   for i in images]  # fmt: skip
        return [HumanMessage(content=blocks)]

    common = {"model": c.MODEL, "base_url": url + "/v1", "api_key": KEY, "hosted": True,
              "assets_url": url + "/v2/nvcf/assets", "max_tokens": 32}  # fmt: skip
    auto = ChatNemoVLM(**common)
    upload = ChatNemoVLM(**common, hosted_media="upload")
    inline_msg, one_msg, many_msg = message([small]), message(large[:1]), message(large)
    loop = asyncio.new_event_loop()

    def serial() -> None:
        with _one_at_a_time():
            upload.invoke(many_msg)

    calls: dict[str, Callable[[], object]] = {
        INLINE: lambda: auto.invoke(inline_msg),
        ONE: lambda: upload.invoke(one_msg),
        MANY: lambda: upload.invoke(many_msg),
        SERIAL: serial,
        INLINE + ASYNC: lambda: loop.run_until_complete(auto.ainvoke(inline_msg)),
        ONE + ASYNC: lambda: loop.run_until_complete(upload.ainvoke(one_msg)),
        MANY + ASYNC: lambda: loop.run_until_complete(upload.ainvoke(many_msg)),
    }
    hooks = httpx.Client(base_url=url, timeout=30)
    try:
        hooks.post("/emulator/assets/latency", json={"seconds": ASSET_LATENCY}).raise_for_status()
        asset_requests, most_uploading = {}, {}
        for name, call in calls.items():  # one checked call each: requests, PUTs in flight
            hooks.post("/emulator/assets/barrier", json={"uploads": 0}).raise_for_status()
            hooks.delete("/emulator/requests").raise_for_status()
            call()
            records = hooks.get("/emulator/requests").json()
            asset_requests[name] = sum(not r["path"].endswith("/chat/completions") for r in records)
            if name not in (INLINE, INLINE + ASYNC):
                most_uploading[name] = hooks.get("/emulator/assets/stats").json()["most_uploading"]
        per_round = config.scaled(4, 1)
        samples = interleave(calls, rounds=config.rounds, per_round=per_round, warmup=1)
        left = len(hooks.get("/emulator/assets", params={"wait_empty": "5"}).json())
        hooks.post("/emulator/assets/latency", json={"seconds": 0}).raise_for_status()
    finally:
        hooks.close()
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    return {
        "median": {name: median(s.wall) for name, s in samples.items()},
        "wall": {name: s.wall for name, s in samples.items()},
        "calls_each": config.rounds * per_round,
        "asset_requests": asset_requests,
        "most_uploading": most_uploading,
        "calls": sum(len(s.wall) + 1 for s in samples.values()),
        "left": left,
        "large_bytes": sum(len(i) for i in large) // IMAGES,
        "small_bytes": len(small),
    }
