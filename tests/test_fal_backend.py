"""FalBackend against the fal emulator, through the real fal-client over TLS.

Grouped: credentials, the diffusion VLM (prompt, image, the step rule, ranges), the
Omni video model (system prompt, reasoning, ranges, video limits), media transport,
results (usage, metadata), streaming, the prompt protocol, progress and errors.
"""

from __future__ import annotations

import base64
import io
import os
import pickle
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from pydantic import SecretStr

from nemovlm.backends.fal import (
    FalBackend,
    QueueUpdate,
    report_queue_progress,
    resolve_fal_key,
)
from nemovlm.emulator.fal import FalEmulator, use_fal_emulator
from nemovlm.errors import (
    MissingCredentialsError,
    RequestError,
    RequestTimeoutError,
    UnsupportedInputError,
)
from nemovlm.messages import MediaPart, TextPart, ToolSpec, Turn
from nemovlm.options import RequestOptions
from nemovlm.profiles import StepSchedule, get_profile
from nemovlm.samples import make_image, make_mp4

KEY = "fal-test-key-0123456789"
DIFFUSION_VLM = "fal-ai/nemotron-diffusion-vlm"
OMNI_VIDEO = "nvidia/nemotron-3-nano-omni/video"


@pytest.fixture(scope="module")
def emulator() -> Iterator[FalEmulator]:
    with use_fal_emulator() as emu:
        yield emu


def backend(model: str, profile: dict[str, Any] | None = None, **kw: Any) -> FalBackend:
    return FalBackend(get_profile(model, profile), api_key=SecretStr(KEY), poll_interval=0.01, **kw)


@pytest.fixture(scope="module")
def diffusion(emulator: FalEmulator) -> FalBackend:
    return backend(DIFFUSION_VLM)


@pytest.fixture(scope="module")
def omni(emulator: FalEmulator) -> FalBackend:
    return backend(OMNI_VIDEO)


def sent(emulator: FalEmulator) -> dict[str, Any]:
    """The arguments of the last request the emulator received."""
    received = emulator.state.received()
    assert received, "the emulator received no request"
    last: dict[str, Any] = received[-1]
    return last


def image(**kw: Any) -> MediaPart:
    return MediaPart("image", data=make_image(**kw))


def video(**kw: Any) -> MediaPart:
    return MediaPart("video", data=make_mp4(**kw))


def user(*parts: str | MediaPart) -> Turn:
    return Turn("user", [TextPart(p) if isinstance(p, str) else p for p in parts])


def ask(text: str = "What is in the picture?") -> list[Turn]:
    return [user(text, image())]


def ask_video(text: str = "What happens?", **kw: Any) -> list[Turn]:
    return [user(text, video(**kw))]


def options(**kw: Any) -> RequestOptions:
    extra = kw.pop("extra", {})
    return RequestOptions(**kw, extra=extra)


# --- credentials -----------------------------------------------------------------------


def test_the_key_argument_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAL_KEY", "from-env")
    assert resolve_fal_key("given").get_secret_value() == "given"


def test_the_key_comes_from_fal_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAL_KEY", "from-env")
    assert resolve_fal_key(None).get_secret_value() == "from-env"


def test_the_key_comes_from_fal_key_id_and_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FAL_KEY", raising=False)
    monkeypatch.setenv("FAL_KEY_ID", "id")
    monkeypatch.setenv("FAL_KEY_SECRET", "secret")
    assert resolve_fal_key(None).get_secret_value() == "id:secret"


def test_a_missing_key_names_the_variables_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FAL_KEY", "FAL_KEY_ID", "FAL_KEY_SECRET"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(MissingCredentialsError, match="FAL_KEY.*FAL_KEY_ID.*FAL_KEY_SECRET"):
        resolve_fal_key(None)


