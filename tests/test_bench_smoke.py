"""The bench harness runs (``python -m bench``, as bench/README.md says); no timings asserted.

The bench compares clients side by side, so it lives outside the test suite; this only
checks that its one command still starts the canned server, runs a scenario for one
round with every installed client and writes its report.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_one_quick_round_of_the_overhead_scenario_writes_its_table(tmp_path: Path) -> None:
    done = _bench("overhead", "--quick", "--rounds", "1", "--allow-missing", "--out", str(tmp_path))

    assert done.returncode in (0, 1), done.stderr  # 1: a target missed, in a 1-round run
    report = (tmp_path / "results.md").read_text()
    assert "## 1. Per-call overhead" in report
    assert "| ChatNemoVLM (ours) |" in report
    assert "| NemoVLM (ours) |" in report
    assert "| raw openai SDK |" in report
    assert (tmp_path / "results.raw.json").is_file()


def test_without_the_peers_the_bench_says_what_to_install() -> None:
    sys.path.insert(0, str(ROOT))
    try:
        from bench.clients import missing_peers
    finally:
        sys.path.remove(str(ROOT))
    if not missing_peers():
        pytest.skip("the bench extra is installed here")

    done = _bench("overhead")

    assert done.returncode == 2
    assert "pip install -e '.[all,bench]'" in done.stderr
