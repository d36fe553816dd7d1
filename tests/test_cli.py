"""The ``nemovlm`` command: ``models``, ``demo``, ``ask``, ``emulator`` and its errors.

``models``, ``demo`` and ``ask`` run in-process through ``main(argv)`` (the same code the
console script calls); ``ask`` talks to the session's NIM emulator over HTTP.
``emulator`` blocks, so it runs as a subprocess that a client then reaches.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from nemovlm.cli import main
from nemovlm.emulator.fal import start_fal_emulator
from nemovlm.errors import UnsupportedInputError
from nemovlm.samples import make_chart, make_mp4

FIVE_MODELS = (
    "nvidia/llama-3.1-nemotron-nano-vl-8b-v1",
    "nvidia/nemotron-nano-12b-v2-vl",
    "google/diffusiongemma-26b-a4b-it",
    "fal-ai/nemotron-diffusion-vlm",
    "nvidia/nemotron-3-nano-omni/video",
)
NANO_12B = "nvidia/nemotron-nano-12b-v2-vl"


@pytest.fixture
def chart_png(tmp_path: Path) -> Path:
    path = tmp_path / "chart.png"
    path.write_bytes(make_chart([3, 7, 4, 9], ["Q1", "Q2", "Q3", "Q4"], title="Revenue"))
    return path


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


# --- models ---------------------------------------------------------------------------


def test_models_prints_a_table_row_for_each_of_the_five_models(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(["models"], capsys)
    assert code == 0
    first_cells = [line.split()[0] for line in out.splitlines()[2:] if line.strip()]
    assert sorted(first_cells) == sorted(FIVE_MODELS)


def test_models_table_says_which_service_serves_each_model(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, out, _ = run(["models"], capsys)
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines()[2:] if line.strip()}
    assert rows["fal-ai/nemotron-diffusion-vlm"] == "FAL"
    assert rows[NANO_12B] == "NIM"


# --- demo -----------------------------------------------------------------------------


def test_demo_runs_every_model_against_the_emulator(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["demo"], capsys)
    assert code == 0, err
    assert "EMULATOR" in out.splitlines()[0]
    for model in FIVE_MODELS:
        assert f"[nemovlm emulator] {model}" in out, model


# --- ask ------------------------------------------------------------------------------


def test_ask_streams_the_answer_about_a_local_image(
    nim_url: str, chart_png: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["ask", NANO_12B, "What is in it?", "--image", str(chart_png), "--base-url", nim_url]
    code, out, _ = run(argv, capsys)
    assert code == 0
    assert "image 1: png 640x400" in out
    assert "text: What is in it?" in out


def test_ask_sends_a_local_video_with_the_question(
    nim_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(make_mp4(duration_s=3.0, width=320, height=240, fps=4.0))
    argv = ["ask", NANO_12B, "What happens?", "--video", str(clip), "--base-url", nim_url]
    code, out, _ = run(argv, capsys)
    assert code == 0
    assert "video 1: mp4 3.0s 320x240" in out


def test_ask_prints_token_counts_after_the_answer(
    nim_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out, _ = run(["ask", NANO_12B, "Hello", "--base-url", nim_url], capsys)
    assert re.search(r"\[\d+ in / \d+ out tokens\]", out)


def test_ask_show_reasoning_prints_nano_12b_reasoning_before_the_answer(
    nim_url: str, chart_png: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["ask", NANO_12B, "Best quarter?", "--image", str(chart_png), "--base-url", nim_url]
    code, out, _ = run([*argv, "--reasoning", "--show-reasoning"], capsys)
    assert code == 0
    assert out.index("Reasoning (emulated)") < out.index("[nemovlm emulator]")


def test_ask_keeps_the_reasoning_out_unless_asked_to_show_it(
    nim_url: str, chart_png: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["ask", NANO_12B, "Best quarter?", "--image", str(chart_png), "--base-url", nim_url]
    code, out, _ = run([*argv, "--reasoning"], capsys)
    assert code == 0
    assert "Reasoning (emulated)" not in out
    assert "[nemovlm emulator]" in out


def test_ask_sends_a_fal_model_to_fal(
    chart_png: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAL_KEY", "emulator-key")
    with start_fal_emulator() as fal:
        restore = fal.aim_fal_client()
        try:
            argv = ["ask", "fal-ai/nemotron-diffusion-vlm", "Describe", "--image", str(chart_png)]
            code, out, err = run(argv, capsys)
        finally:
            restore()
    assert code == 0, err
    assert "fal-ai/nemotron-diffusion-vlm saw png 640x400" in out
    assert "est. $" in out


# --- errors ---------------------------------------------------------------------------


def test_an_error_is_one_line_without_a_traceback(
    nim_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["ask", NANO_12B, "q", "--image", "/no/such/chart.png", "--base-url", nim_url]
    code, out, err = run(argv, capsys)
    assert code == 1
    assert err.count("\n") == 1
    assert err.startswith("nemovlm: error: UnsupportedInputError: No such file to send")
    assert "--debug" in err
    assert "Traceback" not in err + out


def test_debug_lets_the_error_through_with_its_traceback(nim_url: str) -> None:
    argv = ["--debug", "ask", NANO_12B, "q", "--image", "/no/such/chart.png"]
    with pytest.raises(UnsupportedInputError, match="No such file to send"):
        main([*argv, "--base-url", nim_url])


def test_a_request_the_model_refuses_is_reported_in_one_line(
    nim_url: str, chart_png: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = "nvidia/llama-3.1-nemotron-nano-vl-8b-v1"
    argv = ["ask", model, "q", "--image", str(chart_png), "--reasoning", "--base-url", nim_url]
    code, _, err = run(argv, capsys)
    assert code == 1
    assert err.count("\n") == 1
    assert "UnsupportedInputError" in err and "cannot switch reasoning" in err


def test_ask_refuses_a_video_passed_as_an_image_before_sending(
    nim_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clip = tmp_path / "clip.png"  # the name says image; the bytes are an MP4
    clip.write_bytes(make_mp4(duration_s=1.0, width=160, height=120, fps=4.0))
    argv = ["ask", NANO_12B, "q", "--image", str(clip), "--base-url", nim_url]
    code, _, err = run(argv, capsys)
    assert code == 1
    assert "is a video, but was given as an image: pass it as video" in err


def test_no_command_prints_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run([], capsys)
    assert code == 2
    assert "demo" in out and "emulator" in out and "ask" in out


# --- emulator -------------------------------------------------------------------------


@pytest.fixture
def emulator_command() -> Iterator[tuple[subprocess.Popen[str], dict[str, str]]]:
    """``nemovlm emulator`` on free ports; yields the process and its ``export`` lines."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "nemovlm.cli", "emulator", "--port", "0", "--fal-port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    exports: dict[str, str] = {}
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            found = re.match(r"\s*export (\w+)=(\S+)", line)
            if found:
                exports[found.group(1)] = found.group(2)
            if line.startswith("Ctrl-C stops it."):
                break
        else:
            pytest.fail(
                f"nemovlm emulator ended early: {proc.stderr.read() if proc.stderr else ''}"
            )
        yield proc, exports
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def test_emulator_command_prints_a_base_url_the_openai_sdk_can_use(
    emulator_command: tuple[subprocess.Popen[str], dict[str, str]],
) -> None:
    _, exports = emulator_command
    client = openai.OpenAI(base_url=exports["NVIDIA_BASE_URL"], api_key="not-used")
    completion = client.chat.completions.create(
        model=NANO_12B, messages=[{"role": "user", "content": "Hello from the SDK"}]
    )
    answer = completion.choices[0].message.content or ""
    assert answer.startswith(f"[nemovlm emulator] {NANO_12B}")
    assert "Hello from the SDK" in answer


