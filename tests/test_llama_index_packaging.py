"""Where users find the classes: the ``llama_index.llms.nemovlm`` path and the entry points."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from pathlib import Path

import pytest

import llama_index_nemovlm

REPO = Path(__file__).resolve().parents[1]


def test_llama_index_llms_nemovlm_reexports_the_same_classes() -> None:
    from llama_index.llms.nemovlm import (
        NemoFal,
        NemoFalMultiModal,
        NemoVLM,
        NemoVLMMultiModal,
    )

    assert NemoVLM is llama_index_nemovlm.NemoVLM
    assert NemoFal is llama_index_nemovlm.NemoFal
    assert NemoVLMMultiModal is llama_index_nemovlm.NemoVLMMultiModal
    assert NemoFalMultiModal is llama_index_nemovlm.NemoFalMultiModal


def test_our_import_path_leaves_llama_index_core_importable() -> None:
    core = importlib.import_module("llama_index.core")
    ours = importlib.import_module("llama_index.llms.nemovlm")
    assert core.__file__ and ours.__file__
    assert Path(ours.__file__).parent != Path(core.__file__).parent


@pytest.mark.parametrize("package", ["llama_index", "llama_index/llms"])
def test_the_shared_namespaces_have_no_init_of_ours(package: str) -> None:
    # An __init__.py here would shadow llama-index-core's llama_index package.
    assert not (REPO / package / "__init__.py").exists()


@pytest.mark.parametrize(
    ("group", "name", "target"),
    [
        ("llama_index.llms", "nemovlm", "llama_index_nemovlm:NemoVLM"),
        ("llama_index.llms", "nemovlm-fal", "llama_index_nemovlm:NemoFal"),
        ("langchain.chat_models", "nemovlm", "langchain_nemovlm:ChatNemoVLM"),
        ("langchain.chat_models", "nemovlm-fal", "langchain_nemovlm:ChatNemoFal"),
    ],
)
def test_entry_points_resolve_to_the_classes(group: str, name: str, target: str) -> None:
    (entry,) = [e for e in entry_points(group=group) if e.name == name]
    assert entry.value == target
    loaded = entry.load()
    assert f"{loaded.__module__.split('.')[0]}:{loaded.__name__}" == target


def test_the_built_wheel_carries_the_import_path_and_the_entry_points(tmp_path: Path) -> None:
    import subprocess
    import sys
    import zipfile

    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(REPO)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    wheel = next(tmp_path.glob("nemovlm-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "llama_index/llms/nemovlm/__init__.py" in names
    assert "llama_index/__init__.py" not in names and "llama_index/llms/__init__.py" not in names
    assert {
        "nemovlm/py.typed",
        "langchain_nemovlm/py.typed",
        "llama_index_nemovlm/py.typed",
    } <= set(names)
    meta = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(meta).decode()
    assert "nemovlm = llama_index_nemovlm:NemoVLM" in text
    assert "nemovlm = langchain_nemovlm:ChatNemoVLM" in text
    assert "nemovlm = nemovlm.cli:main" in text
