"""Scenario 5: streaming - per-chunk overhead, and parsing linear in the stream length.

Per-chunk overhead: each client streams a reply of ``SHORT`` and of ``LONG`` content
chunks from the canned server (the chunk count is in the base URL), interleaved; the
per-chunk cost is the difference of the two median CPU times divided by the
difference in chunks, so the per-call cost cancels out.

Linear parsing: ``nemovlm.pipeline.ReplyProcessor`` (reasoning split, prompt-protocol
tool calls) and ``assemble_reply`` (native tool-call fragments) are fed streams of N
and 4N chunks; the time ratio is ~4 when parsing is linear (a re-scan of the buffer
per chunk would make it ~16).
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable
from typing import Any

from bench import clients as c
from bench.config import Config
from bench.report import Bars, ScenarioResult, Table, Target
from bench.timing import interleave, median, us
from nemovlm.messages import Delta, ToolCallChunk, ToolSpec
from nemovlm.pipeline import ReplyProcessor, assemble_reply
from nemovlm.samples import make_image

SHORT = 10
LINEAR_LIMIT = 5.0
"""Time ratio for 4x the chunks that still counts as linear (quadratic gives ~16)."""


def run(config: Config) -> ScenarioResult:
    started = time.perf_counter()
    result = ScenarioResult("streaming", "5. Streaming")
    _per_chunk(config, result)
    if config.wants("langchain"):  # framework-neutral: once, in the main process
        _linear_parse(config, result)
    result.seconds = time.perf_counter() - started
    return result


# --- per-chunk overhead -----------------------------------------------------------------


def _per_chunk(config: Config, result: ScenarioResult) -> None:
    long = config.scaled(210, 30)
    image = make_image(64, 48, text="hi")
    lc_input, li_input = c.langchain_input(image), c.llama_index_input(image)
    calls: dict[str, Callable[[], object]] = {}
    kinds: dict[str, str] = {c.RAW: "floor"}
    for n in (SHORT, long):
        base_url = f"{config.canned_url}/n{n}/v1"
        calls[f"{c.RAW}|{n}"] = _raw_stream(base_url, c.openai_messages(image))
        if config.wants("langchain"):
            for name, entry in c.langchain_models(base_url).items():
                calls[f"{name}|{n}"] = _drain(entry.model.stream, lc_input)
                kinds[name] = entry.kind
        if config.wants("llama_index"):
            for name, entry in c.llama_index_models(base_url).items():
                calls[f"{name}|{n}"] = _drain(entry.model.stream_chat, li_input)
                kinds[name] = entry.kind
    times = interleave(
        calls, rounds=config.rounds, per_round=config.scaled(8, 1), warmup=config.scaled(3, 1)
    )
    cpu = {key: median(t.cpu) for key, t in times.items()}
    per_chunk = {
        name: (cpu[f"{name}|{long}"] - cpu[f"{name}|{SHORT}"]) / (long - SHORT)
        for name in kinds
        if f"{name}|{long}" in cpu
    }
    for framework, ours, peers in (
        ("LangChain", c.LC_OURS, (c.LC_MINIMAL, c.LC_OPENAI, c.LC_NVIDIA)),
        ("LlamaIndex", c.LI_OURS, (c.LI_MINIMAL, c.LI_OPENAI_LIKE, c.LI_NVIDIA)),
    ):
        if ours not in per_chunk:  # measured in another process (bench.run)
            continue
        names = [c.RAW, ours, *peers]
        rows = []
        for name in names:
            if name not in per_chunk:
                rows.append([name, "not installed", "", "", ""])
                continue
            rows.append(
                [
                    name,
                    us(per_chunk[name]),
                    f"{per_chunk[ours] / per_chunk[name]:.2f}",
                    us(cpu[f"{name}|{SHORT}"]),
                    us(cpu[f"{name}|{long}"]),
                ]
            )
        result.tables.append(
            Table(
                [
                    "client",
                    "CPU per chunk",
                    "ours / this",
                    f"{SHORT}-chunk reply",
                    f"{long}-chunk reply",
                ],
                rows,
                f"{framework} streaming, median CPU time",
            )
        )
        result.bars.append(
            Bars(
                f"{framework}: client CPU time per streamed chunk",
                "µs per chunk",
                {n: per_chunk[n] * 1e6 for n in names if n in per_chunk},
                {n: kinds[n] for n in names if n in kinds},
            )
        )
    peer = c.LC_OPENAI
    if not config.wants("langchain"):
        pass
    elif peer in per_chunk:
        r = per_chunk[c.LC_OURS] / per_chunk[peer]
        result.targets.append(
            Target("Per-chunk overhead at most ChatOpenAI's", f"{r:.2f}x", r <= 1.0)
        )
    else:
        result.targets.append(
            Target("Per-chunk overhead at most ChatOpenAI's", "-", None, "peer not installed")
        )
    result.raw["per_chunk_cpu_s"] = per_chunk
    result.raw["median_cpu_s"] = cpu


def _drain(stream: Callable[[Any], Any], arg: object) -> Callable[[], object]:
    def call() -> object:
        n = 0
        for _ in stream(arg):
            n += 1
        return n

    return call


def _raw_stream(base_url: str, messages: Any) -> Callable[[], object]:
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="not-used")

    def call() -> object:
        stream = client.chat.completions.create(
            model=c.MODEL,
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
        )
        return sum(1 for _ in stream)

    return call


# --- linear parsing ------------------------------------------------------------------------

_TOOL = ToolSpec(
    "write_note", "Write a note.", {"type": "object", "properties": {"text": {"type": "string"}}}
)


def _pieces(text: str, size: int = 4) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def _workloads(n: int) -> dict[str, tuple[Callable[[], ReplyProcessor], list[Delta]]]:
    words = "tok " * n  # n chunks of 4 characters
    note = json.dumps({"tool_calls": [{"name": "write_note", "arguments": {"text": words}}]})
    return {
        "<think> reasoning, then the answer": (
            lambda: ReplyProcessor(expect_reasoning=True),
            [Delta(text=p) for p in _pieces(f"<think>{words}</think>{words}")],
        ),
        "closing </think> only": (
            lambda: ReplyProcessor(expect_reasoning=True),
            [Delta(text=p) for p in _pieces(f"{words}</think>{words}")],
        ),
        "reasoning expected, none sent": (
            lambda: ReplyProcessor(expect_reasoning=True),
            [Delta(text=p) for p in _pieces(words + words)],
        ),
        "reasoning field (reasoning_content)": (
            lambda: ReplyProcessor(expect_reasoning=True),
            [Delta(reasoning=p) for p in _pieces(words)] + [Delta(text=p) for p in _pieces(words)],
        ),
        "prompt-protocol tool call (JSON held)": (
            lambda: ReplyProcessor(tools=(_TOOL,), prompt_tools=True),
            [Delta(text=p) for p in _pieces(note)],
        ),
        "native tool-call argument fragments": (
            ReplyProcessor,
            [Delta(tool_call_chunks=[ToolCallChunk(0, "call_0", "write_note", "")])]
            + [Delta(tool_call_chunks=[ToolCallChunk(0, None, None, p)]) for p in _pieces(note)],
        ),
    }


def _parse_once(make: Callable[[], ReplyProcessor], deltas: list[Delta]) -> float:
    # The collector's passes grow with every object alive, the parser's own work or not;
    # paused, what is timed is the parser.
    gc.collect()
    gc.disable()
    try:
        start = time.process_time()
        processor = make()
        out = [processor.feed(d) for d in deltas]
        out.append(processor.finish())
        assemble_reply(out)
        return time.process_time() - start
    finally:
        gc.enable()


def _linear_parse(config: Config, result: ScenarioResult) -> None:
    n = config.scaled(4000, 200)
    repeat = config.scaled(5, 1)
    small, large = _workloads(n), _workloads(4 * n)
    rows = []
    worst = 0.0
    ratios: dict[str, float] = {}
    for name in small:
        # N and 4N alternate, so a busy spell on the machine hits both; the fastest run
        # of each is the one least disturbed by anything else.
        runs = [(_parse_once(*small[name]), _parse_once(*large[name])) for _ in range(repeat)]
        t1, t4 = min(r[0] for r in runs), min(r[1] for r in runs)
        ratio = t4 / t1
        ratios[name] = ratio
        worst = max(worst, ratio)
        rows.append(
            [
                name,
                str(len(small[name][1])),
                us(t1),
                str(len(large[name][1])),
                us(t4),
                f"{ratio:.1f}",
            ]
        )
    result.tables.append(
        Table(
            ["stream", "chunks (N)", "parse N", "chunks (4N)", "parse 4N", "ratio (~4 = linear)"],
            rows,
            f"ReplyProcessor.feed per chunk + finish + assemble_reply: fastest of {repeat} "
            "alternating runs, CPU time, garbage collector paused while timing",
        )
    )
    result.targets.append(
        Target(
            f"Reasoning and tool-call parsing linear: 4x chunks -> <= {LINEAR_LIMIT:.0f}x time",
            f"worst {worst:.1f}x",
            worst <= LINEAR_LIMIT,
            "" if worst <= LINEAR_LIMIT else "a parser re-scans its buffer",
        )
    )
    result.raw["parse_ratio"] = ratios