async def test_a_pickled_backend_rebuilds_its_clients(omni: FalBackend) -> None:
    await omni.acomplete(ask_video(), options())  # clients exist now
    omni.complete(ask_video(), options())
    copy = pickle.loads(pickle.dumps(omni))
    reply = await copy.acomplete(ask_video("Again?"), options())
    assert reply.text.endswith("prompt: 'Again?'")


def test_the_key_is_not_in_the_backend_repr() -> None:
    assert KEY not in repr(backend(DIFFUSION_VLM))


def test_a_refused_key_is_a_request_error_that_does_not_show_the_key(
    emulator: FalEmulator,
) -> None:
    before = emulator.state.settings
    emulator.state.settings = replace(before, api_keys=frozenset({"another-key"}))
    try:
        with pytest.raises(RequestError) as info:
            backend(DIFFUSION_VLM).complete(ask(), options())
    finally:
        emulator.state.settings = before
    assert info.value.status_code == 401
    assert KEY not in str(info.value) and KEY not in repr(info.value.__cause__)


# --- the diffusion VLM ---------------------------------------------------------------------


def test_diffusion_sends_the_prompt_and_the_image(
    diffusion: FalBackend, emulator: FalEmulator
) -> None:
    reply = diffusion.complete(ask("What is it?"), options())
    assert sent(emulator)["prompt"] == "What is it?"
    assert sent(emulator)["image_url"].startswith("data:image/png;base64,")
    assert reply.text.startswith("[nemovlm emulator] fal-ai/nemotron-diffusion-vlm saw png 64x48")


def test_a_conversation_is_rendered_into_the_one_prompt(
    diffusion: FalBackend, emulator: FalEmulator
) -> None:
    turns = [
        Turn("system", [TextPart("Answer in French.")]),
        user("What is in the picture?", image()),
        Turn("assistant", [TextPart("A blue square.")]),
        user("And its colour?"),
    ]
    diffusion.complete(turns, options())
    assert sent(emulator)["prompt"] == (
        "Answer in French.\n\n"
        "User: What is in the picture?\n\n"
        "Assistant: A blue square.\n\n"
        "User: And its colour?"
    )


def test_diffusion_without_an_image_is_refused(diffusion: FalBackend) -> None:
    with pytest.raises(UnsupportedInputError, match="exactly one image"):
        diffusion.complete([user("Hello")], options())


def test_diffusion_with_two_images_is_refused(diffusion: FalBackend) -> None:
    with pytest.raises(UnsupportedInputError, match="at most 1 image"):
        diffusion.complete([user("Compare", image(), image(width=8, height=8))], options())


def test_an_image_without_a_question_is_refused(diffusion: FalBackend) -> None:
    with pytest.raises(UnsupportedInputError, match="needs a text prompt"):
        diffusion.complete([user(image())], options())


@pytest.mark.parametrize(
    ("settings", "name"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 8193}, "max_tokens"),
        ({"extra": {"num_inference_steps": 0}}, "num_inference_steps"),
        ({"extra": {"num_inference_steps": 1025}}, "num_inference_steps"),
        ({"extra": {"inference_steps": 2048}}, "inference_steps"),
        ({"extra": {"block_length": 7}}, "block_length"),
        ({"extra": {"block_length": 129}}, "block_length"),
        ({"extra": {"threshold": 1.5}}, "threshold"),
        ({"extra": {"threshold": -0.1}}, "threshold"),
    ],
    ids=lambda v: str(v),
)
def test_diffusion_settings_out_of_range_are_refused_before_sending(
    diffusion: FalBackend, emulator: FalEmulator, settings: dict[str, Any], name: str
) -> None:
    count = len(emulator.state.requests)
    with pytest.raises(UnsupportedInputError, match=f"{name} must be between"):
        diffusion.complete(ask(), options(**settings))
    assert len(emulator.state.requests) == count


