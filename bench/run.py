"""Run the bench: ``python -m bench`` (or ``python bench/run.py``) from the repository root.

Starts the canned server once, runs each scenario with every client in this one
process, prints the targets table, and writes ``bench/results/results.md``,
``results.png`` and ``results.raw.json``. See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` and the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.canned import start_canned_server
from bench.clients import missing_peers
from bench.config import Config
from bench.report import (
    Bars,
    ScenarioResult,
    Table,
    Target,
    plot,
    render_markdown,
    summary_table,
    versions,
    write_raw,
)

SCENARIOS = (
    "overhead",
    "large_photos",
    "repeated_media",
    "concurrency",
    "streaming",
    "import_time",
    "fal_queue",
    "media_parallel",
    "hosted_assets",
)
RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent
LLAMA_INDEX_PEERS = ("llama-index-llms-openai-like", "llama-index-llms-nvidia")
LLAMA_INDEX_SCENARIOS = ("overhead", "concurrency", "streaming", "import_time")
"""The scenarios with LlamaIndex clients in them."""
INSTALL_HINT = """\
The bench compares nemovlm with its peers, and these are not installed: {missing}.

The LangChain peers install with openai 3.x; the LlamaIndex peers
(llama-index-llms-openai under them) hold openai below 3, so they get a venv of their
own, which the bench runs for the LlamaIndex rows:

    python3 -m venv /tmp/benchvenv
    /tmp/benchvenv/bin/pip install -e '.[all,bench]'
    python3 -m venv /tmp/benchvenv-li
    /tmp/benchvenv-li/bin/pip install -e '.[all,bench-llama-index]'
    /tmp/benchvenv/bin/python -m bench --llama-index-python /tmp/benchvenv-li/bin/python

