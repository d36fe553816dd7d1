"""Scenario 6: import time of ``langchain_nemovlm`` and ``llama_index_nemovlm``.

Each measurement is a fresh interpreter that times ``import X`` with a wall clock
around the import statement only (interpreter start-up excluded); modules are
interleaved run by run, and a module's figure is the median. The framework module
that holds the base class every integration subclasses (``BaseChatModel``,
``FunctionCallingLLM``) is measured too: the floor every integration pays.
"""

from __future__ import annotations

import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.config import Config
from bench.report import Bars, ScenarioResult, Table, Target
from bench.timing import ms

_ROOT = Path(__file__).resolve().parents[2]
GROUPS = (
    (
        "LangChain",
        "langchain_nemovlm",
        "langchain_openai",
        ("langchain_nvidia_ai_endpoints",),
        "langchain_core.language_models.chat_models",
    ),
    (
        "LlamaIndex",
        "llama_index_nemovlm",
        "llama_index.llms.nvidia",
        ("llama_index.llms.openai_like",),
        "llama_index.core.llms.function_calling",
    ),
)
_SNIPPET = "import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"


def _import_seconds(module: str) -> float | None:
    done = subprocess.run(
        [sys.executable, "-c", _SNIPPET.format(module=module)],
        capture_output=True,
        text=True,
        cwd=_ROOT,
        check=False,
    )
    if done.returncode != 0:
        return None
    return float(done.stdout.strip().splitlines()[-1])


def run(config: Config) -> ScenarioResult:
    started = time.perf_counter()
    repeats = config.scaled(max(5, config.rounds), 1)
    groups = [g for g in GROUPS if config.wants(g[0].lower().replace("llamaindex", "llama_index"))]
    modules = [m for g in groups for m in (g[1], g[2], *g[3], g[4])]
    samples: dict[str, list[float]] = {m: [] for m in modules}
    missing: set[str] = set()
    rng = random.Random(6)
    for _ in range(repeats):
        order = [m for m in modules if m not in missing]
        rng.shuffle(order)
        for module in order:
            seconds = _import_seconds(module)
            if seconds is None:
                missing.add(module)
            else:
                samples[module].append(seconds)
    medians = {m: statistics.median(v) for m, v in samples.items() if v and m not in missing}

    result = ScenarioResult("import_time", "6. Import time")
    for framework, ours, peer, others, floor in groups:
        rows = []
        for module in (floor, ours, peer, *others):
            if module not in medians:
                rows.append([f"`{module}`", "not installed", "", ""])
                continue
            ratio = f"{medians[ours] / medians[module]:.2f}" if ours in medians else ""
            above = ms(medians[module] - medians[floor]) if floor in medians else ""
            rows.append([f"`{module}`", ms(medians[module]), above, ratio])
        result.tables.append(
            Table(
                ["module", "import (median)", "above the base class's module", "ours / this"],
                rows,
                f"{framework}: fresh interpreter per import, {repeats} runs each",
            )
        )
        if peer in medians and ours in medians:
            r = medians[ours] / medians[peer]
            result.targets.append(
                Target(f"`import {ours}` below `import {peer}`", f"{r:.2f}x", r < 1.0)
            )
        else:
            result.targets.append(
                Target(f"`import {ours}` below `import {peer}`", "-", None, "not installed")
            )
        kinds = {ours: "ours", floor: "floor"}
        result.bars.append(
            Bars(
                f"{framework}: import time (fresh interpreter)",
                "ms (median)",
                {m: medians[m] * 1e3 for m in (floor, ours, peer, *others) if m in medians},
                kinds,
            )
        )
    result.notes.append(
        "The openai SDK is imported on the first request, not at import: a model instance "
        "needs none of it, and `import openai` costs more than the rest of nemovlm."
    )
    result.raw = {"median_s": medians, "runs": {m: len(v) for m, v in samples.items()}}
    result.seconds = time.perf_counter() - started
    return result