def test_emulator_command_prints_what_a_fal_client_process_needs(
    emulator_command: tuple[subprocess.Popen[str], dict[str, str]], chart_png: Path
) -> None:
    _, exports = emulator_command
    assert {"FAL_QUEUE_RUN_HOST", "FAL_RUN_HOST", "SSL_CERT_FILE", "FAL_KEY"} <= set(exports)
    script = (
        "import base64, sys, fal_client\n"
        "png = base64.b64encode(open(sys.argv[1], 'rb').read()).decode()\n"
        "result = fal_client.SyncClient().subscribe('fal-ai/nemotron-diffusion-vlm', arguments={\n"
        "    'prompt': 'Hi', 'image_url': 'data:image/png;base64,' + png})\n"
        "print(result['output'])\n"
    )
    fresh = subprocess.run(
        [sys.executable, "-c", script, str(chart_png)],
        env={**os.environ, **exports},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert fresh.stdout.startswith("[nemovlm emulator] fal-ai/nemotron-diffusion-vlm saw png")


def test_ask_after_the_emulators_exports_uploads_a_large_video_to_it(
    emulator_command: tuple[subprocess.Popen[str], dict[str, str]], tmp_path: Path
) -> None:
    _, exports = emulator_command
    clip = tmp_path / "big.mp4"
    # Over fal's 1 MB inline limit, so it must go up through the (emulated) CDN.
    clip.write_bytes(make_mp4(duration_s=10.0, width=640, height=360, fps=30.0) + b"\0" * 1_200_000)
    done = subprocess.run(
        [sys.executable, "-m", "nemovlm.cli", "ask", "nvidia/nemotron-3-nano-omni/video",
         "--video", str(clip), "What happens?"],
        env={**os.environ, **exports}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "nvidia/nemotron-3-nano-omni/video saw mp4 640x360" in done.stdout


def test_emulator_command_stops_cleanly_on_ctrl_c(
    emulator_command: tuple[subprocess.Popen[str], dict[str, str]],
) -> None:
    proc, exports = emulator_command
    # One answered request first, so the interrupt lands while it serves (not mid-print).
    openai.OpenAI(base_url=exports["NVIDIA_BASE_URL"], api_key="x").models.list()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "Traceback" not in err
