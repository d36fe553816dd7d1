"""``nemovlm batch`` and ``nemovlm.batch.run``: every input once, resumable, failures as
rows, progress, summary and cost, structured output, reasoning, flat memory.

Every job talks over HTTP to an emulated NIM of this module (one that keeps a long
request log, read back from ``/emulator/requests``) or to the fal emulator; URL inputs
come from a small file server on loopback, which the emulator fetches.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import gc
import io
import json
import os
import pty
import signal
import struct
import subprocess
import sys
import termios
import threading
import tracemalloc
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import loopback
import pytest
from hosted_catalog import KEY, PHOTO, PHOTO_B, Catalog, asset_ids, catalog, catalog_server

from nemovlm.batch import BatchInputWarning, BatchSummary, connect, run
from nemovlm.cli import main
from nemovlm.emulator import create_nim_app
from nemovlm.emulator.fal import start_fal_emulator
from nemovlm.emulator.server import RunningServer
from nemovlm.errors import UnsupportedInputError
from nemovlm.samples import make_chart, make_image, make_mp4

__all__ = ["catalog", "catalog_server"]  # fixtures, imported for pytest

NANO_12B = "nvidia/nemotron-nano-12b-v2-vl"
LLAMA_8B = "nvidia/llama-3.1-nemotron-nano-vl-8b-v1"
DIFFUSION_VLM = "fal-ai/nemotron-diffusion-vlm"


# --- the peers ----------------------------------------------------------------------------


class Emulator:
    """The module's emulated NIM and what it received."""

    def __init__(self, server: RunningServer) -> None:
        self.server = server
        self.base_url = server.url + "/v1"

    def clear(self) -> None:
        loopback.http.delete(f"{self.server.url}/emulator/requests").raise_for_status()

    def bodies(self) -> list[dict[str, Any]]:
        records = loopback.http.get(f"{self.server.url}/emulator/requests").json()
        return [r["body"] for r in records if r["path"].endswith("/chat/completions")]

    def prompts(self) -> list[str]:
        """The text of the user message of each chat request, in arrival order."""
        texts = []
        for body in self.bodies():
            content = body["messages"][-1]["content"]
            texts.append(" ".join(p["text"] for p in content if p["type"] == "text"))
        return texts


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    with RunningServer(create_nim_app(recorded_requests=5000)) as server:
        yield Emulator(server)


