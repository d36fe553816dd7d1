"""Scenario 3: the same image in many turns, and in many calls, is prepared once.

A 2400x1800 camera JPEG (above the model's pixel budget, so preparing it means
decode, resize and re-encode) is sent (a) in every user turn of a ``TURNS``-turn
conversation, and (b) in ``CALLS`` separate calls, from bytes and from a file on disk.
``nemovlm.media.cache_info()`` counts decodes; the same runs with the cache switched
off (``set_cache_limits(0)``) show what it saves. Times are this process's CPU time
against the canned server.
"""

from __future__ import annotations

import functools
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import clients as c
from bench.config import Config
from bench.report import Bars, ScenarioResult, Table, Target
from bench.timing import ms
from nemovlm.media import cache_info, clear_cache, set_cache_limits
from nemovlm.samples import make_photo

TURNS = 10


def _conversation(image: bytes, turns: int) -> list[Any]:
    from langchain_core.messages import AIMessage

    messages: list[Any] = []
    for i in range(turns):
        messages += c.langchain_input(image, "image/jpeg")
        if i < turns - 1:
            messages.append(AIMessage(content=f"Answer {i}: a photo with gradients."))
    return messages


def _cpu(call: Callable[[], object], repeat: int) -> tuple[float, float]:
    """CPU seconds of the first (cold) call and the median of the ``repeat`` after it."""
    start = time.process_time()
    call()
    cold = time.process_time() - start
    warm = []
    for _ in range(repeat):
        start = time.process_time()
        call()
        warm.append(time.process_time() - start)
    return cold, statistics.median(warm) if warm else cold


def run(config: Config) -> ScenarioResult:
    started = time.perf_counter()
    result = ScenarioResult("repeated_media", "3. Repeated media")
    turns = config.scaled(TURNS, 3)
    calls = config.scaled(20, 3)
    repeat = config.scaled(3, 1)
    base_url = config.canned_url + "/v1"
    image = make_photo(2400, 1800)
    conversation = _conversation(image, turns)
    single = _conversation(image, 1)
    models = c.langchain_models(base_url)
    ours = models[c.LC_OURS].model
    rows: list[list[str]] = []
    raw: dict[str, Any] = {}

    with tempfile.TemporaryDirectory(prefix="nemovlm-bench-") as tmp:
        photo = Path(tmp) / "photo.jpg"
        photo.write_bytes(image)
        from langchain_core.messages import HumanMessage

        from langchain_nemovlm import ChatNemoVLM

        from_disk = ChatNemoVLM(model=c.MODEL, base_url=base_url, allowed_media_dirs=[tmp])
        disk_message = [
            HumanMessage(
                content=[
                    {"type": "text", "text": c.PROMPT},
                    {"type": "image", "url": photo.as_uri()},
                ]
            )
        ]
        cases: list[tuple[str, str, Callable[[], object], int]] = [
            (f"one call, the image in {turns} turns", "turns",
             lambda: ours.invoke(conversation), 1),
            (f"{calls} calls, image bytes (base64)", "calls_bytes",
             lambda: ours.invoke(single), calls),
            (f"{calls} calls, image file on disk", "calls_disk",
             lambda: from_disk.invoke(disk_message), calls),
        ]  # fmt: skip
        try:
            for label, key, call, times in cases:
                for cached in (True, False):
                    set_cache_limits() if cached else set_cache_limits(max_entries=0)
                    clear_cache()
                    start = time.process_time()
                    for _ in range(times):
                        call()
                    seconds = time.process_time() - start
                    info = cache_info()
                    raw[f"{key}_{'cached' if cached else 'uncached'}"] = {
                        "decodes": info.decodes, "hits": info.hits, "misses": info.misses,
                        "cpu_s": seconds,
                    }  # fmt: skip
                    rows.append(
                        [
                            label,
                            "on" if cached else "off",
                            str(info.decodes),
                            f"{info.hits} / {info.misses}",
                            ms(seconds),
                        ]
                    )
        finally:
            set_cache_limits()
            clear_cache()

    result.tables.append(
        Table(
            ["case", "cache", "decodes", "hits / misses", "CPU time, all calls"],
            rows,
            "2400x1800 JPEG (over the 12-tile budget: decode, resize, re-encode)",
        )
    )
    limits = cache_info()
    result.targets += [
        Target(
            f"Same image in {turns} turns of one conversation: decoded once",
            f"{raw['turns_cached']['decodes']} decode(s)",
            raw["turns_cached"]["decodes"] == 1,
        ),
        Target(
            f"Same image in {calls} calls (bytes, and a file): decoded once each",
            f"{raw['calls_bytes_cached']['decodes']} + {raw['calls_disk_cached']['decodes']}",
            raw["calls_bytes_cached"]["decodes"] == 1 and raw["calls_disk_cached"]["decodes"] == 1,
        ),
        Target(
            "The cache is bounded",
            f"{limits.max_entries} entries, {limits.max_bytes // 2**20} MiB",
            limits.max_entries > 0 and limits.max_bytes > 0,
        ),
    ]

    # What each extra turn costs once the image is prepared, beside a peer that sends
    # the data URL through untouched.
    per_turn: dict[str, float] = {}
    for name in (c.LC_OURS, c.LC_MINIMAL, c.LC_OPENAI):
        if name not in models:
            continue
        invoke = models[name].model.invoke
        _, one = _cpu(functools.partial(invoke, single), repeat)
        _, many = _cpu(functools.partial(invoke, conversation), repeat)
        per_turn[name] = (many - one) / (turns - 1)
    result.tables.append(
        Table(
            ["client", "CPU per extra turn carrying the image (warm)"],
            [[name, ms(seconds)] for name, seconds in per_turn.items()],
            f"(t({turns} turns) - t(1 turn)) / {turns - 1}; the image is {len(image):,} bytes",
        )
    )
    result.bars.append(
        Bars(
            f"Repeated media: CPU time for one call with the image in {turns} turns",
            "ms",
            {
                "cache on (ours)": raw["turns_cached"]["cpu_s"] * 1e3,
                "cache off": raw["turns_uncached"]["cpu_s"] * 1e3,
            },  # fmt: skip
            {"cache on (ours)": "ours"},
        )
    )
    result.notes.append(
        "Decodes count images decoded by prepare_media; a hit reuses the prepared bytes "
        "(and their base64 form) without decoding, resizing or re-encoding."
    )
    raw["per_turn_cpu_s"] = per_turn
    result.raw = raw
    result.seconds = time.perf_counter() - started
    return result
