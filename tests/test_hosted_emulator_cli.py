"""``nemovlm emulator`` (and ``--hosted``) as a user runs it: its banner's exports work.

The CLI runs in a subprocess, as from a shell; what its banner prints is then used as a
user would (exported into a cookbook's environment, or this process's), and the calls
go where the banner said. Also: fal uploads follow the exports, and a failed upload
says it was the upload.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hosted_catalog import PHOTO, b64
from langchain_core.messages import HumanMessage

from langchain_nemovlm import ChatNemoFal, ChatNemoVLM
from nemovlm.emulator.fal import use_fal_emulator
from nemovlm.errors import RequestError
from nemovlm.samples import make_photo

ROOT = Path(__file__).resolve().parent.parent
KEYS = ("NVIDIA_API_KEY", "NVIDIA_BASE_URL", "NVCF_ASSETS_URL", "FAL_KEY", "FAL_KEY_ID",
        "FAL_KEY_SECRET", "FAL_RUN_HOST", "FAL_QUEUE_RUN_HOST")  # fmt: skip


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in KEYS}
    return {**env, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}


class _Emulator:
    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nemovlm.cli", "emulator", "--port", "0", "--fal-port", "0",
             *args],
            cwd=ROOT,
            env=_clean_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        lines = []
        for line in self.proc.stdout:
            lines.append(line)
            if line.startswith("Ctrl-C stops it."):
                break
        self.banner = "".join(lines)
        self.exports = dict(re.findall(r"export (\w+)=(\S+)", self.banner))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.communicate()


@pytest.fixture(scope="module")
def hosted_emulator() -> Iterator[_Emulator]:
    emulator = _Emulator("--hosted")
    yield emulator
    emulator.stop()


def test_the_hosted_banner_exports_the_assets_url_and_asks_for_hosted_true(
    hosted_emulator: _Emulator,
) -> None:
    exports = hosted_emulator.exports
    assert exports["NVCF_ASSETS_URL"] == exports["NVIDIA_BASE_URL"].removesuffix("/v1") + (
        "/v2/nvcf/assets"
    )
    assert "hosted=True" in hosted_emulator.banner


def test_the_hosted_banners_exports_make_photos_go_up_as_assets(
    hosted_emulator: _Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in hosted_emulator.exports.items():
        monkeypatch.setenv(name, value)
    llm = ChatNemoVLM(model="nvidia/nemotron-nano-12b-v2-vl", hosted=True)
    block = {"type": "image", "base64": b64(PHOTO), "mime_type": "image/jpeg"}
    answer = llm.invoke([HumanMessage(content=[{"type": "text", "text": "Read it."}, block])])
    assert "(NVCF asset)" in answer.content


def test_after_the_banners_exports_a_cookbook_uploads_to_the_fal_emulator(
    hosted_emulator: _Emulator,
) -> None:
    env = {**_clean_env(), **hosted_emulator.exports}
    result = subprocess.run(
        [sys.executable, str(ROOT / "cookbooks" / "01_quickstart.py")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "from your exports (queue and uploads)" in result.stdout.splitlines()[1]
    assert "(uploaded file clip.mp4)" in result.stdout


def test_a_failed_fal_upload_says_it_was_the_upload(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAL_KEY", "emulator-key")
    big = make_photo(2600, 1950)  # over 1 MB: goes up to fal's storage
    assert len(big) > 1_000_000
    with use_fal_emulator() as emulator:
        emulator.state.refuse_uploads = True
        llm = ChatNemoFal(model="fal-ai/nemotron-diffusion-vlm")
        block = {"type": "image", "base64": b64(big), "mime_type": "image/jpeg"}
        with pytest.raises(RequestError, match=r"Uploading .* to fal storage .* failed"):
            llm.invoke([HumanMessage(content=[{"type": "text", "text": "What?"}, block])])
        assert emulator.state.received() == []