@pytest.fixture
def nim(emulator: Emulator) -> Emulator:
    emulator.clear()
    return emulator


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A loopback file server: its base URL and the folder it serves."""
    root = tmp_path_factory.mktemp("web")
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


# --- helpers ------------------------------------------------------------------------------


def png(seed: int = 0) -> bytes:
    return make_image(64, 48, text=str(seed), color=(40 * seed % 256, 90, 160))


def rows_of(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.read_text().splitlines()]


def by_id(out: Path) -> dict[str, dict[str, Any]]:
    rows = rows_of(out)
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), f"an id is in {out.name} more than once: {ids}"
    return {r["id"]: r for r in rows}


def manifest(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def job(nim: Emulator, inputs: list[Any], out: Path, **settings: Any) -> BatchSummary:
    settings.setdefault("progress", False)
    return run(NANO_12B, "Caption it.", inputs, out, base_url=nim.base_url, **settings)


def captions(tmp_path: Path, n: int) -> Path:
    """A manifest of ``n`` rows, each asking its own numbered prompt about one image."""
    (tmp_path / "tile.png").write_bytes(png())
    rows = [{"id": f"r{i}", "input": "tile.png", "prompt": f"caption #{i}"} for i in range(n)]
    return manifest(tmp_path / "captions.jsonl", rows)


# --- every input once -----------------------------------------------------------------


def test_every_kind_of_input_is_answered_exactly_once(
    nim: Emulator, web: tuple[str, Path], tmp_path: Path
) -> None:
    base, served = web
    (served / "remote.png").write_bytes(png(1))
    photos = tmp_path / "photos"
    (photos / "nested").mkdir(parents=True)
    (photos / "a.png").write_bytes(png(2))
    (photos / "nested" / "clip.mp4").write_bytes(make_mp4(duration_s=2.0, width=320, height=240))
    single = tmp_path / "single.jpg"
    single.write_bytes(make_image(64, 48, fmt="JPEG"))
    jsonl = manifest(tmp_path / "m.jsonl", [{"id": "j1", "input": "photos/a.png", "prompt": "p1"}])
    csv_file = tmp_path / "m.csv"
    csv_file.write_text("id,image,prompt\nc1,single.jpg,p2\n")
    out = tmp_path / "out.jsonl"

    summary = job(nim, [str(photos), f"{base}/remote.png", str(single), jsonl, csv_file], out)

    rows = by_id(out)
    expected = {
        str(photos / "a.png"), str(photos / "nested" / "clip.mp4"), f"{base}/remote.png",
        str(single), "j1", "c1",
    }  # fmt: skip
    assert set(rows) == expected
    assert (summary.done, summary.failed) == (6, 0)
    assert len(nim.bodies()) == 6
    assert "image 1: png 64x48" in rows[f"{base}/remote.png"]["answer"]  # fetched by URL
    assert "video 1: mp4 2.0s 320x240" in rows[str(photos / "nested" / "clip.mp4")]["answer"]
    assert rows["j1"]["prompt"] == "p1" and "text: p1" in rows["j1"]["answer"]
    assert "jpeg 64x48" in rows["c1"]["answer"]


def test_a_folder_is_walked_and_its_media_found_by_content(nim: Emulator, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    (folder / "deep" / "deeper").mkdir(parents=True)
    (folder / "deep" / "deeper" / "photo.dat").write_bytes(png(3))  # a PNG, by its bytes
    (folder / "notes.png").write_text("not an image, whatever the name says")
    (folder / "readme.txt").write_text("hello")
    out = tmp_path / "out.jsonl"

    summary = job(nim, [folder], out)

    assert list(by_id(out)) == [str(folder / "deep" / "deeper" / "photo.dat")]
    assert summary.not_media == 2
    assert "2 files in the given folders are not images or videos" in str(summary)


def test_rows_with_the_same_id_are_sent_once_and_counted(nim: Emulator, tmp_path: Path) -> None:
    (tmp_path / "tile.png").write_bytes(png())
    rows = [{"id": "same", "input": "tile.png", "prompt": f"caption #{i}"} for i in range(3)]
    out = tmp_path / "out.jsonl"

    summary = job(nim, [manifest(tmp_path / "m.jsonl", rows)], out)

    assert list(by_id(out)) == ["same"]
    assert nim.prompts() == ["caption #0"]
    assert summary.duplicates == 2
    assert "give each row its own id" in str(summary)


def test_each_row_holds_input_id_answer_tokens_model_and_timing(
    nim: Emulator, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    job(nim, [captions(tmp_path, 1)], out)
    (row,) = rows_of(out)
    assert row["id"] == "r0" and row["input"] == "tile.png" and row["model"] == NANO_12B
    assert row["answer"].startswith(f"[nemovlm emulator] {NANO_12B}")
    assert row["input_tokens"] > 0 and row["output_tokens"] > 0
    assert row["seconds"] >= 0 and row["finished_at"].endswith("+00:00")
    assert row["response_id"].startswith("chatcmpl-emu-")
    assert row["error"] is None


# --- resume -------------------------------------------------------------------------------


def test_a_resumed_run_sends_only_the_rows_missing_from_the_output(
    nim: Emulator, tmp_path: Path
) -> None:
    rows = captions(tmp_path, 6)
    out = tmp_path / "out.jsonl"
    job(nim, [rows], out)
    # As if the first run had been killed mid-write: three rows, then half of one.
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:3]) + lines[3][:25])
    kept = {json.loads(line)["id"] for line in lines[:3]}
    nim.clear()

    summary = job(nim, [rows], out)

    missing = {f"r{i}" for i in range(6)} - kept
    assert sorted(nim.prompts()) == sorted(f"caption #{r[1:]}" for r in missing)
    assert set(by_id(out)) == {f"r{i}" for i in range(6)}
    assert (summary.done, summary.skipped) == (3, 3)


def test_running_a_finished_job_again_sends_nothing(nim: Emulator, tmp_path: Path) -> None:
    rows = captions(tmp_path, 3)
    out = tmp_path / "out.jsonl"
    job(nim, [rows], out)
    nim.clear()

    summary = job(nim, [rows], out)

    assert nim.bodies() == []
    assert (summary.done, summary.skipped) == (0, 3)
    assert len(rows_of(out)) == 3


def test_overwrite_starts_over(nim: Emulator, tmp_path: Path) -> None:
    rows = captions(tmp_path, 3)
    out = tmp_path / "out.jsonl"
    job(nim, [rows], out)
    nim.clear()

    summary = job(nim, [rows], out, overwrite=True)

    assert len(nim.bodies()) == 3
    assert summary.done == 3 and summary.skipped == 0
    assert len(rows_of(out)) == 3


# --- failures -----------------------------------------------------------------------------


def test_a_failed_call_is_a_row_with_status_and_request_id_and_the_rest_go_on(
    nim: Emulator, tmp_path: Path
) -> None:
    good = tmp_path / "good.png"
    good.write_bytes(png())
    # The emulator fetches loopback URLs; this one is not there, so NIM answers 400.
    missing = f"{nim.server.url}/no-such-image.png"
    out = tmp_path / "out.jsonl"

    summary = job(nim, [good, missing], out, max_retries=0)

    rows = by_id(out)
    error = rows[missing]["error"]
    assert error["status"] == 400 and error["request_id"] and error["sent"] is True
    assert "status 404" in error["message"]
    assert rows[str(good)]["error"] is None
    assert (summary.done, summary.failed) == (1, 1)


def test_bad_inputs_are_refused_on_their_rows_before_any_request(
    nim: Emulator, tmp_path: Path
) -> None:
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG but not really")
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(make_mp4(duration_s=2.0, width=320, height=240))
    good = tmp_path / "good.png"
    good.write_bytes(png())
    out = tmp_path / "out.jsonl"

    summary = run(LLAMA_8B, "Caption it.", [corrupt, clip, good], out,
                  base_url=nim.base_url, progress=False)  # fmt: skip

    rows = by_id(out)
    assert "not an image or video" in rows[str(corrupt)]["error"]["message"]
    assert "video" in rows[str(clip)]["error"]["message"]  # Llama 8B takes images only
    for bad in (corrupt, clip):
        assert rows[str(bad)]["error"]["type"] == "UnsupportedInputError"
        assert rows[str(bad)]["error"]["sent"] is False
    assert len(nim.bodies()) == 1  # only the good image went out
    assert (summary.done, summary.failed) == (1, 2)


def test_running_again_tries_the_failed_rows_again(nim: Emulator, tmp_path: Path) -> None:
    fixable = tmp_path / "later.png"
    fixable.write_bytes(b"not yet an image")
    good = tmp_path / "good.png"
    good.write_bytes(png())
    out = tmp_path / "out.jsonl"
    assert job(nim, [fixable, good], out).failed == 1
    fixable.write_bytes(png(5))
    nim.clear()

    summary = job(nim, [fixable, good], out)

    assert len(nim.bodies()) == 1
    assert (summary.done, summary.failed, summary.skipped, summary.retried) == (1, 0, 1, 1)
    assert all(row["error"] is None for row in by_id(out).values())


def test_the_command_exits_3_when_a_row_failed_and_0_when_all_were_answered(
    nim: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good.png"
    good.write_bytes(png())
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    argv = ["batch", NANO_12B, "Caption it.", "--base-url", nim.base_url]

    assert main([*argv, str(good), "--out", str(tmp_path / "a.jsonl")]) == 0
    assert main([*argv, str(good), str(bad), "--out", str(tmp_path / "b.jsonl")]) == 3
    out = capsys.readouterr().out
    assert "1 done, 1 failed" in out


def test_a_setting_the_model_cannot_take_stops_the_job_before_any_row(
    nim: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good.png"
    good.write_bytes(png())
    out = tmp_path / "out.jsonl"
    argv = ["batch", LLAMA_8B, "q", str(good), "--out", str(out), "--reasoning"]

    assert main([*argv, "--base-url", nim.base_url]) == 1

    assert "cannot switch reasoning" in capsys.readouterr().err
    assert not out.exists()
    assert nim.bodies() == []


# --- progress and summary ----------------------------------------------------------------


def test_progress_when_piped_is_plain_lines_without_carriage_returns(
    nim: Emulator, tmp_path: Path
) -> None:
    log = io.StringIO()
    job(nim, [captions(tmp_path, 3)], tmp_path / "out.jsonl", progress=None,
        progress_file=log, progress_interval=0)  # fmt: skip
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert [line.split("%")[1].split()[0] for line in lines] == ["1/3", "2/3", "3/3"]
    assert lines[-1].startswith("nemovlm batch: 100%")
    assert "done 3, failed 0, skipped 0" in lines[-1]


def test_progress_on_a_terminal_is_a_bar_with_rate_and_eta(nim: Emulator, tmp_path: Path) -> None:
    rows = captions(tmp_path, 4)
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    argv = [sys.executable, "-m", "nemovlm.cli", "batch", NANO_12B, "q", str(rows),
            "--out", str(tmp_path / "out.jsonl"), "--base-url", nim.base_url]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=follower, text=True)
    os.close(follower)
    screen = b""
    with contextlib.suppress(OSError):  # EIO once the command has exited
        while chunk := os.read(leader, 4096):
            screen += chunk
    os.close(leader)
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0
    text = screen.decode()
    assert "\r" in text  # redrawn in place
    assert "4/4" in text and "row/s" in text and "<00:00" in text  # count, rate, ETA
    assert "█" in text
    assert "4 done, 0 failed" in stdout


def test_the_summary_counts_rows_and_tokens_and_says_when_there_is_no_price(
    nim: Emulator, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    summary = job(nim, [captions(tmp_path, 3)], out)
    rows = rows_of(out)
    assert summary.input_tokens == sum(r["input_tokens"] for r in rows) > 0
    assert summary.output_tokens == sum(r["output_tokens"] for r in rows) > 0
    text = str(summary)
    assert text.startswith(f"nemovlm batch {NANO_12B}: 3 done, 0 failed, 0 skipped")
    assert f"tokens: {summary.input_tokens:,} in / {summary.output_tokens:,} out" in text
    assert "no published price" in text and summary.cost_usd is None


def test_a_fal_job_estimates_its_cost_from_the_published_price(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAL_KEY", "emulator-key")
    (tmp_path / "tile.png").write_bytes(png())
    rows = [{"id": f"f{i}", "input": "tile.png"} for i in range(3)]
    out = tmp_path / "out.jsonl"
    with start_fal_emulator() as fal:
        restore = fal.aim_fal_client()
        try:
            summary = run(DIFFUSION_VLM, "Caption it.", [manifest(tmp_path / "m.jsonl", rows)],
                          out, progress=False, max_tokens=64)  # fmt: skip
        finally:
            restore()
    answered = rows_of(out)
    assert [r["error"] for r in answered] == [None] * 3
    assert all(f"{DIFFUSION_VLM} saw png 64x48" in r["answer"] for r in answered)
    assert summary.cost_usd == pytest.approx(sum(r["cost_usd"] for r in answered))
    assert summary.cost_usd > 0
    assert f"estimated cost ${summary.cost_usd:.4f}" in str(summary)


# --- settings -----------------------------------------------------------------------------


def test_json_schema_asks_for_structured_output_and_rows_hold_the_parsed_object(
    nim: Emulator, tmp_path: Path
) -> None:
    schema = {
        "type": "object",
        "properties": {"title": {"type": "string"}, "bars": {"type": "integer"}},
        "required": ["title", "bars"],
    }
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps(schema))
    chart = tmp_path / "chart.png"
    chart.write_bytes(make_chart([3, 7, 4], ["a", "b", "c"]))
    out = tmp_path / "out.jsonl"

    code = main(["batch", NANO_12B, "Read the chart.", str(chart), "--out", str(out),
                 "--json-schema", str(schema_file), "--base-url", nim.base_url])  # fmt: skip

    assert code == 0
    (row,) = rows_of(out)
    assert set(row["parsed"]) == {"title", "bars"} and isinstance(row["parsed"]["bars"], int)
    assert json.loads(row["answer"]) == row["parsed"]
    sent = nim.bodies()[-1]["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["schema"] == schema


def test_reasoning_switches_the_model_and_rows_hold_the_trace(
    nim: Emulator, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    job(nim, [captions(tmp_path, 2)], out, reasoning=True)
    assert all("/think" in b["messages"][0]["content"] for b in nim.bodies())
    for row in rows_of(out):
        assert row["reasoning"].startswith("Reasoning (emulated)")
        assert "<think>" not in row["answer"]


def test_manifest_columns_the_job_does_not_use_are_kept_under_meta_with_a_warning(
    nim: Emulator, tmp_path: Path
) -> None:
    (tmp_path / "tile.png").write_bytes(png())
    (tmp_path / "m.csv").write_text("input,shelf,owner\ntile.png,B7,ana\n")
    out = tmp_path / "out.jsonl"
    with pytest.warns(BatchInputWarning, match=r"\['owner', 'shelf'\]"):
        job(nim, [tmp_path / "m.csv"], out)
    (row,) = rows_of(out)
    assert row["meta"] == {"shelf": "B7", "owner": "ana"}


def test_a_malformed_manifest_line_is_a_failed_row_not_a_crash(
    nim: Emulator, tmp_path: Path
) -> None:
    (tmp_path / "tile.png").write_bytes(png())
    m = tmp_path / "m.jsonl"
    m.write_text('{"id": "ok", "input": "tile.png"}\n{"id": "broken", "input": \n')
    out = tmp_path / "out.jsonl"
    summary = job(nim, [m], out)
    rows = by_id(out)
    assert rows["ok"]["error"] is None
    assert "not a JSON line" in rows["m.jsonl:2"]["error"]["message"]
    assert summary.failed == 1


def test_a_dry_run_checks_every_row_and_sends_nothing(nim: Emulator, tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    good.write_bytes(png())
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    out = tmp_path / "out.jsonl"
    log = io.StringIO()

    summary = job(nim, [good, bad], out, dry_run=True, progress_file=log, progress=None)

    assert nim.bodies() == [] and not out.exists()
    assert (summary.done, summary.failed) == (1, 1)
    assert f"refused {bad}:" in log.getvalue()
    assert str(summary).startswith(f"nemovlm batch {NANO_12B}: 1 would send, 1 failed")


def test_concurrency_below_one_is_refused(nim: Emulator, tmp_path: Path) -> None:
    with pytest.raises(UnsupportedInputError, match="concurrency must be >= 1"):
        job(nim, [tmp_path], tmp_path / "out.jsonl", concurrency=0)


async def test_run_works_from_inside_a_running_event_loop(nim: Emulator, tmp_path: Path) -> None:
    # A notebook cell: an event loop is already running in this thread.
    summary = job(nim, [captions(tmp_path, 2)], tmp_path / "out.jsonl")
    assert summary.done == 2


# --- memory -------------------------------------------------------------------------------


def _peak_traced_bytes(nim: Emulator, folder: Path, rows: int, answered: int) -> int:
    """Peak memory (tracemalloc) of a job over a ``rows``-row manifest whose output
    already answers ``answered`` of them (as an earlier, stopped run left it)."""
    folder.mkdir()
    (folder / "tile.png").write_bytes(png())
    with (folder / "m.jsonl").open("w") as m, (folder / "out.jsonl").open("w") as out:
        for i in range(rows):
            m.write(f'{{"id": "row-{i:06d}", "input": "tile.png", "prompt": "caption #{i}"}}\n')
            if i < answered:
                out.write(f'{{"id": "row-{i:06d}", "answer": "earlier run", "error": null}}\n')
    nim.clear()
    gc.collect()
    tracemalloc.start()
    try:
        summary = run(NANO_12B, None, [folder / "m.jsonl"], folder / "out.jsonl",
                      base_url=nim.base_url, progress=False)  # fmt: skip
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (summary.done, summary.skipped) == (rows - answered, answered)
    assert len(nim.bodies()) == rows - answered
    return peak


def test_a_100000_row_manifest_is_streamed_with_flat_memory(nim: Emulator, tmp_path: Path) -> None:
    # Both jobs send the same 100 rows to the emulator; the large one also streams
    # 99,900 manifest rows and 99,900 rows of earlier output through the resume check.
    # Holding the rows (or their ids) in memory would cost several MB more.
    _peak_traced_bytes(nim, tmp_path / "warm-up", rows=10, answered=0)  # imports, clients
    small = _peak_traced_bytes(nim, tmp_path / "small", rows=1_000, answered=900)
    large = _peak_traced_bytes(nim, tmp_path / "large", rows=100_000, answered=99_900)
    assert large / small < 1.5, (small, large)


# --- Ctrl-C -------------------------------------------------------------------------------


class _Gate(SimpleHTTPRequestHandler):
    """Serves an image only once the test opens the gate: calls about it stay in flight."""

    gate = threading.Event()
    image = b""

    def do_GET(self) -> None:
        self.gate.wait(timeout=120)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(self.image)))
        self.end_headers()
        self.wfile.write(self.image)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_ctrl_c_keeps_every_finished_row_and_the_rerun_sends_the_rest(
    nim: Emulator, tmp_path: Path
) -> None:
    _Gate.image = png(7)
    _Gate.gate.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Gate)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    gated = f"http://127.0.0.1:{server.server_address[1]}"
    (tmp_path / "tile.png").write_bytes(png())
    items = [{"id": f"now{i}", "input": "tile.png", "prompt": f"now #{i}"} for i in range(5)]
    items += [{"id": f"held{i}", "input": f"{gated}/{i}.png", "prompt": f"held #{i}"}
              for i in range(4)]  # fmt: skip
    rows = manifest(tmp_path / "m.jsonl", items)
    out = tmp_path / "out.jsonl"
    argv = [sys.executable, "-m", "nemovlm.cli", "batch", NANO_12B, "q", str(rows),
            "--out", str(out), "--base-url", nim.base_url, "--concurrency", "4"]  # fmt: skip
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # The five local rows finish; the four held ones stay in flight.
        while not out.exists() or len(out.read_text().splitlines()) < 5:
            assert proc.poll() is None, proc.communicate()
            threading.Event().wait(0.05)  # polling for a state, not timing anything
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130
        assert "run the same command again to resume" in err
        assert sorted(by_id(out)) == [f"now{i}" for i in range(5)]
        _Gate.gate.set()
        nim.clear()

        summary = job(nim, [rows], out)
    finally:
        _Gate.gate.set()
        server.shutdown()
        server.server_close()
    assert sorted(nim.prompts()) == [f"held #{i}" for i in range(4)]
    assert (summary.done, summary.skipped) == (4, 5)
    assert len(by_id(out)) == 9


def test_a_manifest_row_whose_prompt_is_not_text_is_refused_not_replaced(
    nim: Emulator, tmp_path: Path
) -> None:
    (tmp_path / "tile.png").write_bytes(png())
    m = manifest(tmp_path / "m.jsonl", [{"id": "n", "input": "tile.png", "prompt": 42}])
    summary = job(nim, [m], tmp_path / "out.jsonl")
    assert "'prompt' must be a string" in by_id(tmp_path / "out.jsonl")["n"]["error"]["message"]
    assert summary.failed == 1 and nim.bodies() == []


def test_run_takes_a_bare_json_schema_mapping(nim: Emulator, tmp_path: Path) -> None:
    schema = {
        "type": "object",
        "properties": {"caption": {"type": "string"}},
        "required": ["caption"],
    }
    out = tmp_path / "out.jsonl"
    job(nim, [captions(tmp_path, 1)], out, json_schema=schema)
    (row,) = rows_of(out)
    assert isinstance(row["parsed"]["caption"], str)
    assert nim.bodies()[-1]["response_format"]["json_schema"] == {
        "name": "record",
        "schema": schema,
    }


# --- NVIDIA's hosted catalog ---------------------------------------------------------------


def test_a_batch_on_the_hosted_catalog_uploads_photos_as_assets_and_deletes_every_one(
    catalog: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each photo is over the catalog's inline budget: inline, the catalog answers 413.
    monkeypatch.setenv("NVIDIA_API_KEY", KEY)
    (tmp_path / "a.jpg").write_bytes(PHOTO)
    (tmp_path / "b.jpg").write_bytes(PHOTO_B)
    out = tmp_path / "receipts.jsonl"
    argv = ["batch", NANO_12B, "Read the receipt.", str(tmp_path / "a.jpg"),
            str(tmp_path / "b.jpg"), "--out", str(out), "--base-url", catalog.base_url,
            "--hosted", "--assets-url", catalog.assets_url]  # fmt: skip
    assert main(argv) == 0
    assert [row["error"] for row in rows_of(out)] == [None, None]
    chats = catalog.chats()
    assert len(chats) == 2 and all(len(asset_ids(chat)) == 1 for chat in chats)
    calls = catalog.calls()
    assert calls.count(("POST", "create")) == calls.count(("DELETE", "delete")) == 2
    assert catalog.live() == []


def test_a_batch_on_the_catalog_without_hosted_sends_photos_inline_and_is_refused(
    catalog: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NVIDIA_API_KEY", KEY)
    (tmp_path / "a.jpg").write_bytes(PHOTO)
    out = tmp_path / "receipts.jsonl"
    summary = run(NANO_12B, "Read it.", [tmp_path / "a.jpg"], out, base_url=catalog.base_url,
                  progress=False)  # fmt: skip
    assert summary.failed == 1 and "413" in str(rows_of(out)[0]["error"])
    assert ("POST", "create") not in catalog.calls()


def test_the_hosted_settings_are_refused_for_a_fal_model() -> None:
    with pytest.raises(UnsupportedInputError, match="not NVIDIA's hosted catalog"):
        connect(DIFFUSION_VLM, hosted=True)


def test_ask_on_the_hosted_catalog_uploads_the_photo_and_deletes_it(
    catalog: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NVIDIA_API_KEY", KEY)
    (tmp_path / "a.jpg").write_bytes(PHOTO)
    argv = ["ask", NANO_12B, "Read the receipt.", "--image", str(tmp_path / "a.jpg"),
            "--base-url", catalog.base_url, "--hosted", "--hosted-media", "upload",
            "--assets-url", catalog.assets_url]  # fmt: skip
    assert main(argv) == 0
    assert len(asset_ids(catalog.last_chat())) == 1
    assert catalog.calls().count(("DELETE", "delete")) == 1 and catalog.live() == []


def test_an_asset_api_echoing_the_key_leaves_it_out_of_the_result_row(
    catalog: Catalog, tmp_path: Path
) -> None:
    key = "nvapi-" + "q9" * 30
    catalog.fail("create", 401)
    (tmp_path / "a.jpg").write_bytes(PHOTO)
    out = tmp_path / "receipts.jsonl"
    summary = run(NANO_12B, "Read it.", [tmp_path / "a.jpg"], out, progress=False,
                  base_url=catalog.base_url, api_key=key, hosted=True,
                  assets_url=catalog.assets_url)  # fmt: skip
    assert summary.failed == 1
    assert "was refused" in out.read_text() and key not in out.read_text()