def test_the_default_steps_come_from_the_profiles_step_schedule(
    emulator: FalEmulator,
) -> None:
    schedule = StepSchedule(default_steps=100, default_block_length=32)
    backend(DIFFUSION_VLM, {"step_schedule": schedule}).complete(ask(), options())
    assert sent(emulator)["num_inference_steps"] == 112  # 100 rounded up to 16 blocks


def test_without_a_profile_max_tokens_the_blocks_count_for_the_schedules_own(
    emulator: FalEmulator,
) -> None:
    schedule = StepSchedule(default_steps=100, default_max_tokens=1024)
    profile = {"step_schedule": schedule, "default_max_tokens": None}
    backend(DIFFUSION_VLM, profile).complete(ask(), options())
    assert sent(emulator)["num_inference_steps"] == 128  # 100 rounded up to 32 blocks


def test_explicit_steps_that_break_the_rule_are_refused_naming_both_numbers(
    diffusion: FalBackend,
) -> None:
    with pytest.raises(UnsupportedInputError) as info:
        diffusion.complete(ask(), options(extra={"num_inference_steps": 100}))
    message = str(info.value)
    assert "num_inference_steps=100" in message and "multiple of 16" in message
    assert "such as 112" in message


def test_explicit_steps_below_the_block_count_are_refused(diffusion: FalBackend) -> None:
    with pytest.raises(UnsupportedInputError, match="at least 128"):
        diffusion.complete(
            ask(), options(max_tokens=1024, extra={"block_length": 8, "num_inference_steps": 64})
        )


def test_explicit_steps_that_fit_are_sent(diffusion: FalBackend, emulator: FalEmulator) -> None:
    reply = diffusion.complete(ask(), options(max_tokens=64, extra={"num_inference_steps": 24}))
    assert sent(emulator)["num_inference_steps"] == 24
    assert reply.metadata["diffusion_usage"]["num_inference_steps"] == 24


def test_the_steps_alias_is_checked_and_sent_under_the_main_name(
    diffusion: FalBackend, emulator: FalEmulator
) -> None:
    diffusion.complete(ask(), options(extra={"inference_steps": 32}))
    assert sent(emulator)["num_inference_steps"] == 32 and "inference_steps" not in sent(emulator)
    with pytest.raises(UnsupportedInputError, match="inference_steps=40"):
        diffusion.complete(ask(), options(extra={"inference_steps": 40}))


@pytest.mark.parametrize(
    ("max_tokens", "block_length", "steps"), [(None, None, 256), (1000, 8, 375), (8192, 8, 1024)]
)
def test_omitted_steps_are_256_rounded_up_to_fit(
    diffusion: FalBackend,
    emulator: FalEmulator,
    max_tokens: int | None,
    block_length: int | None,
    steps: int,
) -> None:
    extra = {"block_length": block_length} if block_length else {}
    diffusion.complete(ask(), options(max_tokens=max_tokens, extra=extra))
    assert sent(emulator)["num_inference_steps"] == steps


@pytest.mark.parametrize(
    ("settings", "word"), [({"temperature": 0.5}, "temperature"), ({"seed": 7}, "seed")]
)
def test_settings_the_app_does_not_take_are_refused(
    diffusion: FalBackend, settings: dict[str, Any], word: str
) -> None:
    with pytest.raises(UnsupportedInputError, match=f"takes no {word}"):
        diffusion.complete(ask(), options(**settings))


def test_diffusion_finish_reason_is_length_when_the_budget_is_spent(
    diffusion: FalBackend,
) -> None:
    reply = diffusion.complete(ask(), options(max_tokens=4, extra={"num_inference_steps": 4}))
    assert reply.finish_reason == "length"


# --- the Omni video model -------------------------------------------------------------------


def test_omni_sends_system_text_as_system_prompt(omni: FalBackend, emulator: FalEmulator) -> None:
    omni.complete([Turn("system", [TextPart("Be brief.")]), *ask_video("Summarise")], options())
    assert sent(emulator)["system_prompt"] == "Be brief."
    assert sent(emulator)["prompt"] == "Summarise"
    assert sent(emulator)["video_url"].startswith("data:video/mp4;base64,")


