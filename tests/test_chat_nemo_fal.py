"""ChatNemoFal, the LangChain model, against the fal emulator through the real fal-client.

Grouped: calls (invoke, ainvoke, stream, astream, batch), what comes back (usage,
metadata, reasoning), settings, keys, tools and structured output, queue progress
in callbacks, and the profile.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import pytest
from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from pydantic import BaseModel

from langchain_nemovlm import ChatNemoFal
from nemovlm.backends.fal import QueueUpdate
from nemovlm.emulator.fal import FalEmulator, use_fal_emulator
from nemovlm.errors import MissingCredentialsError, RequestError, UnsupportedInputError
from nemovlm.samples import make_image, make_mp4

DIFFUSION = "fal-ai/nemotron-diffusion-vlm"
OMNI = "nvidia/nemotron-3-nano-omni/video"
KEY = "fal-secret-key-42"
IMAGE = {
    "type": "image",
    "base64": base64.b64encode(make_image()).decode(),
    "mime_type": "image/png",
}
VIDEO = {
    "type": "video_url",
    "video_url": {"url": "data:video/mp4;base64," + base64.b64encode(make_mp4()).decode()},
}


@pytest.fixture(scope="module")
def emulator() -> Iterator[FalEmulator]:
    with use_fal_emulator() as emu:
        yield emu


def chat(model: str, **kw: Any) -> ChatNemoFal:
    return ChatNemoFal(model=model, api_key=KEY, poll_interval=0.01, **kw)


@pytest.fixture(scope="module")
def diffusion(emulator: FalEmulator) -> ChatNemoFal:
    return chat(DIFFUSION)


@pytest.fixture(scope="module")
def omni(emulator: FalEmulator) -> ChatNemoFal:
    return chat(OMNI)


def about_image(text: str = "What is in the picture?") -> list[HumanMessage]:
    return [HumanMessage(content=[{"type": "text", "text": text}, IMAGE])]


def about_video(text: str = "What happens?") -> list[HumanMessage]:
    return [HumanMessage(content=[{"type": "text", "text": text}, VIDEO])]


def sent(emulator: FalEmulator) -> dict[str, Any]:
    last: dict[str, Any] = emulator.state.received()[-1]
    return last


# --- calls --------------------------------------------------------------------------------


def test_invoke_returns_the_answer_with_usage_and_metadata(
    diffusion: ChatNemoFal, emulator: FalEmulator
) -> None:
    msg = diffusion.invoke(about_image())
    assert isinstance(msg, AIMessage)
    assert msg.content == (
        "[nemovlm emulator] fal-ai/nemotron-diffusion-vlm saw png 64x48 (data URL); "
        "prompt: 'What is in the picture?'"
    )
    assert msg.usage_metadata is not None and msg.usage_metadata["total_tokens"] > 0
    meta = msg.response_metadata
    assert meta["model_name"] == DIFFUSION
    assert meta["fal_request_id"] == list(emulator.state.requests)[-1]
    assert set(meta["timings"]) == {"preprocess", "inference", "total"}
    assert meta["diffusion_usage"]["num_inference_steps"] == 256
    assert meta["estimated_cost_usd"] == pytest.approx(
        msg.usage_metadata["total_tokens"] / 1000 * 0.005
    )


async def test_ainvoke_returns_the_answer(omni: ChatNemoFal) -> None:
    msg = await omni.ainvoke(about_video())
    assert str(msg.content).startswith("[nemovlm emulator] nvidia/nemotron-3-nano-omni/video saw")


def test_stream_yields_one_chunk_with_reasoning_and_usage(emulator: FalEmulator) -> None:
    chunks = list(chat(OMNI, reasoning=True).stream(about_video()))
    with_text = [c for c in chunks if c.content]
    assert len(with_text) == 1
    (answer,) = with_text
    assert answer.additional_kwargs["reasoning_content"].startswith("[nemovlm emulator] reasoning")
    assert answer.usage_metadata is not None
    whole = sum(chunks[1:], chunks[0])
    assert whole.response_metadata["finish_reason"] == "stop"


async def test_astream_yields_one_chunk_with_the_answer(omni: ChatNemoFal) -> None:
    chunks = [c async for c in omni.astream(about_video())]
    assert [bool(c.content) for c in chunks].count(True) == 1


def test_batch_answers_each_input(diffusion: ChatNemoFal) -> None:
    replies = diffusion.batch([about_image(f"question {i}") for i in range(3)])
    assert [str(r.content).rsplit("prompt: ", 1)[1] for r in replies] == [
        "'question 0'",
        "'question 1'",
        "'question 2'",
    ]


def test_a_system_message_reaches_omni_as_system_prompt(
    omni: ChatNemoFal, emulator: FalEmulator
) -> None:
    omni.invoke([SystemMessage("Be brief."), *about_video()])
    assert sent(emulator)["system_prompt"] == "Be brief." and sent(emulator)["prompt"] == (
        "What happens?"
    )


def test_reasoning_true_puts_the_trace_in_reasoning_content(emulator: FalEmulator) -> None:
    msg = chat(OMNI, reasoning=True).invoke(about_video())
    assert sent(emulator)["reasoning_mode"] == "think"
    assert msg.additional_kwargs["reasoning_content"].startswith("[nemovlm emulator] reasoning")
    assert "</think>" not in str(msg.content)


def test_a_second_image_is_a_clear_error(diffusion: ChatNemoFal) -> None:
    two = [HumanMessage(content=[{"type": "text", "text": "Compare"}, IMAGE, IMAGE])]
    with pytest.raises(UnsupportedInputError, match="Send one image per call"):
        diffusion.invoke(two)


def test_a_fal_failure_is_a_request_error(diffusion: ChatNemoFal, emulator: FalEmulator) -> None:
    emulator.inject_fault("failed")
    with pytest.raises(RequestError) as info:
        diffusion.invoke(about_image())
    assert info.value.status_code == 500


# --- settings -----------------------------------------------------------------------------


def test_diffusion_fields_are_sent(emulator: FalEmulator) -> None:
    llm = chat(DIFFUSION, max_tokens=64, num_inference_steps=16, block_length=8, threshold=0.5)
    llm.invoke(about_image())
    got = {k: sent(emulator)[k] for k in ("max_tokens", "num_inference_steps", "block_length")}
    assert got == {"max_tokens": 64, "num_inference_steps": 16, "block_length": 8}
    assert sent(emulator)["threshold"] == 0.5


def test_the_inference_steps_alias_is_accepted_on_the_model(emulator: FalEmulator) -> None:
    chat(DIFFUSION, inference_steps=512).invoke(about_image())
    assert sent(emulator)["num_inference_steps"] == 512


def test_call_kwargs_override_the_fields(emulator: FalEmulator) -> None:
    chat(DIFFUSION, num_inference_steps=512).invoke(about_image(), num_inference_steps=32)
    assert sent(emulator)["num_inference_steps"] == 32


def test_the_profiles_step_alias_per_call_overrides_the_field(emulator: FalEmulator) -> None:
    chat(DIFFUSION, num_inference_steps=512).invoke(about_image(), inference_steps=32)
    assert sent(emulator)["num_inference_steps"] == 32


def test_a_step_count_that_breaks_the_rule_is_a_clear_error(emulator: FalEmulator) -> None:
    with pytest.raises(UnsupportedInputError, match="multiple of 16"):
        chat(DIFFUSION, num_inference_steps=100).invoke(about_image())


def test_omni_sampling_fields_are_sent(emulator: FalEmulator) -> None:
    chat(OMNI, temperature=0.1, top_p=0.9, max_tokens=200).invoke(about_video())
    assert (sent(emulator)["temperature"], sent(emulator)["top_p"]) == (0.1, 0.9)
    assert sent(emulator)["max_tokens"] == 200


def test_a_temperature_out_of_range_is_a_clear_error(emulator: FalEmulator) -> None:
    with pytest.raises(UnsupportedInputError, match="temperature must be between 0 and 2"):
        chat(OMNI, temperature=3.0).invoke(about_video())


def test_model_kwargs_are_sent_as_they_are(emulator: FalEmulator) -> None:
    chat(OMNI, model_kwargs={"custom_flag": True}).invoke(about_video())
    assert sent(emulator)["custom_flag"] is True


# --- keys ---------------------------------------------------------------------------------


def test_the_key_is_read_from_fal_key(
    emulator: FalEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAL_KEY", "env-key")
    llm = ChatNemoFal(model=DIFFUSION, poll_interval=0.01)
    assert llm.api_key is not None and llm.api_key.get_secret_value() == "env-key"
    assert llm.invoke(about_image()).content


def test_the_key_can_come_from_fal_key_id_and_secret(
    emulator: FalEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FAL_KEY", raising=False)
    monkeypatch.setenv("FAL_KEY_ID", "key-id")
    monkeypatch.setenv("FAL_KEY_SECRET", "key-secret")
    llm = ChatNemoFal(model=DIFFUSION, poll_interval=0.01)
    assert llm.invoke(about_image()).content


def test_a_missing_key_says_which_variable_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FAL_KEY", "FAL_KEY_ID", "FAL_KEY_SECRET"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(MissingCredentialsError, match="set FAL_KEY"):
        ChatNemoFal(model=DIFFUSION).invoke(about_image())


def test_the_key_never_shows_in_repr_or_str(diffusion: ChatNemoFal) -> None:
    diffusion.invoke(about_image())  # the backend (and its fal client) exist now
    assert KEY not in repr(diffusion) and KEY not in str(diffusion)
    assert KEY not in repr(diffusion.backend)


# --- tools and structured output ---------------------------------------------------------------


def get_weather(city: str, days: int) -> str:
    """Weather forecast for a city."""
    return f"Sunny in {city} for {days} day(s)"


def test_bind_tools_returns_tool_calls(diffusion: ChatNemoFal) -> None:
    msg = diffusion.bind_tools([get_weather]).invoke(about_image("Weather in Paris?"))
    assert [(c["name"], c["args"]["days"]) for c in msg.tool_calls] == [("get_weather", 1)]
    assert msg.content == ""


def test_a_tool_loop_ends_in_a_text_answer_that_used_the_tool_result(
    omni: ChatNemoFal,
) -> None:
    llm = omni.bind_tools([get_weather])
    history: list[Any] = [*about_video("Weather in Paris?")]
    first = llm.invoke(history)
    call = first.tool_calls[0]
    history += [first, ToolMessage(get_weather(**call["args"]), tool_call_id=call["id"])]
    final = llm.invoke(history)
    assert not final.tool_calls and "Sunny in" in str(final.content)


def test_a_reply_that_is_not_a_tool_call_comes_back_as_text(omni: ChatNemoFal) -> None:
    msg = omni.bind_tools([get_weather], tool_choice="none").invoke(about_video())
    assert not msg.tool_calls and str(msg.content).startswith("[nemovlm emulator]")


def test_a_tool_reply_that_does_not_parse_is_an_invalid_tool_call_not_a_crash(
    diffusion: ChatNemoFal, emulator: FalEmulator
) -> None:
    emulator.inject_fault("bad_json")
    msg = diffusion.bind_tools([get_weather]).invoke(about_image("Weather in Paris?"))
    assert not msg.tool_calls and len(msg.invalid_tool_calls) == 1
    assert "not valid JSON" in (msg.invalid_tool_calls[0]["error"] or "")


class Scene(BaseModel):
    subject: str
    people: int


def test_with_structured_output_returns_the_schema(omni: ChatNemoFal) -> None:
    scene = omni.with_structured_output(Scene).invoke(about_video("Describe the scene"))
    assert scene == Scene(subject="scene", people=1)


def test_structured_output_through_a_forced_tool_call(diffusion: ChatNemoFal) -> None:
    llm = diffusion.with_structured_output(Scene, method="function_calling")
    assert llm.invoke(about_image("Describe it")) == Scene(subject="it", people=1)


# --- queue progress in callbacks ------------------------------------------------------------------


class Recorder(BaseCallbackHandler):
    def __init__(self) -> None:
        self.texts: list[str] = []
        self.updates: list[QueueUpdate] = []

    def on_text(self, text: str, *, run_id: UUID, **kwargs: Any) -> None:
        self.texts.append(text)
        self.updates.append(kwargs["fal_queue_update"])


def test_queue_progress_reaches_langchain_callbacks(diffusion: ChatNemoFal) -> None:
    recorder = Recorder()
    diffusion.invoke(about_image(), config={"callbacks": [recorder]})
    assert [u.status for u in recorder.updates] == ["queued", "in_progress", "completed"]
    assert "queued at position 0" in recorder.texts[0]
    assert "log: [nemovlm emulator] runner picked up" in recorder.texts[1]


def test_queue_progress_is_logged_when_streaming(
    omni: ChatNemoFal, caplog: pytest.LogCaptureFixture
) -> None:
    # LangChain's stream() hands the model no run manager: the logger is the channel.
    with caplog.at_level("INFO", logger="nemovlm.backends.fal"):
        list(omni.stream(about_video()))
    assert "queued at position 0" in caplog.text and "completed" in caplog.text
    assert KEY not in caplog.text


class AsyncRecorder(AsyncCallbackHandler):
    def __init__(self) -> None:
        self.statuses: list[str] = []

    async def on_text(self, text: str, *, run_id: UUID, **kwargs: Any) -> None:
        self.statuses.append(kwargs["fal_queue_update"].status)


async def test_queue_progress_reaches_async_callbacks(omni: ChatNemoFal) -> None:
    recorder = AsyncRecorder()
    await omni.ainvoke(about_video(), config={"callbacks": [recorder]})
    assert recorder.statuses == ["queued", "in_progress", "completed"]


# --- the profile --------------------------------------------------------------------------


def test_the_profile_says_what_each_model_takes() -> None:
    diffusion, omni = chat(DIFFUSION).profile, chat(OMNI).profile
    assert diffusion is not None and omni is not None
    assert diffusion["image_inputs"] and not diffusion["video_inputs"]
    assert omni["video_inputs"] and not omni["image_inputs"]
    assert omni["reasoning_output"] and not diffusion["reasoning_output"]


def test_an_unknown_fal_app_gets_a_fal_profile_with_prompted_tools() -> None:
    profile = chat("someone/new-vlm").nemo_profile
    assert (profile.backend, profile.tools) == ("fal", "prompt")


def test_a_timeout_of_one_second_or_less_is_a_clear_error() -> None:
    with pytest.raises(UnsupportedInputError, match="more than 1 s"):
        chat(DIFFUSION, timeout=1).invoke(about_image())


def test_each_event_loop_gets_its_own_client_and_closed_loops_are_let_go(
    diffusion: ChatNemoFal,
) -> None:
    import asyncio

    for _ in range(3):
        answer = asyncio.run(diffusion.ainvoke(about_image("loop")))
        assert "loop" in answer.content
    # Only the last (now closed) loop's client may remain until the next lookup.
    assert len(diffusion.backend._aclients) <= 1  # type: ignore[attr-defined]
