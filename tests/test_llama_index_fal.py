"""NemoFal (LlamaIndex): the fal apps through the real fal-client, over TLS to the fal emulator.

Grouped as: settings; media in; reasoning, streaming and usage; diffusion parameters;
tools, agents and structured output (the core's prompt protocol); queue progress;
errors.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from llama_index.core.agent.workflow import AgentOutput, FunctionAgent
from llama_index.core.base.llms.types import (
    ChatMessage,
    ImageBlock,
    TextBlock,
    ThinkingBlock,
    ToolCallBlock,
    VideoBlock,
)
from llama_index.core.tools import FunctionTool
from pydantic import BaseModel, SecretStr

from llama_index_nemovlm import NemoFal
from nemovlm.backends.fal import QueueUpdate
from nemovlm.emulator.fal import FalEmulator, start_fal_emulator
from nemovlm.errors import MissingCredentialsError, RequestError, UnsupportedInputError
from nemovlm.samples import make_image, make_mp4

DIFFUSION_APP = "fal-ai/nemotron-diffusion-vlm"
OMNI_APP = "nvidia/nemotron-3-nano-omni/video"
PNG = make_image(64, 48, "png")
MP4 = make_mp4(duration_s=2.0, width=64, height=48, fps=10)
FAST = 0.01  # poll interval: the emulator is local


@pytest.fixture(scope="module")
def emulator() -> Iterator[FalEmulator]:
    emu = start_fal_emulator()
    undo = emu.aim_fal_client()
    try:
        yield emu
    finally:
        undo()
        emu.stop()


def fal(model: str = DIFFUSION_APP, **kwargs: Any) -> NemoFal:
    return NemoFal(model=model, api_key=SecretStr("test-key"), poll_interval=FAST, **kwargs)


def received(emulator: FalEmulator) -> dict[str, Any]:
    arguments = emulator.state.received()
    assert arguments, "the fal emulator received no request"
    return arguments[-1]


def image_question(text: str = "What is in the picture?") -> list[ChatMessage]:
    return [ChatMessage(role="user", blocks=[ImageBlock(image=PNG), TextBlock(text=text)])]


def video_question(text: str = "What happens?") -> list[ChatMessage]:
    return [ChatMessage(role="user", blocks=[VideoBlock(video=MP4), TextBlock(text=text)])]


# --- settings ------------------------------------------------------------------------


def test_api_key_comes_from_fal_key_as_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAL_KEY", "fal-secret")
    llm = NemoFal(model=DIFFUSION_APP)
    assert isinstance(llm.api_key, SecretStr)
    assert llm.api_key.get_secret_value() == "fal-secret"


def test_a_missing_key_names_the_variable_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FAL_KEY", "FAL_KEY_ID", "FAL_KEY_SECRET"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(MissingCredentialsError, match="FAL_KEY"):
        NemoFal(model=DIFFUSION_APP).chat(image_question())


def test_metadata_comes_from_the_fal_profile() -> None:
    meta = fal(OMNI_APP).metadata
    assert (meta.num_output, meta.model_name) == (20_000, OMNI_APP)
    assert meta.is_function_calling_model


# --- media in ------------------------------------------------------------------------


def test_diffusion_vlm_answers_about_its_one_image(emulator: FalEmulator) -> None:
    response = fal().chat(image_question("What is in the picture?"))
    assert response.message.content == (
        "[nemovlm emulator] fal-ai/nemotron-diffusion-vlm saw png 64x48 (data URL); "
        "prompt: 'What is in the picture?'"
    )


def test_image_block_url_passes_through_to_fal(emulator: FalEmulator) -> None:
    url = "https://example.com/cat.png"
    fal().chat([ChatMessage(role="user", blocks=[ImageBlock(url=url), TextBlock(text="x")])])
    assert received(emulator)["image_url"] == url


def test_image_block_path_is_sent_for_the_diffusion_vlm(
    emulator: FalEmulator, tmp_path: Path
) -> None:
    picture = tmp_path / "p.png"
    picture.write_bytes(make_image(20, 10, "png"))
    response = fal().chat(
        [ChatMessage(role="user", blocks=[ImageBlock(path=picture), TextBlock(text="x")])]
    )
    assert "saw png 20x10" in (response.message.content or "")


def test_video_block_reaches_omni_as_video_url(emulator: FalEmulator) -> None:
    response = fal(OMNI_APP).chat(video_question())
    assert received(emulator)["video_url"].startswith("data:video/mp4;base64,")
    assert "saw mp4 64x48, 2.0 s (data URL)" in (response.message.content or "")


def test_a_large_video_goes_up_to_fal_storage(emulator: FalEmulator) -> None:
    response = fal(OMNI_APP, upload_threshold_bytes=100).chat(video_question())
    assert "/cdn/" in received(emulator)["video_url"]
    assert "uploaded file" in (response.message.content or "")


def test_diffusion_vlm_without_an_image_is_refused_before_sending(
    emulator: FalEmulator,
) -> None:
    before = len(emulator.state.received())
    with pytest.raises(UnsupportedInputError, match="exactly one image"):
        fal().chat([ChatMessage(role="user", content="no picture")])
    assert len(emulator.state.received()) == before


# --- reasoning, streaming, usage -----------------------------------------------------


def test_omni_reasoning_comes_back_as_a_thinking_block(emulator: FalEmulator) -> None:
    message = fal(OMNI_APP, reasoning=True).chat(video_question()).message
    assert received(emulator)["reasoning_mode"] == "think"
    thinking = message.blocks[0]
    assert isinstance(thinking, ThinkingBlock)
    assert (thinking.content or "").startswith("[nemovlm emulator] reasoning:")
    assert "reasoning:" not in (message.content or "")
    assert "</think>" not in (message.content or "")


def test_stream_chat_yields_the_whole_answer_with_its_thinking_delta(
    emulator: FalEmulator,
) -> None:
    responses = list(fal(OMNI_APP, reasoning=True).stream_chat(video_question()))
    first, last = responses[0], responses[-1]
    assert first.delta == last.message.content
    assert first.additional_kwargs["thinking_delta"].startswith("[nemovlm emulator] reasoning:")
    assert last.additional_kwargs["completion_tokens"] > 0


async def test_astream_chat_matches_achat(emulator: FalEmulator) -> None:
    llm = fal()
    whole = await llm.achat(image_question("same"))
    streamed = [r async for r in await llm.astream_chat(image_question("same"))]
    assert streamed[-1].message.content == whole.message.content


def test_usage_and_fal_metadata_are_in_raw(emulator: FalEmulator) -> None:
    response = fal().chat(image_question())
    assert response.additional_kwargs["prompt_tokens"] > 0
    metadata = response.raw["metadata"]
    assert metadata["fal_request_id"] == response.raw["id"]
    assert metadata["estimated_cost_usd"] > 0


def test_complete_is_refused_for_an_app_that_needs_an_image(emulator: FalEmulator) -> None:
    with pytest.raises(UnsupportedInputError, match="image"):
        fal().complete("text alone")


# --- diffusion parameters -------------------------------------------------------------


def test_diffusion_fields_reach_fal(emulator: FalEmulator) -> None:
    fal(max_tokens=64, block_length=16, num_inference_steps=8, threshold=0.5).chat(image_question())
    arguments = received(emulator)
    assert (arguments["max_tokens"], arguments["block_length"]) == (64, 16)
    assert (arguments["num_inference_steps"], arguments["threshold"]) == (8, 0.5)


def test_a_step_count_off_the_block_schedule_is_refused(emulator: FalEmulator) -> None:
    with pytest.raises(UnsupportedInputError, match="num_inference_steps"):
        fal(max_tokens=64, block_length=16, num_inference_steps=6).chat(image_question())


def test_call_kwargs_override_the_fields(emulator: FalEmulator) -> None:
    fal(threshold=0.5).chat(image_question(), threshold=0.7)
    assert received(emulator)["threshold"] == 0.7


# --- tools, agents, structured output ---------------------------------------------------


def get_weather(city: str) -> str:
    """The weather for a city."""
    return f"Sunny in {city}"


class Song(BaseModel):
    title: str
    year: int


def test_tools_go_through_the_prompt_protocol(emulator: FalEmulator) -> None:
    response = fal().chat_with_tools(
        [FunctionTool.from_defaults(get_weather)], chat_history=image_question("Weather?")
    )
    assert "<tools>" in received(emulator)["prompt"]
    (call,) = [b for b in response.message.blocks if isinstance(b, ToolCallBlock)]
    assert call.tool_name == "get_weather" and set(call.tool_kwargs) == {"city"}


@pytest.mark.filterwarnings("ignore::DeprecationWarning:inspect")
async def test_function_agent_runs_a_tool_loop_on_fal(emulator: FalEmulator) -> None:
    agent = FunctionAgent(tools=[FunctionTool.from_defaults(get_weather)], llm=fal())
    result: AgentOutput = await agent.run(user_msg=image_question("Weather in Paris?")[0])
    assert [c.tool_name for c in result.tool_calls] == ["get_weather"]
    assert "<tool_result" in received(emulator)["prompt"]
    assert str(result).startswith("[nemovlm emulator] fal-ai/nemotron-diffusion-vlm saw png")


def test_as_structured_llm_fills_the_model_on_omni(emulator: FalEmulator) -> None:
    response = fal(OMNI_APP).as_structured_llm(Song).chat(video_question("Name a song"))
    assert isinstance(response.raw, Song)


# --- queue progress and errors -----------------------------------------------------------


def test_queue_updates_go_to_on_queue_update(emulator: FalEmulator) -> None:
    updates: list[QueueUpdate] = []
    fal(on_queue_update=updates.append).chat(image_question())
    assert [u.status for u in updates] == ["queued", "in_progress", "completed"]
    assert updates[1].logs


def test_a_failed_run_propagates_as_request_error(emulator: FalEmulator) -> None:
    emulator.inject_fault("failed")
    with pytest.raises(RequestError) as caught:
        fal().chat(image_question())
    assert caught.value.status_code == 500