or run without them (their rows read "not installed"): python -m bench --allow-missing
"""


def run_scenarios(config: Config, names: list[str]) -> list[ScenarioResult]:
    """Run the named scenarios in order; a scenario that crashes becomes a missed target."""
    results = []
    for name in names:
        print(f"-- {name} ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        module = importlib.import_module(f"bench.scenarios.{name}")
        try:
            result: ScenarioResult = module.run(config)
        except Exception as exc:  # the report should still come out, saying what broke
            traceback.print_exc()
            result = ScenarioResult(name, name)
            result.targets.append(Target(f"{name} ran", "crashed", False, repr(exc)[:200]))
        result.seconds = time.perf_counter() - started
        print(f"   {name}: {result.seconds:.1f} s", file=sys.stderr, flush=True)
        results.append(result)
    return results


def write_results(results: list[ScenarioResult], out: Path, settings: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "results.md", out / "results.raw.json"]
    written[0].write_text(render_markdown(results, settings))
    write_raw(results, written[1])
    if plot(results, out / "results.png"):
        written.append(out / "results.png")
    return written


def _llama_index_part(
    python: str, names: list[str], rounds: int, quick: bool
) -> tuple[list[ScenarioResult], dict[str, str]]:
    """The LlamaIndex rows, measured by ``python`` (the LlamaIndex peers' venv)."""
    wanted = [n for n in names if n in LLAMA_INDEX_SCENARIOS]
    if not wanted:
        return [], {}
    with tempfile.TemporaryDirectory(prefix="nemovlm-bench-") as tmp:
        out = Path(tmp) / "llama_index.json"
        command = [python, "-m", "bench", "--frameworks", "llama_index", "--allow-missing"]
        command += ["--json-out", str(out), "--rounds", str(rounds), *(["--quick"] * quick)]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        print(f"-- LlamaIndex rows in {python} ...", file=sys.stderr, flush=True)
        subprocess.run([*command, *wanted], cwd=ROOT, env=env, check=True)
        data = json.loads(out.read_text())
    results = []
    for item in data["results"]:
        item["tables"] = [Table(**t) for t in item["tables"]]
        item["targets"] = [Target(**t) for t in item["targets"]]
        item["bars"] = [Bars(**b) for b in item["bars"]]
        results.append(ScenarioResult(**item))
    return results, data["versions"]


def _merge(
    results: list[ScenarioResult], others: list[ScenarioResult], where: str
) -> list[ScenarioResult]:
    by_key = {r.key: r for r in results}
    for other in others:
        mine = by_key.get(other.key)
        if mine is None:
            results.append(other)
            continue
        for table in other.tables:
            table.title = f"{table.title} ({where})"
        mine.tables += other.tables
        for target in other.targets:
            if not target.text.startswith("LlamaIndex"):
                target.text = f"LlamaIndex venv: {target.text}"
        mine.targets += other.targets
        mine.bars += other.bars
        mine.notes += [n for n in other.notes if n not in mine.notes]
        mine.raw = {"main": mine.raw, "llama_index": other.raw}
        mine.seconds += other.seconds
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "scenarios",
        nargs="*",
        metavar="SCENARIO",
        help=f"any of {', '.join(SCENARIOS)} (default: all)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of interleaved calls")
    parser.add_argument("--quick", action="store_true", help="tiny run: checks the harness")
    parser.add_argument("--allow-missing", action="store_true", help="run without the peers")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    parser.add_argument(
        "--llama-index-python",
        default=os.environ.get("BENCH_LLAMA_INDEX_PYTHON"),
        help="python of a venv with the LlamaIndex peers (they need openai<3); it measures "
        "the LlamaIndex rows (default: $BENCH_LLAMA_INDEX_PYTHON)",
    )
    parser.add_argument("--frameworks", default="langchain,llama_index", help=argparse.SUPPRESS)
    parser.add_argument("--json-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = [name for name in args.scenarios if name not in SCENARIOS]
    if unknown:
        parser.error(
            f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}"
        )
    names = list(args.scenarios) or list(SCENARIOS)
    frameworks = tuple(args.frameworks.split(","))

    missing = missing_peers()
    companion = args.llama_index_python if any(p in missing for p in LLAMA_INDEX_PEERS) else None
    if companion:
        frameworks = tuple(f for f in frameworks if f != "llama_index")
        missing = [p for p in missing if p not in LLAMA_INDEX_PEERS]
    if missing and not args.allow_missing:
        print(INSTALL_HINT.format(missing=", ".join(missing)), file=sys.stderr)
        return 2

    started = time.perf_counter()
    with start_canned_server() as canned_url:
        config = Config(
            canned_url=canned_url, rounds=args.rounds, quick=args.quick, frameworks=frameworks
        )
        results = run_scenarios(config, names)
    if args.json_out:  # the LlamaIndex part of another process's run
        data = {"results": [asdict(r) for r in results], "versions": versions()}
        args.json_out.write_text(json.dumps(data, default=str))
        return 0
    settings = f"rounds={args.rounds}{', quick' if args.quick else ''}"
    if companion:
        others, their_versions = _llama_index_part(companion, names, args.rounds, args.quick)
        where = f"LlamaIndex venv: openai {their_versions.get('openai', '?')}"
        results = _merge(results, others, where)
        settings += (
            "; LlamaIndex rows from the LlamaIndex peers' venv ("
            + ", ".join(f"{k} {v}" for k, v in their_versions.items() if v != "not installed")
            + ")"
        )
    elapsed = time.perf_counter() - started
    settings += f"; {elapsed:.0f} s in all"
    if missing:
        settings += f"; not installed: {', '.join(missing)}"
    written = write_results(results, args.out, settings)

    table = summary_table(results)
    width = [max(len(r[i]) for r in [table.columns, *table.rows]) for i in range(3)]
    for row in [table.columns, *table.rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, width)) + "  " + row[3])
    print(f"\n{elapsed:.0f} s; wrote " + ", ".join(str(p) for p in written))
    missed = [t for r in results for t in r.targets if t.met is False]
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