def test_system_text_tops_the_prompt_when_the_profile_names_no_system_field(
    emulator: FalEmulator,
) -> None:
    omni = backend(OMNI_VIDEO, {"system_field": None})
    omni.complete([Turn("system", [TextPart("Be brief.")]), *ask_video("Summarise")], options())
    assert sent(emulator)["prompt"] == "Be brief.\n\nSummarise"
    assert "system_prompt" not in sent(emulator)


def test_sampling_settings_the_profile_does_not_list_are_refused_before_sending(
    emulator: FalEmulator,
) -> None:
    count = len(emulator.state.requests)
    omni = backend(OMNI_VIDEO, {"sampling_params": frozenset({"temperature"}), "param_ranges": {}})
    with pytest.raises(UnsupportedInputError, match="takes no top_p; remove top_p"):
        omni.complete(ask_video(), options(top_p=0.5))
    assert len(emulator.state.requests) == count


@pytest.mark.parametrize(("reasoning", "mode"), [(True, "think"), (False, "no_think")])
def test_reasoning_maps_to_reasoning_mode(
    omni: FalBackend, emulator: FalEmulator, reasoning: bool, mode: str
) -> None:
    omni.complete(ask_video(), options(reasoning=reasoning))
    assert sent(emulator)["reasoning_mode"] == mode


def test_reasoning_left_unset_sends_no_reasoning_mode(
    omni: FalBackend, emulator: FalEmulator
) -> None:
    omni.complete(ask_video(), options())
    assert "reasoning_mode" not in sent(emulator)


def test_think_mode_reasoning_is_split_from_the_answer(omni: FalBackend) -> None:
    reply = omni.complete(ask_video(), options(reasoning=True))
    assert reply.reasoning is not None and reply.reasoning.startswith(
        "[nemovlm emulator] reasoning"
    )
    assert reply.text.startswith("[nemovlm emulator] nvidia/nemotron-3-nano-omni/video saw")
    assert "think>" not in reply.text


def test_reasoning_with_only_a_closing_tag_is_split_too(
    omni: FalBackend, emulator: FalEmulator
) -> None:
    before = emulator.state.settings
    emulator.state.settings = replace(before, think_tags="close_only")
    try:
        reply = omni.complete(ask_video(), options(reasoning=True))
    finally:
        emulator.state.settings = before
    assert reply.reasoning and reply.reasoning.startswith("[nemovlm emulator] reasoning")
    assert reply.text.startswith("[nemovlm emulator] nvidia/nemotron-3-nano-omni/video saw")


def test_omni_sampling_settings_are_sent(omni: FalBackend, emulator: FalEmulator) -> None:
    omni.complete(ask_video(), options(temperature=0.2, top_p=0.5, max_tokens=300))
    assert {k: sent(emulator)[k] for k in ("temperature", "top_p", "max_tokens")} == {
        "temperature": 0.2,
        "top_p": 0.5,
        "max_tokens": 300,
    }


@pytest.mark.parametrize(
    "settings",
    [{"temperature": 2.5}, {"top_p": 1.5}, {"max_tokens": 20_001}, {"max_tokens": 0}],
    ids=lambda v: str(v),
)
def test_omni_settings_out_of_range_are_refused(omni: FalBackend, settings: dict[str, Any]) -> None:
    with pytest.raises(UnsupportedInputError, match="must be between"):
        omni.complete(ask_video(), options(**settings))


def test_omni_finish_reason_and_usage_are_mapped(omni: FalBackend) -> None:
    reply = omni.complete(ask_video(), options(max_tokens=5))
    assert reply.finish_reason == "length"
    assert reply.usage is not None and reply.usage.output_tokens == 5
    assert reply.usage.total_tokens == reply.usage.input_tokens + 5


