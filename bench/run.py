"""Run the bench: ``python -m bench`` (or ``python bench/run.py``) from the repository root.

Starts the canned server once, runs each scenario with every client in this one
process, prints the targets table, and writes ``bench/results/results.md``,
``results.png`` and ``results.raw.json``. See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` and the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.canned import start_canned_server
from bench.clients import missing_peers
from bench.config import Config
from bench.report import ScenarioResult, Target, plot, render_markdown, summary_table, write_raw

SCENARIOS = (
    "overhead",
    "large_photos",
    "repeated_media",
    "concurrency",
    "streaming",
    "import_time",
    "fal_queue",
)
RESULTS = Path(__file__).resolve().parent / "results"
INSTALL_HINT = """\
The bench compares nemovlm with its peers, and these are not installed: {missing}.

Install the bench extra into a venv of its own (llama-index-llms-openai needs
openai<3, so keep it apart from a venv with openai 3.x):

    python3 -m venv /tmp/benchvenv
    /tmp/benchvenv/bin/pip install -e '.[all,bench]'
    /tmp/benchvenv/bin/python -m bench

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
    args = parser.parse_args(argv)
    unknown = [name for name in args.scenarios if name not in SCENARIOS]
    if unknown:
        parser.error(
            f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}"
        )
    names = list(args.scenarios) or list(SCENARIOS)

    missing = missing_peers()
    if missing and not args.allow_missing:
        print(INSTALL_HINT.format(missing=", ".join(missing)), file=sys.stderr)
        return 2

    started = time.perf_counter()
    with start_canned_server() as canned_url:
        config = Config(canned_url=canned_url, rounds=args.rounds, quick=args.quick)
        results = run_scenarios(config, names)
    elapsed = time.perf_counter() - started
    settings = f"rounds={args.rounds}{', quick' if args.quick else ''}, {elapsed:.0f} s in all"
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
