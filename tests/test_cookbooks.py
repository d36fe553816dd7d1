"""The cookbooks run offline, top to bottom, and show what they promise.

Each cookbook runs as its users run it (``python cookbooks/NN_x.py``) in a process of
its own without keys, so it talks to the emulator. Most of a cookbook's time is
importing LangChain and LlamaIndex, so one fresh interpreter imports them once and
forks a child per cookbook, which runs it as ``__main__`` with the script's ``argv``
and ``sys.path`` (as a notebook kernel with those libraries loaded would); they run
together. Cookbook 06 (with a NIM of the user's own) and 01 (in
``test_hosted_emulator_cli.py``) also run in an interpreter of their own. The last tests
pin the promise cookbook 07 makes for Ray: a model that has already made a call
pickles, and a separate process rebuilds its clients.
"""

from __future__ import annotations

import base64
import os
import pickle
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import HumanMessage

from langchain_nemovlm import ChatNemoFal, ChatNemoVLM
from llama_index_nemovlm import NemoVLM
from nemovlm.cli import running_emulators
from nemovlm.emulator import start_nim_emulator
from nemovlm.samples import make_image

COOKBOOKS = Path(__file__).resolve().parent.parent / "cookbooks"
SCRIPTS = sorted(p.name for p in COOKBOOKS.glob("[0-9][0-9]_*.py"))
KEYS = ("NVIDIA_API_KEY", "NVIDIA_BASE_URL", "FAL_KEY", "FAL_KEY_ID", "FAL_KEY_SECRET")
# Hosts a fal emulator of this process may have set, and the cookbooks' own options.
OTHERS = ("FAL_RUN_HOST", "FAL_QUEUE_RUN_HOST", "NEMOVLM_SAMPLE_VIDEO", "NEMOVLM_VIDEO_URL")
EMULATOR_NOTE = "answers come from the local nemovlm EMULATOR"
TIMEOUT = 300


def _offline_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in KEYS + OTHERS}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


# Run with the cookbooks folder and an output folder, then the scripts' names. Prints
# "<script> <exit code>" as each child ends. Forking is safe here: the imports start no
# thread (checked), and each child gets the interpreter as it was after them.
FORK_SERVER = """
import os, runpy, signal, sys, threading
import langchain_core.language_models, langchain_core.messages, langchain_core.tools
import llama_index.core, llama_index.core.llms
import langchain_nemovlm, llama_index_nemovlm, llama_index.llms.nemovlm
import nemovlm.emulator, nemovlm.emulator.fal, nemovlm.samples
import openai, fal_client, aiohttp, httpx, uvicorn, trustme, PIL.Image
import langchain.agents, llama_index.core.agent.workflow
assert threading.active_count() == 1, threading.enumerate()
folder, out, timeout, names = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
children = {}
for name in names:
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        signal.alarm(timeout)  # a hung cookbook ends with SIGALRM, its exit code -14
        for fd, suffix in ((1, ".out"), (2, ".err")):
            file = os.open(os.path.join(out, name + suffix), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(file, fd)
            os.close(file)
        sys.argv[:] = [os.path.join(folder, name)]
        sys.path[0] = folder
        runpy.run_path(sys.argv[0], run_name="__main__")
        sys.exit(0)  # then exits as the interpreter would: atexit handlers run
    children[pid] = name
while children:
    pid, status = os.wait()
    print(children.pop(pid), os.waitstatus_to_exitcode(status), flush=True)
"""


