"""``pip install nemovlm`` with neither framework gives a working CLI: the core never
imports LangChain or LlamaIndex.

The wheel is built offline from this tree and installed (``--no-deps --no-index``)
into a fresh venv whose other packages are this venv's, minus every LangChain,
LangGraph and LlamaIndex package and minus the editable nemovlm (a folder of symlinks
on the new venv's path). The CLI then runs there against the session's emulator.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest

from nemovlm.samples import make_chart

REPO = Path(__file__).resolve().parents[1]
FRAMEWORKS = ("langchain", "langgraph", "llama_index", "llama_agents")
OURS = ("nemovlm", "__editable__", "_nemovlm")
NANO_12B = "nvidia/nemotron-nano-12b-v2-vl"


def _left_out(name: str) -> bool:
    return name.lower().startswith(FRAMEWORKS + OURS)


@pytest.fixture(scope="module")
def core_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The ``bin`` folder of a venv holding the wheel and no framework."""
    root = tmp_path_factory.mktemp("core-only")
    dist = root / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(dist), str(REPO)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    wheel = next(dist.glob("nemovlm-*.whl"))

    env_dir = root / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    shared = root / "shared"
    shared.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not _left_out(entry.name):
            (shared / entry.name).symlink_to(entry)
    new_site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True, env=_clean_env(),
    ).stdout.strip()  # fmt: skip
    Path(new_site, "shared-packages.pth").write_text(f"{shared}\n")
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
        capture_output=True, text=True, timeout=300, check=False, env=_clean_env(),
    )  # fmt: skip
    assert install.returncode == 0, install.stderr
    yield env_dir / "bin"


def _clean_env() -> dict[str, str]:
    """This process's environment without what would put the source tree on the path."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def _run(bin_dir: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    # Run from the venv, not the source tree (``python -c`` puts the cwd on the path).
    return subprocess.run(
        [str(bin_dir / argv[0]), *argv[1:]],
        capture_output=True, text=True, timeout=120, check=False, env=_clean_env(),
        cwd=bin_dir.parent,
    )  # fmt: skip


def test_the_venv_has_no_framework(core_venv: Path) -> None:
    for module in ("langchain_core", "llama_index.core"):
        done = _run(core_venv, "python", "-c", f"import {module}")
        assert done.returncode != 0, module
        assert "ModuleNotFoundError" in done.stderr


def test_the_venv_runs_nemovlm_from_the_wheel(core_venv: Path) -> None:
    done = _run(core_venv, "python", "-c", "import nemovlm.cli; print(nemovlm.cli.__file__)")
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).is_relative_to(core_venv.parent)


def test_nemovlm_models_runs_without_a_framework(core_venv: Path) -> None:
    done = _run(core_venv, "nemovlm", "models")
    assert done.returncode == 0, done.stderr
    assert NANO_12B in done.stdout
    assert "fal-ai/nemotron-diffusion-vlm" in done.stdout


def test_nemovlm_ask_answers_from_the_emulator_without_a_framework(
    core_venv: Path, nim_url: str, tmp_path: Path
) -> None:
    chart = tmp_path / "chart.png"
    chart.write_bytes(make_chart([3, 7, 4, 9], ["Q1", "Q2", "Q3", "Q4"]))
    done = _run(
        core_venv, "nemovlm", "ask", NANO_12B, "What is in it?", "--image", str(chart),
        "--base-url", nim_url,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"[nemovlm emulator] {NANO_12B}" in done.stdout
    assert "image 1: png 640x400" in done.stdout


def test_nemovlm_batch_answers_a_folder_without_a_framework(
    core_venv: Path, nim_url: str, tmp_path: Path
) -> None:
    folder = tmp_path / "charts"
    folder.mkdir()
    for i in range(3):
        (folder / f"chart{i}.png").write_bytes(make_chart([i, 2, 3], ["a", "b", "c"]))
    out = tmp_path / "out.jsonl"
    done = _run(
        core_venv, "nemovlm", "batch", NANO_12B, "Caption it.", str(folder), "--out", str(out),
        "--base-url", nim_url,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert len(out.read_text().splitlines()) == 3
    assert "3 done, 0 failed" in done.stdout


def test_nemovlm_demo_runs_every_model_without_a_framework(core_venv: Path) -> None:
    done = _run(core_venv, "nemovlm", "demo")
    assert done.returncode == 0, done.stderr
    assert "EMULATOR" in done.stdout.splitlines()[0]
    for model in (NANO_12B, "nvidia/nemotron-3-nano-omni/video", "fal-ai/nemotron-diffusion-vlm"):
        assert f"[nemovlm emulator] {model}" in done.stdout, model
    assert "tool call: get_weather({'city': 'Oslo'})" in done.stdout