@pytest.mark.parametrize(
    ("clip", "words"),
    [({"duration_s": 121.0}, "at most 120 s"), ({"width": 2560, "height": 1440}, "up to 1080p")],
    ids=["longer than 2 minutes", "above 1080p"],
)
def test_a_local_video_the_app_cannot_take_is_refused_before_upload(
    omni: FalBackend, emulator: FalEmulator, tmp_path: Path, clip: dict[str, Any], words: str
) -> None:
    path = tmp_path / "clip.mp4"
    path.write_bytes(make_mp4(**clip))
    files = len(emulator.state.files)
    with pytest.raises(UnsupportedInputError, match=words):
        omni.complete([user("What happens?", MediaPart("video", path=path))], options())
    assert len(emulator.state.files) == files


def test_omni_without_a_video_is_refused(omni: FalBackend) -> None:
    with pytest.raises(UnsupportedInputError, match="exactly one video"):
        omni.complete([user("Hello")], options())


def test_omni_with_two_videos_is_refused(omni: FalBackend) -> None:
    with pytest.raises(UnsupportedInputError, match="Send one video per call"):
        omni.complete([user("Compare", video(), video(duration_s=1.0))], options())


def test_an_image_sent_to_omni_is_refused(omni: FalBackend) -> None:
    with pytest.raises(UnsupportedInputError, match="accepts no image"):
        omni.complete([user("What is it?", image(), video())], options())


# --- media transport --------------------------------------------------------------------------


def test_an_http_url_passes_through(diffusion: FalBackend, emulator: FalEmulator) -> None:
    url = "https://example.invalid/dog.png"
    diffusion.complete([user("What is it?", MediaPart("image", url=url))], options())
    assert sent(emulator)["image_url"] == url


def test_a_data_url_is_sent_inline(diffusion: FalBackend, emulator: FalEmulator) -> None:
    url = "data:image/png;base64," + base64.b64encode(make_image()).decode()
    diffusion.complete([user("What is it?", MediaPart("image", url=url))], options())
    assert sent(emulator)["image_url"] == url


def test_bytes_over_one_megabyte_are_uploaded(diffusion: FalBackend, emulator: FalEmulator) -> None:
    noise = Image.frombytes("RGB", (640, 640), os.urandom(640 * 640 * 3))
    buf = io.BytesIO()
    noise.save(buf, "PNG")
    assert len(buf.getvalue()) > 1_000_000
    reply = diffusion.complete(
        [user("What is it?", MediaPart("image", data=buf.getvalue()))], options()
    )
    assert sent(emulator)["image_url"].startswith(f"{emulator.url}/cdn/files/")
    assert "saw png 640x640 (uploaded file image.png)" in reply.text


def test_a_large_video_is_uploaded_not_sent_as_base64(
    emulator: FalEmulator,
) -> None:
    small_limit = backend(OMNI_VIDEO, upload_threshold_bytes=1_000)
    reply = small_limit.complete(ask_video(duration_s=10.0, fps=30.0), options())
    assert not sent(emulator)["video_url"].startswith("data:")
    assert "(uploaded file video.mp4)" in reply.text


def test_a_local_video_is_uploaded_from_disk(
    omni: FalBackend, emulator: FalEmulator, tmp_path: Path
) -> None:
    path = tmp_path / "holiday.mp4"
    path.write_bytes(make_mp4(duration_s=3.0, width=640, height=360))
    reply = omni.complete([user("What happens?", MediaPart("video", path=path))], options())
    assert sent(emulator)["video_url"].endswith("/holiday.mp4")
    assert "saw mp4 640x360, 3.0 s (uploaded file holiday.mp4)" in reply.text


async def test_async_calls_upload_too(emulator: FalEmulator, tmp_path: Path) -> None:
    path = tmp_path / "async.mp4"
    path.write_bytes(make_mp4())
    reply = await backend(OMNI_VIDEO).acomplete(
        [user("What happens?", MediaPart("video", path=path))], options()
    )
    assert "(uploaded file async.mp4)" in reply.text