class _Runs:
    """Every cookbook started at once on first use; ``output`` waits for one."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.codes: dict[str, int] = {}
        with open(out / "runner.err", "w") as errors:  # why the runner itself failed
            self.server = subprocess.Popen(
                [sys.executable, "-c", FORK_SERVER, str(COOKBOOKS), str(out), str(TIMEOUT),
                 *SCRIPTS],
                cwd=COOKBOOKS.parent,
                env=_offline_env(),
                stdout=subprocess.PIPE,
                stderr=errors,
                text=True,
                start_new_session=True,  # its children too can be stopped as one group
            )  # fmt: skip

    def output(self, name: str) -> str:
        assert self.server.stdout is not None
        while name not in self.codes:
            line = self.server.stdout.readline()
            if not line:
                errors = (self.out / "runner.err").read_text()[-4000:]
                pytest.fail(
                    f"the cookbook runner ended ({self.server.wait()}) before {name}:\n{errors}"
                )
            script, code = line.split()
            self.codes[script] = int(code)
        stderr = (self.out / f"{name}.err").read_text()
        assert self.codes[name] == 0, f"{name} exited with {self.codes[name]}:\n{stderr[-4000:]}"
        return (self.out / f"{name}.out").read_text()

    def stop(self) -> None:
        if self.server.poll() is None:  # a test failed before every cookbook ended
            os.killpg(self.server.pid, signal.SIGKILL)
        self.server.communicate()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Runs]:
    started = _Runs(tmp_path_factory.mktemp("cookbooks"))
    yield started
    started.stop()


# --- every cookbook -------------------------------------------------------------------


def test_there_are_eight_cookbooks() -> None:
    assert [s[:2] for s in SCRIPTS] == ["01", "02", "03", "04", "05", "06", "07", "08"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_cookbook_runs_offline_and_says_its_answers_come_from_the_emulator(
    runs: _Runs, script: str
) -> None:
    output = runs.output(script)
    assert EMULATOR_NOTE in output.splitlines()[0]


@pytest.mark.parametrize("script", SCRIPTS)
def test_cookbook_is_a_jupytext_percent_script_with_markdown_sections(script: str) -> None:
    text = (COOKBOOKS / script).read_text()
    assert "format_name: percent" in text
    assert text.count("# %% [markdown]") >= 3
    assert "setup = connect(" in text


# --- what each one shows --------------------------------------------------------------


def test_quickstart_asks_all_five_models_through_both_frameworks(runs: _Runs) -> None:
    output = runs.output("01_quickstart.py")
    for model in (
        "nvidia/llama-3.1-nemotron-nano-vl-8b-v1",
        "nvidia/nemotron-nano-12b-v2-vl",
        "google/diffusiongemma-26b-a4b-it",
        "fal-ai/nemotron-diffusion-vlm",
        "nvidia/nemotron-3-nano-omni/video",
    ):
        answers = re.findall(
            rf"^(LangChain |LlamaIndex): \[nemovlm emulator\] {model} ", output, re.M
        )
        assert sorted(answers) == ["LangChain ", "LlamaIndex"], model


def test_quickstart_uploads_the_llama_index_video_path_to_fal(runs: _Runs) -> None:
    assert "(uploaded file clip.mp4)" in runs.output("01_quickstart.py")


def test_reasoning_cookbook_streams_the_trace_before_the_answer(runs: _Runs) -> None:
    output = runs.output("02_reasoning.py")
    thinking = output.index("[thinking] Reasoning (emulated)")
    answer = output.index("[answer] [nemovlm emulator] nvidia/nemotron-nano-12b-v2-vl")
    assert thinking < answer


def test_reasoning_cookbook_turns_diffusion_gemma_reasoning_off(runs: _Runs) -> None:
    output = runs.output("02_reasoning.py")
    assert "default: reasoning -> Reasoning (emulated)" in output
    assert "{'reasoning': False}: reasoning -> None" in output


def test_reasoning_cookbook_shows_models_without_a_switch_refusing(runs: _Runs) -> None:
    refusals = re.findall(
        r"^refused: (\S+) cannot switch reasoning", runs.output("02_reasoning.py"), re.M
    )
    assert refusals == ["nvidia/llama-3.1-nemotron-nano-vl-8b-v1", "fal-ai/nemotron-diffusion-vlm"]


def test_video_cookbook_samples_by_rate_and_by_count(runs: _Runs) -> None:
    output = runs.output("03_video.py")
    assert "16 frames sampled (fps 2)" in output
    assert "16 frames sampled (num_frames 16)" in output


def test_video_cookbook_sends_a_url_the_emulator_fetches(runs: _Runs) -> None:
    output = runs.output("03_video.py")
    line = next(x for x in output.splitlines() if x.startswith("LlamaIndex, by URL:"))
    assert "mp4 8.0s 640x360" in line and "(num_frames 8)" in line


def test_video_cookbook_refuses_a_too_long_video_before_uploading(runs: _Runs) -> None:
    assert re.search(r"refused before upload: .* lasts 150\.00 s", runs.output("03_video.py"))


def test_tool_agent_cookbook_prints_the_tool_result_and_the_model_reads_the_chart(
    runs: _Runs,
) -> None:
    output = runs.output("04_tool_agent.py")
    results = output.count("tool result   Bar chart of quarterly sales for EMEA. (+1 image)")
    answers = re.findall(r"^model answers .*image 1: png 640x400", output, re.M)
    agents = 3 if "Skipped create_agent" not in output else 2
    assert results == agents
    assert len(answers) == agents


def test_image_rag_answers_name_the_retrieved_image_file(runs: _Runs) -> None:
    output = runs.output("05_image_rag.py")
    assert "retrieved headcount_by_team.png" in output
    assert re.search(r"^LangChain answer: .*headcount_by_team\.png", output, re.M)
    assert "retrieved cloud_costs_by_service.png" in output
    assert re.search(r"^LlamaIndex answer: .*cloud_costs_by_service\.png", output, re.M)


def test_structured_extraction_returns_pydantic_objects_both_ways(runs: _Runs) -> None:
    output = runs.output("06_structured_extraction.py")
    assert "nvidia/nemotron-nano-12b-v2-vl (json_schema):\n  ChartData(title=" in output
    assert "nvidia/llama-3.1-nemotron-nano-vl-8b-v1 (prompted):\n  ChartData(title=" in output
    assert "LlamaIndex fal-ai/nemotron-diffusion-vlm:\n  ChartData(title=" in output


def test_batch_cookbook_captions_every_image_and_totals_the_cost(runs: _Runs) -> None:
    output = runs.output("07_batch_captioning.py")
    assert "200 captions in" in output
    assert re.search(r"24 captions in .*\n.*cost: \$\d+\.\d{4} \(estimated\)", output)
    assert ("Ray: 200 captions in" in output) or ("Skipped the Ray section" in output)


def test_hosted_catalog_cookbook_uploads_the_12mp_photo_and_leaves_no_asset(runs: _Runs) -> None:
    output = runs.output("08_hosted_catalog.py")
    assert "The NIM emulator plays NVIDIA's hosted catalog" in output
    assert "is_hosted: True" in output
    assert re.search(r"LangChain : .*image 1: jpeg 2048x1536 \(NVCF asset\)", output)
    assert re.search(r"LlamaIndex: .*\(NVCF asset\)", output)
    assert output.count("live assets after the call: []") == 3


def test_hosted_catalog_cookbook_fits_the_photo_inline_and_uploads_the_video(runs: _Runs) -> None:
    output = runs.output("08_hosted_catalog.py")
    fit = next(line for line in output.splitlines() if line.startswith("fit"))
    assert "(NVCF asset)" not in fit and "image 1: jpeg" in fit
    assert re.search(r"video     : .*mp4 8\.0s 640x360.*\(NVCF asset\)", output)
    assert "messages: system, user" in output


def test_a_cookbook_uses_a_real_nim_url_when_one_is_given() -> None:
    with start_nim_emulator() as nim:  # stands in for a NIM of the user's own
        result = subprocess.run(
            [sys.executable, str(COOKBOOKS / "06_structured_extraction.py")],
            env=_offline_env(NVIDIA_BASE_URL=nim.url + "/v1"),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
    assert result.returncode == 0, result.stderr[-4000:]
    first, second = result.stdout.splitlines()[:2]
    assert first == f"NIM: {nim.url}/v1"
    assert second.startswith("fal: emulator")


# --- models survive pickling into a separate process (cookbook 07's Ray section) ------


def _call_in_fresh_process(payload: bytes) -> tuple[int, str]:
    """Runs in a spawned interpreter: unpickle a model and call the emulator."""
    model = pickle.loads(payload)
    if isinstance(model, NemoVLM):
        return os.getpid(), model.complete("from a fresh process").text
    png = base64.b64encode(make_image()).decode()
    message = HumanMessage(
        content=[
            {"type": "text", "text": "from a fresh process"},
            {"type": "image", "base64": png, "mime_type": "image/png"},
        ]
    )
    return os.getpid(), str(model.invoke([message]).content)


@pytest.fixture(scope="module")
def fresh_process_answers() -> dict[str, tuple[int, str] | BaseException]:
    """Each model makes a call here, is pickled, and is called again from a spawned
    process (which inherits the environment that aims fal-client at the emulator).
    A model that fails keeps its exception, so the others are still tried."""
    image = {"type": "image", "base64": base64.b64encode(make_image()).decode(),
             "mime_type": "image/png"}  # fmt: skip
    results: dict[str, tuple[int, str] | BaseException] = {}
    with running_emulators() as (nim_url, _fal):
        models: dict[str, Any] = {
            "ChatNemoVLM": ChatNemoVLM(model="nvidia/nemotron-nano-12b-v2-vl", base_url=nim_url),
            "ChatNemoFal": ChatNemoFal(model="fal-ai/nemotron-diffusion-vlm"),
            "NemoVLM": NemoVLM(model="nvidia/nemotron-nano-12b-v2-vl", base_url=nim_url),
        }
        models["ChatNemoVLM"].invoke("warm up")
        models["ChatNemoFal"].invoke(
            [HumanMessage(content=[{"type": "text", "text": "hi"}, image])]
        )
        models["NemoVLM"].complete("warm up")
        # One spawned worker serves all three: a fresh interpreter costs seconds of imports.
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
            futures = {}
            for name, model in models.items():
                try:
                    futures[name] = pool.submit(_call_in_fresh_process, pickle.dumps(model))
                except Exception as exc:  # kept for the test of that model
                    results[name] = exc
            for name, future in futures.items():
                try:
                    results[name] = future.result(timeout=TIMEOUT)
                except Exception as exc:
                    results[name] = exc
    return results


@pytest.mark.parametrize("name", ["ChatNemoVLM", "ChatNemoFal", "NemoVLM"])
def test_a_used_model_unpickled_in_another_process_calls_the_emulator(
    fresh_process_answers: dict[str, tuple[int, str] | BaseException], name: str
) -> None:
    result = fresh_process_answers[name]
    if isinstance(result, BaseException):
        raise result
    pid, answer = result
    assert pid != os.getpid()
    assert answer.startswith("[nemovlm emulator]")
    assert "from a fresh process" in answer
