"""Scenario 1: per-call overhead of a sequential ``invoke`` / ``chat`` with one small image.

Every client sends the same conversation (a prompt and a 64x48 PNG as a base64 data
URL) to the canned server, which answers at once. All clients of both frameworks,
and the raw SDK, are interleaved call by call. A client's figures are its median CPU
time per call (what the client itself spends: the targets are judged on it) and
median wall time per call; "over raw SDK" is the CPU time the wrapper adds.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from bench import clients as c
from bench.config import Config
from bench.report import Bars, ScenarioResult, Table, Target
from bench.timing import interleave, median, us
from nemovlm.samples import make_image

LIMIT_VS_MINIMAL = 1.10


def run(config: Config) -> ScenarioResult:
    started = time.perf_counter()
    base_url = config.canned_url + "/v1"
    image = make_image(64, 48, text="hi")
    lc_input = c.langchain_input(image)
    li_input = c.llama_index_input(image)
    calls: dict[str, Callable[[], object]] = {c.RAW: c.raw_call(base_url, c.openai_messages(image))}
    kinds = {c.RAW: "floor"}
    if config.wants("langchain"):
        for name, entry in c.langchain_models(base_url).items():
            calls[name] = _bind(entry.model.invoke, lc_input)
            kinds[name] = entry.kind
    if config.wants("llama_index"):
        for name, entry in c.llama_index_models(base_url).items():
            calls[name] = _bind(entry.model.chat, li_input)
            kinds[name] = entry.kind

    times = interleave(
        calls,
        rounds=config.rounds,
        per_round=config.scaled(60, 2),
        warmup=config.scaled(10, 1),
    )
    medians = {name: median(t.cpu) for name, t in times.items()}
    walls = {name: median(t.wall) for name, t in times.items()}
    raw = medians[c.RAW]

    result = ScenarioResult("overhead", "1. Per-call overhead (invoke / chat, one small image)")
    for framework, ours, minimal, peers in (
        ("LangChain", c.LC_OURS, c.LC_MINIMAL, (c.LC_OPENAI, c.LC_NVIDIA)),
        ("LlamaIndex", c.LI_OURS, c.LI_MINIMAL, (c.LI_OPENAI_LIKE, c.LI_NVIDIA)),
    ):
        if ours not in medians:  # measured in another process (bench.run)
            continue
        names = [c.RAW, minimal, ours, *peers]
        rows = []
        for name in names:
            if name not in medians:
                rows.append([name, "not installed", "", "", ""])
                continue
            rows.append(
                [
                    name,
                    us(medians[name]),
                    us(medians[name] - raw),
                    f"{medians[ours] / medians[name]:.2f}",
                    us(walls[name]),
                ]
            )
        result.tables.append(
            Table(
                ["client", "CPU per call", "over raw SDK", "ours / this", "wall per call"],
                rows,
                f"{framework}: {len(times[ours].cpu)} calls each, medians",
            )
        )
        vs_minimal = medians[ours] / medians[minimal]
        result.targets.append(
            Target(
                f"{framework}: ours <= {LIMIT_VS_MINIMAL:.2f}x the minimal model over the raw SDK",
                f"{vs_minimal:.2f}x",
                vs_minimal <= LIMIT_VS_MINIMAL,
                "" if vs_minimal <= LIMIT_VS_MINIMAL else _missed_reason(medians, ours, minimal),
            )
        )
        for peer in peers:
            if peer not in medians:
                result.targets.append(
                    Target(f"{framework}: ours below {peer}", "-", None, "peer not installed")
                )
                continue
            r = medians[ours] / medians[peer]
            result.targets.append(Target(f"{framework}: ours below {peer}", f"{r:.2f}x", r < 1.0))
        result.bars.append(
            Bars(
                f"{framework}: client CPU time per call (canned server)",
                "µs per call (median)",
                {n: medians[n] * 1e6 for n in names if n in medians},
                {n: kinds[n] for n in names if n in kinds},
            )
        )
    result.notes.append(
        "Canned server in its own process answers in tens of µs; all clients run in one "
        "process, interleaved call by call in a shuffled order."
    )
    result.notes.append(
        "Wall time per call includes waiting for the server process and for a core; on a "
        "busy machine it swings by milliseconds, so the targets are judged on CPU time."
    )
    result.raw = {
        "median_cpu_s": medians,
        "median_wall_s": walls,
        "calls": {n: len(t.cpu) for n, t in times.items()},
    }
    result.seconds = time.perf_counter() - started
    return result


def _bind(fn: Callable[[object], object], arg: object) -> Callable[[], object]:
    return lambda: fn(arg)


def _missed_reason(medians: dict[str, float], ours: str, minimal: str) -> str:
    extra = (medians[ours] - medians[minimal]) * 1e6
    return f"ours costs {extra:,.0f} µs more per call than the minimal model"