def stored(emulator: FalEmulator, url: str) -> Any:
    """The emulator's record of the file behind an uploaded file's URL."""
    file_id = url.split("/cdn/files/", 1)[1].split("/", 1)[0]
    return emulator.state.files[file_id]


def test_uploads_ask_fal_storage_to_expire_them_after_an_hour(
    emulator: FalEmulator, tmp_path: Path
) -> None:
    path = tmp_path / "clip.mp4"
    path.write_bytes(make_mp4())
    backend(OMNI_VIDEO).complete([user("What happens?", MediaPart("video", path=path))], options())
    assert stored(emulator, sent(emulator)["video_url"]).lifecycle == {
        "expiration_duration_seconds": 3600
    }


async def test_async_uploads_ask_for_the_expiry_set(emulator: FalEmulator) -> None:
    short = backend(OMNI_VIDEO, upload_threshold_bytes=1_000, upload_expires_in=600)
    await short.acomplete(ask_video(duration_s=10.0, fps=30.0), options())
    assert stored(emulator, sent(emulator)["video_url"]).lifecycle == {
        "expiration_duration_seconds": 600
    }


def test_an_unknown_upload_expiry_is_refused_with_the_choices() -> None:
    with pytest.raises(UnsupportedInputError, match="never, immediate, 1h, 1d"):
        backend(OMNI_VIDEO, upload_expires_in="2h")


# --- results ---------------------------------------------------------------------------------


def test_the_reply_carries_usage_request_id_timings_and_cost(
    diffusion: FalBackend, emulator: FalEmulator
) -> None:
    reply = diffusion.complete(ask(), options())
    request_id = list(emulator.state.requests)[-1]
    assert reply.response_id == request_id == reply.metadata["fal_request_id"]
    assert reply.model == DIFFUSION_VLM
    assert reply.usage is not None and reply.usage.total_tokens > 0
    assert set(reply.metadata["timings"]) == {"preprocess", "inference", "total"}
    assert reply.metadata["diffusion_usage"]["block_length"] == 32
    assert reply.metadata["estimated_cost_usd"] == pytest.approx(
        reply.usage.total_tokens / 1000 * 0.005
    )


def test_a_stop_sequence_is_applied_to_the_answer(diffusion: FalBackend) -> None:
    reply = diffusion.complete(ask(), options(stop=("diffusion-vlm",)))
    assert reply.text == "[nemovlm emulator] fal-ai/nemotron-" and reply.finish_reason == "stop"


def test_stream_yields_the_whole_answer_as_one_delta(omni: FalBackend) -> None:
    deltas = list(omni.stream(ask_video(), options(reasoning=True)))
    assert len(deltas) == 1
    (delta,) = deltas
    assert delta.text.startswith("[nemovlm emulator]") and delta.reasoning
    assert delta.usage is not None and delta.finish_reason == "stop"


async def test_astream_yields_the_whole_answer_as_one_delta(omni: FalBackend) -> None:
    deltas = [d async for d in omni.astream(ask_video(), options())]
    assert len(deltas) == 1 and deltas[0].text.startswith("[nemovlm emulator]")


# --- the prompt protocol ------------------------------------------------------------------------

WEATHER = ToolSpec(
    "get_weather",
    "Weather in a city",
    {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city", "days"],
    },
)


def test_tools_come_back_as_tool_calls(diffusion: FalBackend) -> None:
    reply = diffusion.complete(ask("Weather here?"), options(tools=(WEATHER,)))
    assert [(c.name, c.arguments["days"]) for c in reply.tool_calls] == [("get_weather", 1)]
    assert reply.text == "" and reply.finish_reason == "tool_calls"


