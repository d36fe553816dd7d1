"""What a scenario hands back, and how results become ``results.md``, ``results.png``
and ``results.raw.json``.

Every scenario returns a ``ScenarioResult``: tables (already formatted), targets
(the issue's bar, the measured figure, met or not and why), bars for the plot, and
raw numbers. ``render_markdown`` writes the report; ``plot`` draws one panel per
bar group with matplotlib when it is installed.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

OURS_COLOUR = "#76b900"
PEER_COLOUR = "#8c8c8c"
FLOOR_COLOUR = "#4a6fa5"

_VERSIONS = (
    "openai",
    "httpx",
    "langchain-core",
    "llama-index-core",
    "fal-client",
    "langchain-openai",
    "langchain-nvidia-ai-endpoints",
    "llama-index-llms-openai-like",
    "llama-index-llms-nvidia",
)


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]]
    title: str = ""


@dataclass
class Target:
    text: str
    """The bar, as the issue states it."""
    measured: str
    met: bool | None
    """``None``: not measured (a peer is not installed)."""
    why: str = ""
    """The reason, when missed or not measured."""


@dataclass
class Bars:
    """One plot panel: a value per client; ``kinds`` colours ours / floor / peer."""

    title: str
    unit: str
    values: dict[str, float]
    kinds: dict[str, str] = field(default_factory=dict)


@dataclass
class ScenarioResult:
    key: str
    title: str
    tables: list[Table] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    bars: list[Bars] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def _markdown_table(table: Table) -> list[str]:
    lines = []
    if table.title:
        lines += [f"*{table.title}*", ""]
    lines.append("| " + " | ".join(table.columns) + " |")
    lines.append("|" + "|".join("---" for _ in table.columns) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in table.rows]
    return lines + [""]


def _verdict(met: bool | None) -> str:
    return {True: "met", False: "**missed**", None: "not measured"}[met]


def versions() -> dict[str, str]:
    found = {}
    for name in _VERSIONS:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def machine() -> str:
    try:
        load = "load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())
    except OSError:
        load = "load unknown"
    return f"Python {platform.python_version()}, {os.cpu_count()} CPUs, {load}"


def summary_table(results: list[ScenarioResult]) -> Table:
    rows = []
    for result in results:
        for target in result.targets:
            verdict = _verdict(target.met)
            if target.why:
                verdict += f" ({target.why})"
            rows.append([result.title, target.text, target.measured, verdict])
    return Table(["scenario", "target", "measured", "verdict"], rows)


def render_markdown(results: list[ScenarioResult], settings: str) -> str:
    lines = [
        "# nemovlm bench results",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M')}; {machine()}; {settings}.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()) + ".",
        "",
        "## Targets",
        "",
    ]
    lines += _markdown_table(summary_table(results))
    for result in results:
        lines += [f"## {result.title}", ""]
        for table in result.tables:
            lines += _markdown_table(table)
        lines += [f"- {note}" for note in result.notes]
        lines += ["", f"({result.seconds:.0f} s)", ""]
    return "\n".join(lines)


def write_raw(results: list[ScenarioResult], path: Path) -> None:
    data = {
        "machine": machine(),
        "versions": versions(),
        "scenarios": {r.key: {"raw": r.raw, "targets": [asdict(t) for t in r.targets]}
                      for r in results},
    }  # fmt: skip
    path.write_text(json.dumps(data, indent=2, default=str))


def plot(results: list[ScenarioResult], path: Path) -> bool:
    """One horizontal bar panel per ``Bars``; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    panels = [b for r in results for b in r.bars]
    if not panels:
        return False
    cols = 2
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(13, 2.6 * rows + 0.6), squeeze=False)
    colours = {"ours": OURS_COLOUR, "floor": FLOOR_COLOUR}
    for ax, bars in zip(axes.flat, panels):
        names = list(bars.values)
        values = [bars.values[n] for n in names]
        ax.barh(names, values, color=[colours.get(bars.kinds.get(n, ""), PEER_COLOUR)
                                      for n in names])  # fmt: skip
        ax.invert_yaxis()
        ax.set_title(bars.title, fontsize=10)
        ax.set_xlabel(bars.unit, fontsize=8)
        ax.tick_params(labelsize=8)
        top = max(values) if values else 0
        for y, value in enumerate(values):
            label = f"{value:,.0f}" if value >= 100 else f"{value:.3g}"
            ax.text(value + top * 0.01, y, label, va="center", fontsize=7)
        ax.set_xlim(0, top * 1.18 if top else 1)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle("nemovlm vs peers (green: nemovlm; blue: raw SDK / minimal floor)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