def test_omni_gets_the_tool_protocol_in_its_system_prompt(
    omni: FalBackend, emulator: FalEmulator
) -> None:
    reply = omni.complete(ask_video(), options(tools=(WEATHER,), tool_choice="get_weather"))
    assert "<tools>" in sent(emulator)["system_prompt"]
    assert [c.name for c in reply.tool_calls] == ["get_weather"]


def test_a_tool_result_gets_a_text_answer(diffusion: FalBackend) -> None:
    turns = [
        *ask("Weather here?"),
        Turn("assistant", tool_calls=[_call()]),
        Turn("tool", [TextPart("Sunny, 24C")], tool_call_id="call_1", name="get_weather"),
    ]
    reply = diffusion.complete(turns, options(tools=(WEATHER,)))
    assert not reply.tool_calls and "Sunny, 24C" in reply.text


def _call() -> Any:
    from nemovlm.messages import ToolCall

    return ToolCall("call_1", "get_weather", {"city": "Paris", "days": 1})


def test_a_json_schema_comes_back_as_json_text(diffusion: FalBackend) -> None:
    schema = {
        "name": "Answer",
        "schema": {
            "type": "object",
            "properties": {"colour": {"type": "string"}, "count": {"type": "integer"}},
            "required": ["colour", "count"],
        },
    }
    reply = diffusion.complete(ask("Which colour?"), options(json_schema=schema))
    assert reply.text == '{"colour": "colour", "count": 1}'


# --- queue progress -------------------------------------------------------------------------------


def test_queue_progress_reaches_the_installed_callback(diffusion: FalBackend) -> None:
    updates: list[QueueUpdate] = []
    with report_queue_progress(updates.append):
        diffusion.complete(ask(), options())
    assert [u.status for u in updates] == ["queued", "in_progress", "completed"]
    assert updates[0].position == 0 and updates[0].request_id
    assert any("runner picked up" in line for line in updates[1].logs)
    assert updates[2].logs == ("[nemovlm emulator] done",)


async def test_an_async_progress_callback_is_awaited(omni: FalBackend) -> None:
    seen: list[str] = []

    async def record(update: QueueUpdate) -> None:
        seen.append(update.status)

    with report_queue_progress(record):
        await omni.acomplete(ask_video(), options())
    assert seen == ["queued", "in_progress", "completed"]


def test_queue_progress_is_logged(diffusion: FalBackend, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="nemovlm.backends.fal"):
        diffusion.complete(ask(), options())
    assert "queued at position 0" in caplog.text and KEY not in caplog.text


# --- errors -------------------------------------------------------------------------


def test_a_failed_queue_result_is_a_request_error_with_status_and_id(
    diffusion: FalBackend, emulator: FalEmulator
) -> None:
    emulator.inject_fault("failed")
    with pytest.raises(RequestError) as info:
        diffusion.complete(ask(), options())
    assert info.value.status_code == 500
    assert info.value.request_id == list(emulator.state.requests)[-1]
    assert "injected failure" in str(info.value)


def test_a_422_surfaces_the_field_and_message(diffusion: FalBackend, emulator: FalEmulator) -> None:
    emulator.inject_fault("422")
    with pytest.raises(RequestError) as info:
        diffusion.complete(ask(), options())
    assert info.value.status_code == 422
    assert "fal refused the input: prompt: [nemovlm emulator] injected validation error" in str(
        info.value
    )


def test_a_timeout_cancels_the_queued_request(emulator: FalEmulator) -> None:
    emulator.inject_fault("slow")
    with pytest.raises(RequestTimeoutError, match="timeout=1.2") as info:
        backend(DIFFUSION_VLM, timeout=1.2).complete(ask(), options())
    request_id = list(emulator.state.requests)[-1]
    assert request_id in str(info.value) and emulator.state.requests[request_id].cancelled


def test_a_timeout_of_one_second_or_less_is_refused() -> None:
    with pytest.raises(UnsupportedInputError, match="more than 1 s"):
        backend(DIFFUSION_VLM, timeout=0.5)
